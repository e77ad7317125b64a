//! Renewal against a real store and CA: who may renew, how often, with which key, and
//! that receipts verify against every unexpired certificate of the device.

use crate::store::db::writing;
use std::time::Duration;

use pifleet_shared::DeviceId;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use super::renew::{RenewFailure, Renewer};
use crate::metrics::Metrics;
use crate::pki::{Ca, CsrError};
use crate::store::testkit::{add_device, store};
use crate::store::{RenewRefusal, Store};

fn csr_with(key: &KeyPair, cn: &str) -> String {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn csr(cn: &str) -> String {
    csr_with(&KeyPair::generate().unwrap(), cn)
}

fn renewer(store: &Store, min_interval: Duration) -> Renewer {
    Renewer {
        store: store.clone(),
        ca: Ca::generate("test").unwrap(),
        lifetime: Duration::from_secs(60),
        min_interval,
        metrics: Metrics::new().unwrap(),
    }
}

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).unwrap()
}

async fn cert_count(s: &Store, device: &str) -> i64 {
    writing!(s, |ex| sqlx::query_scalar(
        "SELECT COUNT(*) FROM certificates WHERE device_id = $1"
    )
    .bind(device)
    .fetch_one(ex)
    .await)
    .unwrap()
}

#[tokio::test]
async fn only_a_known_unrevoked_device_renews_for_its_own_id() {
    let (_dir, s) = store().await;
    add_device(&s, "pi-a", "{}", None, true).await;
    add_device(&s, "pi-gone", "{}", None, false).await;
    s.revoke_device("pi-gone").await.unwrap();
    let r = renewer(&s, Duration::from_secs(1));

    let refused = |e: &RenewFailure| e.outcome();
    let cases: Vec<(&str, String, &str)> = vec![
        ("pi-gone", csr("pi-gone"), "refused_revoked"),
        ("pi-nobody", csr("pi-nobody"), "refused_unknown"),
        ("pi-a", csr("pi-b"), "refused_other_id"),
        ("pi-a", "not a csr".into(), "refused_csr"),
    ];
    for (device, pem, want) in cases {
        let e = r.renew(&id(device), &pem).await.unwrap_err();
        assert_eq!(refused(&e), want, "{device}: {e}");
        assert_eq!(cert_count(&s, device).await, 0, "{device}");
    }
    let e = r.renew(&id("pi-a"), &csr("pi-b")).await.unwrap_err();
    assert!(
        matches!(e, RenewFailure::Csr(CsrError::IdMismatch { .. })),
        "{e}"
    );

    let pem = r.renew(&id("pi-a"), &csr("pi-a")).await.unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE"));
    assert_eq!(cert_count(&s, "pi-a").await, 1);
    let audited: i64 = writing!(s, |ex| sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE action = 'device.renew_certificate' \
         AND actor = 'device:pi-a' AND target = 'pi-a' AND outcome = 'ok'",
    )
    .fetch_one(ex)
    .await)
    .unwrap();
    assert_eq!(audited, 1);
    assert!(s.verify_audit().await.unwrap().result.is_ok());
}

#[tokio::test]
async fn renewals_are_rate_limited_and_never_reuse_a_key() {
    let (_dir, s) = store().await;
    add_device(&s, "pi-a", "{}", None, true).await;
    let r = renewer(&s, Duration::from_secs(30));
    let key = KeyPair::generate().unwrap();
    r.renew(&id("pi-a"), &csr_with(&key, "pi-a")).await.unwrap();
    for _ in 0..5 {
        match r.renew(&id("pi-a"), &csr("pi-a")).await {
            Err(RenewFailure::Refused(RenewRefusal::TooSoon { retry_after_s })) => {
                assert!((1..=30).contains(&retry_after_s), "{retry_after_s}");
            }
            other => panic!("expected TooSoon, got {other:?}"),
        }
    }
    assert_eq!(cert_count(&s, "pi-a").await, 1);

    // Without the rate limit in the way, a key the device had before is refused.
    let r = renewer(&s, Duration::ZERO);
    let e = r
        .renew(&id("pi-a"), &csr_with(&key, "pi-a"))
        .await
        .unwrap_err();
    assert_eq!(e.outcome(), "refused_key_reused", "{e}");
    assert_eq!(cert_count(&s, "pi-a").await, 1);
    r.renew(&id("pi-a"), &csr("pi-a")).await.unwrap();
    assert_eq!(cert_count(&s, "pi-a").await, 2);
}

#[tokio::test]
async fn receipts_verify_against_every_unexpired_unrevoked_certificate() {
    let (_dir, s) = store().await;
    add_device(&s, "pi-a", "{}", None, true).await;
    let r = renewer(&s, Duration::ZERO);
    for _ in 0..3 {
        r.renew(&id("pi-a"), &csr("pi-a")).await.unwrap();
        // Distinct issue times, as the rate limit guarantees outside tests.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(s.device_keys("pi-a").await.unwrap().len(), 3);
    // One expires: it no longer counts.
    writing!(s, |ex| sqlx::query(
        "UPDATE certificates SET not_after = 1000 WHERE serial = \
         (SELECT serial FROM certificates WHERE device_id = 'pi-a' ORDER BY issued_at LIMIT 1)",
    )
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    assert_eq!(s.device_keys("pi-a").await.unwrap().len(), 2);
    // It is overdue for renewal only when its newest certificate is.
    assert_eq!(s.renewal_overdue_count().await.unwrap(), 0);
    writing!(s, |ex| sqlx::query(
        "UPDATE certificates SET issued_at = issued_at - 60000, not_after = issued_at + 1000 \
         WHERE device_id = 'pi-a'",
    )
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    assert_eq!(s.renewal_overdue_count().await.unwrap(), 1);
    s.revoke_device("pi-a").await.unwrap();
    assert!(s.device_keys("pi-a").await.unwrap().is_empty());
    assert_eq!(s.renewal_overdue_count().await.unwrap(), 0);
}
