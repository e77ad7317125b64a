//! Enrollment against a real database: ids chosen by the controller when devices share a
//! hostname, and devices that wait for an admin's approval.

use pifleet_shared::enroll::v1::EnrollRequest;
use pifleet_shared::token::EnrollToken;
use rcgen::{CertificateParams, DnType, KeyPair};

use super::*;
use crate::model::labels::Labels;
use crate::store::enrollment_requests::{ACCEPTED, Decided, PENDING, REJECTED};
use crate::store::testkit;

struct Fixture {
    _dir: testkit::Guard,
    st: EnrollState,
}

async fn fixture() -> Fixture {
    let (dir, store) = testkit::store().await;
    let ca = Ca::generate("test").unwrap();
    let st = EnrollState {
        store,
        ca_fingerprint: ca.fingerprint().unwrap(),
        ca,
        pinned: arc_swap::ArcSwap::from_pointee(Pinned {
            command_public_key: String::new(),
            command_key_id: "test".into(),
            release_public_keys: Vec::new(),
        }),
        mqtt_port: 8883,
        mqtt_host: None,
        cert_lifetime: std::time::Duration::from_secs(30 * 86_400),
        metrics: Metrics::new().unwrap(),
    };
    Fixture { _dir: dir, st }
}

/// A token in the store; returns its text.
async fn make_token(st: &EnrollState, max_uses: Option<u32>, require_approval: bool) -> String {
    let secret: [u8; 32] = rand::random();
    let hash = secret_hash(&secret);
    let far = crate::store::now_ms() + 3_600_000;
    st.store
        .insert_token(&crate::store::NewToken {
            id: &hash[..12],
            secret_hash: &hash,
            name: None,
            labels: &Labels::default(),
            expires_at: far,
            max_uses,
            require_approval,
        })
        .await
        .unwrap();
    let fpr: [u8; 32] = hex::decode(&st.ca_fingerprint).unwrap().try_into().unwrap();
    EnrollToken::new(secret, fpr).to_string()
}

/// A device: its key, and a request proposing `cn` with `fallback`.
struct Device {
    key: KeyPair,
}

impl Device {
    fn new() -> Self {
        Self {
            key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }

    fn request(&self, token: &str, cn: &str, fallback: Option<&str>) -> EnrollRequest {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        EnrollRequest {
            token: token.to_owned(),
            csr: params.serialize_request(&self.key).unwrap().pem().unwrap(),
            fallback_id: fallback.map(str::to_owned),
        }
    }
}

fn enrolled(outcome: Outcome) -> String {
    match outcome {
        Outcome::Enrolled(e) => e.response.device_id,
        Outcome::Pending { request, .. } => panic!("still pending: {request:?}"),
    }
}

fn pending(outcome: Outcome) -> (RequestRow, bool) {
    match outcome {
        Outcome::Pending { request, new } => (request, new),
        Outcome::Enrolled(e) => panic!("enrolled {}", e.response.device_id),
    }
}

#[tokio::test]
async fn a_device_whose_hostname_is_taken_gets_its_fallback_id() {
    let f = fixture().await;
    let token = make_token(&f.st, Some(3), false).await;
    let first = Device::new().request(&token, "raspberrypi", Some("raspberrypi-0a1b2c3d"));
    let second = Device::new().request(&token, "raspberrypi", Some("raspberrypi-4e5f6a7b"));
    assert_eq!(
        enrolled(enroll(&f.st, &first, "10.0.0.1").await.unwrap()),
        "raspberrypi"
    );
    assert_eq!(
        enrolled(enroll(&f.st, &second, "10.0.0.1").await.unwrap()),
        "raspberrypi-4e5f6a7b"
    );
    // A third with neither free is refused, and nothing changed.
    let third = Device::new().request(&token, "raspberrypi", Some("raspberrypi-4e5f6a7b"));
    let err = enroll(&f.st, &third, "10.0.0.1").await.unwrap_err();
    assert!(
        matches!(err, Refusal::Token(EnrollRefusal::DeviceExists(ref id)) if id == "raspberrypi"),
        "{err:?}"
    );
    // The fallback is only ever the one the device sent: a CSR for another id is not
    // signed under the fallback of a third.
    let cert =
        f.st.ca
            .sign_device_csr_or_fallback(
                &Device::new().request(&token, "pi-a", None).csr,
                &DeviceId::parse("pi-b").unwrap(),
                Some(&DeviceId::parse("pi-c").unwrap()),
                std::time::Duration::from_secs(86_400),
            )
            .unwrap_err();
    assert!(matches!(cert, CsrError::IdMismatch { .. }), "{cert:?}");
}

#[tokio::test]
async fn devices_wait_for_approval_and_enroll_once_accepted() {
    let f = fixture().await;
    let token = make_token(&f.st, Some(2), true).await;
    let a = Device::new();
    let b = Device::new();
    let c = Device::new();
    let req_a = a.request(&token, "raspberrypi", Some("raspberrypi-0000000a"));
    let req_b = b.request(&token, "raspberrypi", Some("raspberrypi-0000000b"));

    // The first request waits, under the id it will get; asking again finds it again.
    let (ra, new) = pending(enroll(&f.st, &req_a, "10.0.0.1").await.unwrap());
    assert!(new);
    assert_eq!(
        (ra.device_id.as_str(), ra.status.as_str()),
        ("raspberrypi", PENDING)
    );
    let (again, new) = pending(enroll(&f.st, &req_a, "10.0.0.2").await.unwrap());
    assert!(!new);
    assert_eq!(again.id, ra.id);
    assert!(f.st.store.device("raspberrypi").await.unwrap().is_none());
    // A second device with the same hostname: the held id is taken, it gets its fallback.
    let (rb, _) = pending(enroll(&f.st, &req_b, "10.0.0.1").await.unwrap());
    assert_eq!(rb.device_id, "raspberrypi-0000000b");
    // Open requests hold the token's uses: a third cannot queue.
    let err = enroll(
        &f.st,
        &c.request(&token, "raspberrypi", Some("raspberrypi-0000000c")),
        "10.0.0.1",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Refusal::Token(EnrollRefusal::TokenExhausted(2))),
        "{err:?}"
    );
    // Another token cannot take an id a waiting device holds either.
    let other = make_token(&f.st, None, false).await;
    let err = enroll(&f.st, &c.request(&other, "raspberrypi", None), "10.0.0.1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Refusal::Token(EnrollRefusal::DeviceExists(_))),
        "{err:?}"
    );

    let listed = f.st.store.enrollment_requests(false).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed.iter().find(|r| r.id == ra.id).unwrap().source,
        "10.0.0.2"
    );

    // Accepted (by device id): the next ask enrolls it under the held id; the request is
    // gone, the token counted once.
    let Decided::Done(row) =
        f.st.store
            .decide_enrollment_request("raspberrypi", true, "admin")
            .await
            .unwrap()
    else {
        panic!("not decided")
    };
    assert_eq!(row.status, ACCEPTED);
    assert!(matches!(
        f.st.store
            .decide_enrollment_request(&ra.id, false, "admin2")
            .await
            .unwrap(),
        Decided::AlreadyDecided(_)
    ));
    assert_eq!(
        enrolled(enroll(&f.st, &req_a, "10.0.0.1").await.unwrap()),
        "raspberrypi"
    );
    assert!(f.st.store.device("raspberrypi").await.unwrap().is_some());
    let tokens = f.st.store.list_tokens().await.unwrap();
    let used = tokens.iter().find(|t| t.max_uses == Some(2)).unwrap();
    assert_eq!(used.uses, 1);
    // Asking again after enrolling: the device exists, no new request is made.
    let err = enroll(&f.st, &req_a, "10.0.0.1").await.unwrap_err();
    assert!(matches!(err, Refusal::Token(_)), "{err:?}");

    // Rejected (by request id): refused from then on, and nothing enrolled.
    let Decided::Done(row) =
        f.st.store
            .decide_enrollment_request(&rb.id, false, "admin")
            .await
            .unwrap()
    else {
        panic!("not decided")
    };
    assert_eq!(row.status, REJECTED);
    let err = enroll(&f.st, &req_b, "10.0.0.1").await.unwrap_err();
    assert!(
        matches!(err, Refusal::Token(EnrollRefusal::RequestRejected)),
        "{err:?}"
    );
    assert!(
        f.st.store
            .device("raspberrypi-0000000b")
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        f.st.store
            .decide_enrollment_request("ffffffffffffffff", true, "admin")
            .await
            .unwrap(),
        Decided::Unknown
    ));
    assert_eq!(
        f.st.store.enrollment_requests(false).await.unwrap().len(),
        0
    );
    assert_eq!(f.st.store.enrollment_requests(true).await.unwrap().len(), 1);
}
