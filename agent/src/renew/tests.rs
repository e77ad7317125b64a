use super::*;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, SanType,
};

/// A CA and a device pair it issued, written where an enrolled agent keeps them.
struct Fixture {
    _dir: tempfile::TempDir,
    paths: Paths,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "test CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(p, key))
}

/// A device certificate for `key`'s CSR naming `cn`.
fn issue(issuer: &Issuer<'static, KeyPair>, csr_pem: &str, san: &str) -> String {
    let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
    csr.params.subject_alt_names = vec![SanType::DnsName(san.try_into().unwrap())];
    csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    csr.signed_by(issuer).unwrap().pem()
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, issuer) = ca();
    let paths = Paths {
        ca: dir.path().join("ca.crt"),
        cert: dir.path().join("device.crt"),
        key: dir.path().join("device.key"),
    };
    std::fs::write(&paths.ca, ca_pem).unwrap();
    let (key, csr) = crate::enroll::key_and_csr(&id()).unwrap();
    std::fs::write(&paths.key, key.serialize_pem()).unwrap();
    std::fs::write(&paths.cert, issue(&issuer, &csr, "pi-01")).unwrap();
    Fixture {
        _dir: dir,
        paths,
        issuer,
    }
}

fn id() -> DeviceId {
    DeviceId::parse("pi-01").unwrap()
}

fn renewal(f: &Fixture) -> Renewal {
    let cfg = crate::config::MqttSection {
        renew_check_s: 1,
        renew_answer_timeout_s: 60,
        renew_backoff_max_s: 1,
        ..Default::default()
    };
    Renewal::with(f.paths.clone(), id(), &cfg)
}

/// Far after any certificate's renewal point (rcgen's default notAfter is in 4096).
const LATER: i64 = 1 << 50;

/// The CSR the renewal published.
fn asked(r: &mut Renewal) -> String {
    let payload = r.tick(true, LATER).expect("a renewal request");
    codec::decode::<RenewRequest>(Kind::Csr, &payload)
        .unwrap()
        .csr_pem
}

fn answer(a: &RenewAnswer) -> Vec<u8> {
    codec::encode(Kind::Cert, a).unwrap()
}

fn files(p: &Paths) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(&p.cert).unwrap(),
        std::fs::read(&p.key).unwrap(),
    )
}

#[test]
fn nothing_is_asked_before_the_renewal_point_or_while_offline() {
    let f = fixture();
    let mut r = renewal(&f);
    assert_eq!(r.tick(false, LATER), None);
    assert_eq!(r.tick(true, 0), None);
}

#[test]
fn an_issued_certificate_is_checked_installed_and_confirmed() {
    let f = fixture();
    let before = files(&f.paths);
    let mut r = renewal(&f);
    let csr = asked(&mut r);
    let cert = issue(&f.issuer, &csr, "pi-01");
    assert_eq!(
        r.on_answer(&answer(&RenewAnswer::Issued {
            cert_pem: cert.clone()
        })),
        Step::Reload
    );
    assert_eq!(std::fs::read_to_string(&f.paths.cert).unwrap(), cert);
    assert!(tls::mqtt_client(&f.paths.ca, &f.paths.cert, &f.paths.key).is_ok());
    // The previous pair waits until a connection with the new one succeeds.
    let old = (
        std::fs::read(Paths::old(&f.paths.cert)).unwrap(),
        std::fs::read(Paths::old(&f.paths.key)).unwrap(),
    );
    assert_eq!(old, before);
    r.on_connected();
    assert!(!Paths::old(&f.paths.cert).exists());
    assert!(!Paths::old(&f.paths.key).exists());
    assert!(tls::mqtt_client(&f.paths.ca, &f.paths.cert, &f.paths.key).is_ok());
}

#[test]
fn a_new_pair_that_cannot_connect_gives_way_to_the_old_one() {
    let f = fixture();
    let before = files(&f.paths);
    let mut r = renewal(&f);
    let csr = asked(&mut r);
    let cert = issue(&f.issuer, &csr, "pi-01");
    assert_eq!(
        r.on_answer(&answer(&RenewAnswer::Issued { cert_pem: cert })),
        Step::Reload
    );
    for _ in 1..CONFIRM_ATTEMPTS {
        assert_eq!(r.on_connect_failed(), Step::Nothing);
    }
    assert_eq!(r.on_connect_failed(), Step::Reload);
    assert_eq!(files(&f.paths), before);
    assert!(!Paths::old(&f.paths.cert).exists());
    // Failures outside a renewal change nothing.
    assert_eq!(r.on_connect_failed(), Step::Nothing);
}

#[test]
fn certificates_for_another_key_name_or_ca_and_refusals_are_not_installed() {
    let f = fixture();
    let before = files(&f.paths);
    let mut r = renewal(&f);
    let csr = asked(&mut r);
    let (other_ca_pem, other_ca) = ca();
    let _ = other_ca_pem;
    let (_, foreign_csr) = crate::enroll::key_and_csr(&id()).unwrap();
    for cert in [
        issue(&f.issuer, &foreign_csr, "pi-01"),
        issue(&f.issuer, &csr, "pi-02"),
        issue(&other_ca, &csr, "pi-01"),
        "not a certificate".to_owned(),
    ] {
        assert_eq!(
            r.on_answer(&answer(&RenewAnswer::Issued { cert_pem: cert })),
            Step::Nothing
        );
        assert_eq!(files(&f.paths), before);
    }
    // Still waiting for its own answer; a refusal ends the attempt.
    let refused = RenewAnswer::Refused {
        reason: "too soon".into(),
        retry_after_s: 30,
    };
    assert_eq!(r.on_answer(&answer(&refused)), Step::Nothing);
    assert_eq!(r.tick(true, LATER), None, "waits for the retry delay");
    assert_eq!(files(&f.paths), before);
    assert_eq!(r.on_answer(b"\x01garbage"), Step::Nothing);
}

#[test]
fn an_interrupted_install_is_settled_at_start() {
    // The crash came between the key and the certificate: the pair does not match.
    let f = fixture();
    let before = files(&f.paths);
    for p in [&f.paths.cert, &f.paths.key] {
        std::fs::copy(p, Paths::old(p)).unwrap();
    }
    let (key, _) = crate::enroll::key_and_csr(&id()).unwrap();
    std::fs::write(&f.paths.key, key.serialize_pem()).unwrap();
    let mut r = renewal(&f);
    assert_eq!(files(&f.paths), before);
    assert!(!Paths::old(&f.paths.key).exists());
    assert!(r.tick(true, LATER).is_some(), "renews again");

    // A complete new pair is kept and waits for its first connection.
    let f = fixture();
    for p in [&f.paths.cert, &f.paths.key] {
        std::fs::copy(p, Paths::old(p)).unwrap();
    }
    let mut r = renewal(&f);
    assert!(Paths::old(&f.paths.cert).exists());
    r.on_connected();
    assert!(!Paths::old(&f.paths.cert).exists());
}

#[test]
fn an_unanswered_request_is_given_up_and_a_late_answer_ignored() {
    let f = fixture();
    let before = files(&f.paths);
    let cfg = crate::config::MqttSection {
        renew_check_s: 1,
        renew_answer_timeout_s: 0,
        renew_backoff_max_s: 1,
        ..Default::default()
    };
    let mut r = Renewal::with(f.paths.clone(), id(), &cfg);
    let csr = asked(&mut r);
    std::thread::sleep(Duration::from_millis(5));
    // Given up: nothing asked again at once (the backoff runs), the late answer ignored.
    assert_eq!(r.tick(true, LATER), None);
    assert_eq!(r.tick(true, LATER), None);
    let cert = issue(&f.issuer, &csr, "pi-01");
    assert_eq!(
        r.on_answer(&answer(&RenewAnswer::Issued { cert_pem: cert })),
        Step::Nothing
    );
    assert_eq!(files(&f.paths), before);
    // After the backoff it asks again, with a new key.
    std::thread::sleep(Duration::from_millis(1_100));
    let again = r.tick(true, LATER).expect("asked again");
    let again = codec::decode::<RenewRequest>(Kind::Csr, &again).unwrap();
    assert_ne!(again.csr_pem, csr);
}
