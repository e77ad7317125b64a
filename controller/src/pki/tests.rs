use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine as _;
use proptest::prelude::*;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::{CertificateRevocationListDer, UnixTime};
use x509_parser::revocation_list::CertificateRevocationList;

use pifleet_shared::DeviceId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, SignatureAlgorithm,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, ServerName};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;

use super::ca::{parse_serial, serial_hex};
use super::*;

const RSA_2048_CSR: &str = include_str!("../../tests/fixtures/pki/rsa2048.csr.pem");

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).unwrap()
}

fn dn(cns: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pifleet test");
    for (i, cn) in cns.iter().enumerate() {
        // rcgen keeps one value per DnType; a custom type with the CN OID adds a second CN.
        let ty = if i == 0 {
            DnType::CommonName
        } else {
            DnType::CustomDnType(vec![2, 5, 4, 3])
        };
        dn.push(ty, *cn);
    }
    dn
}

fn csr_with(alg: &'static SignatureAlgorithm, params: CertificateParams) -> String {
    let key = KeyPair::generate_for(alg).unwrap();
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn csr(alg: &'static SignatureAlgorithm, cns: &[&str]) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cns);
    csr_with(alg, params)
}

fn p256(cn: &str) -> String {
    csr(&rcgen::PKCS_ECDSA_P256_SHA256, &[cn])
}

fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn csr_der(pem: &str) -> Vec<u8> {
    CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The same CSR with the last byte of its signature flipped.
fn flip_signature(pem: &str) -> String {
    let mut der = csr_der(pem);
    *der.last_mut().unwrap() ^= 0x01;
    to_pem("CERTIFICATE REQUEST", &der)
}

fn cert_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Ca) -> Arc<RootCertStore> {
    let mut store = RootCertStore::empty();
    store.add(cert_der(&ca.cert_pem)).unwrap();
    Arc::new(store)
}

fn client_verifier(ca: &Ca, crl_pem: Option<&str>) -> Arc<dyn ClientCertVerifier> {
    let crls = crl_pem
        .map(|p| CertificateRevocationListDer::from_pem_slice(p.as_bytes()).unwrap())
        .into_iter();
    WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
        .with_crls(crls)
        .build()
        .unwrap()
}

fn verify_client(verifier: &dyn ClientCertVerifier, pem: &str) -> Result<(), rustls::Error> {
    verifier
        .verify_client_cert(&cert_der(pem), &[], UnixTime::now())
        .map(|_| ())
}

fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[test]
fn ca_has_the_documented_shape() {
    let ca = Ca::generate("home").unwrap();
    let der = cert_der(&ca.cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let cn: Vec<_> = cert.subject().iter_common_name().collect();
    assert_eq!(cn.len(), 1);
    assert_eq!(cn[0].as_str().unwrap(), "pifleet CA home");
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert!(!ku.digital_signature());
    let spki = cert.public_key();
    assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .unwrap()
        .as_oid()
        .unwrap();
    assert_eq!(curve, OID_EC_P256);
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime, 3650 * 86_400);
    assert!(cert.raw_serial().len() <= 17);
}

#[test]
fn good_csrs_are_signed_and_chain_to_the_ca() {
    let ca = Ca::generate("test").unwrap();
    let verifier = client_verifier(&ca, None);
    let cases: &[(&str, &'static SignatureAlgorithm)] = &[
        ("p256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("ed25519", &rcgen::PKCS_ED25519),
    ];
    for (name, alg) in cases {
        let csr_pem = csr(alg, &["pi-01"]);
        assert_eq!(csr_proposed_id(&csr_pem).unwrap(), id("pi-01"), "{name}");
        let before = now_unix();
        let issued = ca.sign_device_csr(&csr_pem, &id("pi-01"), 90).unwrap();
        verify_client(verifier.as_ref(), &issued.cert_pem)
            .unwrap_or_else(|e| panic!("{name}: {e}"));

        let der = cert_der(&issued.cert_pem);
        let (found_id, serial) = device_identity(&der).unwrap();
        assert_eq!(found_id, id("pi-01"), "{name}");
        assert_eq!(serial, issued.serial_hex, "{name}");
        assert!(
            serial.len() <= 32 && serial == serial.to_lowercase(),
            "{name}"
        );

        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        // The device's own public key, unchanged.
        let csr_der = csr_der(&csr_pem);
        let (_, req) = X509CertificationRequest::from_der(&csr_der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            req.certification_request_info.subject_pki.raw,
            "{name}"
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && !eku.any, "{name}");
        assert!(eku.other.is_empty() && !eku.code_signing, "{name}");
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign(), "{name}");
        assert!(!cert.is_ca(), "{name}");
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        assert_eq!(na, issued.not_after_unix, "{name}");
        assert!((before + 90 * 86_400..=now_unix() + 90 * 86_400).contains(&na));
        assert!((before - 300..=now_unix() - 300).contains(&nb), "{name}");
    }
}

#[test]
fn serials_are_random_and_positive() {
    let ca = Ca::generate("test").unwrap();
    let csr_pem = p256("pi-01");
    let serials: BTreeSet<String> = (0..8)
        .map(|_| ca.sign_device_csr(&csr_pem, &id("pi-01"), 1).unwrap())
        .map(|issued| {
            let der = cert_der(&issued.cert_pem);
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            // DER INTEGER content: at most 16 magnitude bytes plus a 0x00 sign byte.
            let raw = cert.raw_serial();
            assert!(raw.len() <= 17 && raw[0] & 0x80 == 0);
            issued.serial_hex
        })
        .collect();
    assert_eq!(serials.len(), 8);
}

#[test]
fn csr_refusals() {
    let ca = Ca::generate("test").unwrap();
    let good = p256("pi-01");
    let mut trailing = csr_der(&good);
    trailing.push(0);
    let garbage_block = to_pem("CERTIFICATE REQUEST", b"not a certification request");
    type Check = fn(&CsrError) -> bool;
    let cases: Vec<(&str, String, Check)> = vec![
        ("flipped p256 signature", flip_signature(&good), |e| {
            matches!(e, CsrError::BadSignature(_))
        }),
        (
            "flipped ed25519 signature",
            flip_signature(&csr(&rcgen::PKCS_ED25519, &["pi-01"])),
            |e| matches!(e, CsrError::BadSignature(_)),
        ),
        (
            "rsa 2048",
            RSA_2048_CSR.to_owned(),
            |e| matches!(e, CsrError::WeakKey(w) if w == "RSA 2048-bit"),
        ),
        (
            "p384",
            csr(&rcgen::PKCS_ECDSA_P384_SHA384, &["pi-01"]),
            |e| matches!(e, CsrError::WeakKey(w) if w == "ECDSA P-384"),
        ),
        ("no cn", csr(&rcgen::PKCS_ECDSA_P256_SHA256, &[]), |e| {
            matches!(e, CsrError::NoCommonName)
        }),
        (
            "two cns",
            csr(&rcgen::PKCS_ECDSA_P256_SHA256, &["pi-01", "pi-02"]),
            |e| matches!(e, CsrError::MultipleCommonNames),
        ),
        (
            "cn with space and capitals",
            p256("Bad Name"),
            |e| matches!(e, CsrError::InvalidDeviceId { cn, .. } if cn == "Bad Name"),
        ),
        ("cn with hyphens at the ends", p256("-x-"), |e| {
            matches!(e, CsrError::InvalidDeviceId { .. })
        }),
        ("cn with a slash", p256("a/b"), |e| {
            matches!(e, CsrError::InvalidDeviceId { .. })
        }),
        ("garbage", "hello, world".to_owned(), |e| {
            matches!(e, CsrError::Pem(_))
        }),
        ("garbage in a pem block", garbage_block, |e| {
            matches!(e, CsrError::Malformed(_))
        }),
        (
            "trailing data",
            to_pem("CERTIFICATE REQUEST", &trailing),
            |e| matches!(e, CsrError::TrailingData),
        ),
        ("empty", String::new(), |e| matches!(e, CsrError::Empty)),
        ("whitespace", " \n\t".to_owned(), |e| {
            matches!(e, CsrError::Empty)
        }),
        (
            "oversize",
            "A".repeat(MAX_CSR_BYTES + 1),
            |e| matches!(e, CsrError::TooLarge { size } if *size == MAX_CSR_BYTES + 1),
        ),
        ("two csrs", format!("{good}{good}"), |e| {
            matches!(e, CsrError::MultipleCsrs)
        }),
    ];
    for (name, input, check) in cases {
        let proposed = csr_proposed_id(&input).expect_err(name);
        assert!(
            check(&proposed),
            "{name}: csr_proposed_id gave {proposed:?}"
        );
        let signed = ca
            .sign_device_csr(&input, &id("pi-01"), 30)
            .expect_err(name);
        assert!(check(&signed), "{name}: sign_device_csr gave {signed:?}");
        assert!(signed.is_refusal(), "{name}");
        assert!(!signed.to_string().is_empty(), "{name}");
    }
}

#[test]
fn cn_must_match_the_enrolling_id() {
    let ca = Ca::generate("test").unwrap();
    let csr_pem = p256("pi-02");
    assert_eq!(csr_proposed_id(&csr_pem).unwrap(), id("pi-02"));
    let err = ca.sign_device_csr(&csr_pem, &id("pi-01"), 30).unwrap_err();
    assert!(
        matches!(&err, CsrError::IdMismatch { cn, expected } if cn == "pi-02" && expected == "pi-01"),
        "{err:?}"
    );
    assert!(err.is_refusal());
}

#[test]
fn requested_extensions_are_ignored() {
    let ca = Ca::generate("test").unwrap();
    let mut params = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
    params.distinguished_name = dn(&["pi-01"]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let csr_pem = csr_with(&rcgen::PKCS_ECDSA_P256_SHA256, params);
    let issued = ca.sign_device_csr(&csr_pem, &id("pi-01"), 30).unwrap();
    let der = cert_der(&issued.cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(!cert.is_ca());
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(!ku.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    let cns: Vec<_> = cert.subject().iter_common_name().collect();
    assert_eq!(cns.len(), 1, "only our own subject, not the CSR's O=");
    assert!(cert.subject().iter_organization().next().is_none());
    assert_eq!(device_identity(&der).unwrap().0, id("pi-01"));
}

#[test]
fn validity_out_of_range_is_an_internal_error() {
    let ca = Ca::generate("test").unwrap();
    let err = ca
        .sign_device_csr(&p256("pi-01"), &id("pi-01"), u32::MAX)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            CsrError::Internal(e) if matches!(
                e.downcast_ref::<PkiError>(),
                Some(PkiError::ValidityOutOfRange { days: u32::MAX })
            )
        ),
        "{err:?}"
    );
    assert!(!err.is_refusal());
}

#[test]
fn device_identity_refusals() {
    let ca = Ca::generate("test").unwrap();
    let issuer = ca.issuer().unwrap();
    let device_key = KeyPair::generate().unwrap();
    let cert = |cns: &[&str], sans: &[&str]| {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = dn(cns);
        params
            .signed_by(&device_key, &issuer)
            .unwrap()
            .der()
            .to_vec()
    };
    type Check = fn(&PkiError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        ("no cn", cert(&[], &["pi-01"]), |e| {
            matches!(e, PkiError::NoCommonName)
        }),
        ("two cns", cert(&["pi-01", "pi-02"], &["pi-01"]), |e| {
            matches!(e, PkiError::MultipleCommonNames)
        }),
        ("bad id", cert(&["Pi 01"], &["pi-01"]), |e| {
            matches!(e, PkiError::InvalidDeviceId(_))
        }),
        ("no san", cert(&["pi-01"], &[]), |e| {
            matches!(e, PkiError::SanMismatch { .. })
        }),
        ("other san", cert(&["pi-01"], &["pi-02"]), |e| {
            matches!(e, PkiError::SanMismatch { .. })
        }),
        ("two sans", cert(&["pi-01"], &["pi-01", "pi-02"]), |e| {
            matches!(e, PkiError::SanMismatch { .. })
        }),
        ("ip san", cert(&["pi-01"], &["10.0.0.1"]), |e| {
            matches!(e, PkiError::SanMismatch { .. })
        }),
        ("garbage", b"garbage".to_vec(), |e| {
            matches!(e, PkiError::X509(_))
        }),
    ];
    for (name, der, check) in cases {
        let err = device_identity(&der).expect_err(name);
        assert!(check(&err), "{name}: {err:?}");
    }
    let ok = cert(&["pi-01"], &["pi-01"]);
    assert_eq!(device_identity(&ok).unwrap().0, id("pi-01"));
}

#[test]
fn crl_lists_the_revoked_serials_and_the_verifier_enforces_it() {
    let ca = Ca::generate("test").unwrap();
    let issue = |name: &str| ca.sign_device_csr(&p256(name), &id(name), 30).unwrap();
    let (a, b, c) = (issue("pi-a01"), issue("pi-b02"), issue("pi-c03"));
    // Case and leading zeros in the stored serial do not matter.
    let revoked = [
        Revoked {
            serial_hex: a.serial_hex.clone(),
            revoked_at_unix: now_unix() - 60,
        },
        Revoked {
            serial_hex: format!("00{}", b.serial_hex.to_uppercase()),
            revoked_at_unix: now_unix(),
        },
    ];
    let crl_pem = ca.crl(&revoked, 7, 3).unwrap();

    let der = CertificateRevocationListDer::from_pem_slice(crl_pem.as_bytes()).unwrap();
    let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
    let listed: BTreeSet<String> = crl
        .iter_revoked_certificates()
        .map(|r| serial_hex(r.raw_serial()))
        .collect();
    let expected: BTreeSet<String> = [a.serial_hex.clone(), b.serial_hex.clone()].into();
    assert_eq!(listed, expected);
    assert_eq!(crl.crl_number().unwrap().to_string(), "7");
    let next = crl.next_update().unwrap().timestamp();
    assert!((now_unix() + 3 * 86_400 - 5..=now_unix() + 3 * 86_400).contains(&next));
    let ca_der = cert_der(&ca.cert_pem);
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    crl.verify_signature(ca_cert.public_key()).unwrap();

    let verifier = client_verifier(&ca, Some(&crl_pem));
    for (name, cert) in [("a", &a), ("b", &b)] {
        let err = verify_client(verifier.as_ref(), &cert.cert_pem).unwrap_err();
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::Revoked),
            "{name}"
        );
    }
    verify_client(verifier.as_ref(), &c.cert_pem).unwrap();

    // An empty CRL is valid and revokes nothing.
    let empty = ca.crl(&[], 8, 1).unwrap();
    verify_client(client_verifier(&ca, Some(&empty)).as_ref(), &a.cert_pem).unwrap();
}

#[test]
fn crl_refuses_bad_serials() {
    let ca = Ca::generate("test").unwrap();
    for bad in ["", "xyz", &"ab".repeat(21)] {
        let revoked = [Revoked {
            serial_hex: bad.to_owned(),
            revoked_at_unix: 0,
        }];
        let err = ca.crl(&revoked, 1, 1).unwrap_err();
        assert!(
            matches!(err, PkiError::InvalidSerial { .. }),
            "{bad:?}: {err:?}"
        );
    }
}

#[test]
fn server_cert_verifies_for_its_names() {
    let ca = Ca::generate("test").unwrap();
    let hostnames = vec!["fleet.example.com".to_owned(), "10.0.0.5".to_owned()];
    let (cert_pem, key_pem) = ca.issue_server(&hostnames).unwrap();
    let key = KeyPair::from_pem(&key_pem).unwrap();
    let der = cert_der(&cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(key.subject_public_key_info(), cert.public_key().raw);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    assert!(!cert.is_ca());

    let verifier = WebPkiServerVerifier::builder_with_provider(roots(&ca), provider())
        .build()
        .unwrap();
    let verify = |name: &str| {
        let server_name = ServerName::try_from(name.to_owned()).unwrap();
        verifier.verify_server_cert(&der, &[], &server_name, &[], UnixTime::now())
    };
    for name in [
        "localhost",
        "127.0.0.1",
        "::1",
        "fleet.example.com",
        "10.0.0.5",
    ] {
        verify(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in ["other.example.com", "10.0.0.6"] {
        assert!(verify(name).is_err(), "{name}");
    }

    // With no extra names it still serves loopback; duplicates are harmless.
    let (only_local, _) = ca.issue_server(&["localhost".to_owned()]).unwrap();
    let der = cert_der(&only_local);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let sans = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(sans.value.general_names.len(), 3);

    let err = ca.issue_server(&["bad host".to_owned()]).unwrap_err();
    assert!(matches!(err, PkiError::InvalidHostname { .. }), "{err:?}");
}

#[test]
fn fingerprint_is_sha256_of_the_der() {
    let ca = Ca::generate("test").unwrap();
    let fp = ca.fingerprint().unwrap();
    assert_eq!(fp, ca.fingerprint().unwrap());
    assert_eq!(fp, fingerprint_pem(&ca.cert_pem).unwrap());
    assert_eq!(fp, hex::encode(Sha256::digest(cert_der(&ca.cert_pem))));
    assert_eq!(fp.len(), 64);
    assert!(
        fp.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    );
    assert_ne!(fp, Ca::generate("test").unwrap().fingerprint().unwrap());
    assert!(matches!(fingerprint_pem("nope"), Err(PkiError::Pem(_))));
}

#[test]
fn from_pem_round_trips_and_checks_the_pair() {
    let ca = Ca::generate("test").unwrap();
    let loaded = Ca::from_pem(&ca.cert_pem, ca.key_pem()).unwrap();
    assert_eq!(loaded.cert_pem, ca.cert_pem);
    assert_eq!(loaded.key_pem(), ca.key_pem());
    assert_eq!(loaded.fingerprint().unwrap(), ca.fingerprint().unwrap());
    // Certificates from the loaded CA chain to the original.
    let issued = loaded
        .sign_device_csr(&p256("pi-01"), &id("pi-01"), 30)
        .unwrap();
    verify_client(client_verifier(&ca, None).as_ref(), &issued.cert_pem).unwrap();

    let other = Ca::generate("other").unwrap();
    let err = Ca::from_pem(&ca.cert_pem, other.key_pem()).unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch), "{err:?}");
    let (server_cert, server_key) = ca.issue_server(&[]).unwrap();
    let err = Ca::from_pem(&server_cert, &server_key).unwrap_err();
    assert!(
        matches!(err, PkiError::Chain(ChainError::NotCa { index: 1 })),
        "{err:?}"
    );
    let err = Ca::from_pem("garbage", ca.key_pem()).unwrap_err();
    assert!(matches!(err, PkiError::Chain(ChainError::Empty)), "{err:?}");
    let err = Ca::from_pem(&ca.cert_pem, "garbage").unwrap_err();
    assert!(matches!(err, PkiError::Rcgen(_)), "{err:?}");
}

#[test]
fn debug_redacts_the_key() {
    let ca = Ca::generate("test").unwrap();
    let shown = format!("{ca:?} {ca:#?}");
    assert!(!shown.contains(ca.key_pem()));
    assert!(!shown.contains("PRIVATE KEY"));
    let key_body = ca.key_pem().lines().nth(1).unwrap();
    assert!(!shown.contains(key_body));
    assert!(shown.contains("redacted"));
}

#[test]
fn serial_text_is_canonical() {
    assert_eq!(serial_hex(&[0x00, 0x80, 0x01]), "8001");
    assert_eq!(serial_hex(&[0x00]), "00");
    assert_eq!(parse_serial("0x1").ok(), None);
    assert_eq!(parse_serial("1").unwrap(), vec![1]);
    assert_eq!(parse_serial("0080AB").unwrap(), vec![0x80, 0xab]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes in a CSR PEM block are refused, never a panic.
    #[test]
    fn arbitrary_csr_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let pem = to_pem("CERTIFICATE REQUEST", &bytes);
        prop_assert!(csr_proposed_id(&pem).is_err());
    }

    /// A valid CSR with one byte changed is either refused or still names its device.
    #[test]
    fn mutated_csrs_never_panic(index in any::<prop::sample::Index>(), xor in 1u8..) {
        let mut der = csr_der(&p256("pi-01"));
        let i = index.index(der.len());
        der[i] ^= xor;
        let pem = to_pem("CERTIFICATE REQUEST", &der);
        if let Ok(found) = csr_proposed_id(&pem) {
            prop_assert_eq!(found, id("pi-01"));
        }
    }

    /// Any text is refused or accepted without panicking.
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        let _ = csr_proposed_id(&text);
    }
}
