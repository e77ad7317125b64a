//! An intermediate CA from an offline root: loaded with its chain, pinned by the root, and
//! everything it signs verifies the way the listeners and agents verify it.

use std::sync::Arc;

use pifleet_shared::DeviceId;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use super::*;

struct Made {
    cert_pem: String,
    key: KeyPair,
    params: CertificateParams,
}

fn ca_params(cn: &str, path_len: u8, usages: Vec<KeyUsagePurpose>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = usages;
    p.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    p.not_after = OffsetDateTime::now_utc() + Duration::days(30);
    p
}

fn full_usage() -> Vec<KeyUsagePurpose> {
    vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]
}

fn root(path_len: u8) -> Made {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = ca_params("offline root", path_len, full_usage());
    let cert_pem = params.self_signed(&key).unwrap().pem();
    Made {
        cert_pem,
        key,
        params,
    }
}

fn signed_by(parent: &Made, params: CertificateParams) -> Made {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issuer = Issuer::from_params(&parent.params, &parent.key);
    let cert_pem = params.signed_by(&key, &issuer).unwrap().pem();
    Made {
        cert_pem,
        key,
        params,
    }
}

fn intermediate(root: &Made) -> Made {
    signed_by(root, ca_params("site intermediate", 0, full_usage()))
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).unwrap()
}

fn csr(cn: &str) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.serialize_request(&key).unwrap().pem().unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trust anchors the way the listeners take them: every certificate of the CA file.
fn anchors(pem: &str) -> Arc<RootCertStore> {
    let mut store = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        store.add(c.unwrap()).unwrap();
    }
    Arc::new(store)
}

fn check_err(chain: &str, key: &KeyPair) -> PkiError {
    Ca::from_pem(chain, &key.serialize_pem()).unwrap_err()
}

#[test]
fn an_intermediate_with_its_root_signs_what_the_root_pins() {
    let root = root(1);
    let int = intermediate(&root);
    let chain = format!("{}{}", int.cert_pem, root.cert_pem);
    let ca = Ca::from_pem(&chain, &int.key.serialize_pem()).unwrap();

    // Devices pin the root, not the intermediate.
    let root_fp = hex::encode(Sha256::digest(der(&root.cert_pem)));
    assert_eq!(ca.fingerprint().unwrap(), root_fp);
    assert_eq!(anchor_fingerprint(&chain).unwrap(), root_fp);
    assert_ne!(fingerprint_pem(&chain).unwrap(), root_fp);

    // A device certificate verifies at the gateway, whose anchors are the CA file, and is
    // refused once the intermediate's CRL lists it.
    let device = ca.sign_device_csr(&csr("pi-01"), &id("pi-01"), 30).unwrap();
    let verifier = |crl: Option<&str>| {
        let crls = crl
            .map(|p| CertificateRevocationListDer::from_pem_slice(p.as_bytes()).unwrap())
            .into_iter();
        WebPkiClientVerifier::builder_with_provider(anchors(&chain), provider())
            .with_crls(crls)
            .build()
            .unwrap()
    };
    let empty = ca.crl(&[], 1, 7).unwrap();
    verifier(Some(&empty))
        .verify_client_cert(&der(&device.cert_pem), &[], UnixTime::now())
        .unwrap();
    let revoked = ca
        .crl(
            &[Revoked {
                serial_hex: device.serial_hex.clone(),
                revoked_at_unix: OffsetDateTime::now_utc().unix_timestamp(),
            }],
            2,
            7,
        )
        .unwrap();
    assert!(
        verifier(Some(&revoked))
            .verify_client_cert(&der(&device.cert_pem), &[], UnixTime::now())
            .is_err()
    );

    // The server certificate verifies for an agent that trusts only the root, given the
    // chain the listeners send (server certificate, then the CA file).
    let (server_pem, _) = ca.issue_server(&["pifleet.example".to_owned()]).unwrap();
    let mut only_root = RootCertStore::empty();
    only_root.add(der(&root.cert_pem)).unwrap();
    let server_verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(only_root), provider())
            .build()
            .unwrap();
    let name = ServerName::try_from("pifleet.example").unwrap();
    server_verifier
        .verify_server_cert(
            &der(&server_pem),
            &[der(&int.cert_pem), der(&root.cert_pem)],
            &name,
            &[],
            UnixTime::now(),
        )
        .unwrap();
    // Without the intermediate the root alone cannot vouch for it.
    assert!(
        server_verifier
            .verify_server_cert(&der(&server_pem), &[], &name, &[], UnixTime::now())
            .is_err()
    );
}

#[test]
fn a_chain_that_does_not_lead_to_a_root_is_refused() {
    let root = root(1);
    let int = intermediate(&root);
    let key = &int.key;

    // The intermediate alone: no root to pin.
    let err = check_err(&int.cert_pem, key);
    assert!(
        matches!(err, PkiError::Chain(ChainError::NoRoot)),
        "{err:?}"
    );

    // Followed by a root that did not sign it.
    let stranger = self::root(1);
    let err = check_err(&format!("{}{}", int.cert_pem, stranger.cert_pem), key);
    assert!(
        matches!(err, PkiError::Chain(ChainError::Broken { index: 1 })),
        "{err:?}"
    );

    // In the wrong order: the first certificate is the root, whose key this is not.
    let err = check_err(&format!("{}{}", root.cert_pem, int.cert_pem), key);
    assert!(
        matches!(err, PkiError::Chain(ChainError::Broken { index: 1 })),
        "{err:?}"
    );

    // Right chain, wrong key.
    let err = check_err(&format!("{}{}", int.cert_pem, root.cert_pem), &root.key);
    assert!(matches!(err, PkiError::KeyMismatch), "{err:?}");
}

#[test]
fn constraints_of_the_chain_are_enforced() {
    // A root that allows no CA below it.
    let strict = root(0);
    let int = intermediate(&strict);
    let err = check_err(&format!("{}{}", int.cert_pem, strict.cert_pem), &int.key);
    assert!(
        matches!(err, PkiError::Chain(ChainError::PathLen(0))),
        "{err:?}"
    );

    // An intermediate that may sign certificates but not CRLs.
    let root = root(1);
    let no_crl = signed_by(
        &root,
        ca_params("no crl", 0, vec![KeyUsagePurpose::KeyCertSign]),
    );
    let err = check_err(
        &format!("{}{}", no_crl.cert_pem, root.cert_pem),
        &no_crl.key,
    );
    assert!(
        matches!(err, PkiError::Chain(ChainError::CannotSignCrl)),
        "{err:?}"
    );

    // An expired intermediate.
    let mut old = ca_params("expired", 0, full_usage());
    old.not_before = OffsetDateTime::now_utc() - Duration::days(60);
    old.not_after = OffsetDateTime::now_utc() - Duration::days(1);
    let expired = signed_by(&root, old);
    let err = check_err(
        &format!("{}{}", expired.cert_pem, root.cert_pem),
        &expired.key,
    );
    assert!(
        matches!(
            err,
            PkiError::Chain(ChainError::NotValidNow { index: 1, .. })
        ),
        "{err:?}"
    );

    // A leaf in the middle of the chain.
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name.push(DnType::CommonName, "leaf");
    leaf.is_ca = IsCa::ExplicitNoCa;
    let leaf = signed_by(&root, leaf);
    let err = check_err(&format!("{}{}", leaf.cert_pem, root.cert_pem), &leaf.key);
    assert!(
        matches!(err, PkiError::Chain(ChainError::NotCa { index: 1 })),
        "{err:?}"
    );

    // Too long.
    let five = std::iter::repeat_n(root.cert_pem.as_str(), 5).collect::<String>();
    let err = check_err(&five, &root.key);
    assert!(
        matches!(err, PkiError::Chain(ChainError::TooLong(5))),
        "{err:?}"
    );
    let err = check_err("", &root.key);
    assert!(matches!(err, PkiError::Chain(ChainError::Empty)), "{err:?}");
}
