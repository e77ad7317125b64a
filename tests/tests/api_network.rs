//! Who may reach the admin HTTPS API, and how: the admin IP allowlist (health and
//! enrollment stay open), `X-Forwarded-For` believed only from trusted proxies, and TLS 1.2
//! and 1.3 clients.
//!
//! Not tested here: refusal of TLS 1.0/1.1. rustls cannot offer them, and `openssl` (which
//! could) is not part of the CI image; the server is configured for TLS 1.2+ only
//! (`controller/src/pki/tls.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use pifleet_tests::api::{Api, TEST_PASSWORD};
use pifleet_tests::apikit::{audit, problem};
use pifleet_tests::fleetkit::{assert_security_headers, tls_connect};
use pifleet_tests::harness::{Agent, Controller};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_allowlist_blocks_the_admin_api_but_not_health_or_enrollment() {
    let ctl = Controller::start_with("[https]\nadmin_allow = [\"10.0.0.0/8\"]")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();

    let r = api.login("admin", &ctl.admin_password).await.unwrap();
    let j = problem(&r, 403, "sign-in from outside the allowlist");
    assert!(
        j["detail"].as_str().unwrap().contains("address"),
        "{}",
        r.text
    );
    assert_security_headers(&r, "allowlist 403");
    for path in ["/api/v1/devices", "/api/v1/whoami", "/api/v1/openapi.json"] {
        let r = api.get(path, None).await.unwrap();
        problem(&r, 403, path);
    }
    let r = api
        .post(
            "/api/v1/auth/refresh",
            None,
            &json!({ "refresh_token": "x" }),
        )
        .await
        .unwrap();
    problem(&r, 403, "refresh from outside the allowlist");

    let r = api.get("/healthz", None).await.unwrap();
    assert_eq!((r.status, r.text.as_str()), (200, "ok"));
    let r = api.get("/readyz", None).await.unwrap();
    assert_eq!(r.status, 200);

    // Devices enroll from anywhere: the real agent with a real token.
    let agent = Agent::enroll(&ctl, "pi-outside", 5).unwrap();
    assert!(agent.cert().exists());
    let db = ctl.db().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE id = 'pi-outside'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
    // No admin sign-in happened, so nothing was recorded for one.
    let logins: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE action LIKE 'auth.%'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(logins, 0);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let ctl = Controller::start_with(
        "[https]\nadmin_allow = [\"203.0.113.0/24\"]\ntrusted_proxies = [\"127.0.0.1/32\"]",
    )
    .await
    .unwrap();
    let api = Api::new(&ctl).unwrap();
    let via = [("x-forwarded-for", "203.0.113.7")];
    let login = json!({ "username": "admin", "password": ctl.admin_password });

    // Straight from loopback (the proxy itself): not an allowed client.
    let r = api.login("admin", &ctl.admin_password).await.unwrap();
    problem(&r, 403, "sign-in from the proxy itself");
    // A spoofed left-most entry does not help: the right-most untrusted hop is the client.
    let r = api
        .call_with(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(&login),
            &[("x-forwarded-for", "203.0.113.7, 198.51.100.1")],
        )
        .await
        .unwrap();
    problem(&r, 403, "sign-in behind a spoofed left-most entry");
    // A malformed entry where the client should be is refused, not taken for the proxy.
    let r = api
        .call_with(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(&login),
            &[("x-forwarded-for", "203.0.113.7, not-an-address")],
        )
        .await
        .unwrap();
    let j = problem(&r, 400, "a malformed client entry");
    assert!(
        j["detail"]
            .as_str()
            .unwrap()
            .contains("malformed X-Forwarded-For"),
        "{}",
        r.text
    );

    // Through the proxy: allowed, and the client address is what gets recorded.
    let r = api
        .call_with(Method::POST, "/api/v1/auth/login", None, Some(&login), &via)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let first = r.json()["access_token"].as_str().unwrap().to_owned();
    let r = api
        .call_with(
            Method::POST,
            "/api/v1/me/password",
            Some(&first),
            Some(&json!({ "current_password": ctl.admin_password, "new_password": TEST_PASSWORD })),
            &via,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text);
    let login = json!({ "username": "admin", "password": TEST_PASSWORD });
    let r = api
        .call_with(Method::POST, "/api/v1/auth/login", None, Some(&login), &via)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let admin = r.json()["access_token"].as_str().unwrap().to_owned();
    // With a valid token but without the header, the address still decides.
    let r = api.get("/api/v1/audit", Some(&admin)).await.unwrap();
    problem(&r, 403, "a valid token without X-Forwarded-For");

    let entries = audit(&api, &admin, None, &via).await;
    let logins: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "auth.login" && e["outcome"] == "ok")
        .collect();
    assert_eq!(logins.len(), 2, "{entries:#?}");
    for e in &logins {
        assert_eq!(e["source"], "203.0.113.7", "{e}");
        assert_eq!(e["target"], "admin", "{e}");
    }
    let pw = entries
        .iter()
        .find(|e| e["action"] == "self.password")
        .unwrap_or_else(|| panic!("{entries:#?}"));
    assert_eq!(pw["source"], "203.0.113.7");
    assert_eq!(pw["actor"], "user:admin");
    assert!(
        entries.iter().all(|e| e["source"] != "127.0.0.1"),
        "{entries:#?}"
    );
    drop(ctl);

    // Without trusted proxies, the header is ignored.
    let ctl = Controller::start_with("[https]\nadmin_allow = [\"203.0.113.0/24\"]")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();
    let login = json!({ "username": "admin", "password": ctl.admin_password });
    let r = api
        .call_with(Method::POST, "/api/v1/auth/login", None, Some(&login), &via)
        .await
        .unwrap();
    problem(&r, 403, "X-Forwarded-For from an untrusted peer");
}

/// Chains through a trusted proxy that is itself allowlisted (admin API and scrapes): the
/// client is the right-most address that is not a trusted proxy, whatever junk its own
/// left part holds; junk where the client should be is a 400; and never does a chain make
/// the client the proxy. (`GET /api/v1/openapi.json` needs only the allowlist; `/metrics`
/// needs `metrics.scrape_allow` or the scrape token, else the admin allowlist and a 401.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_chains_through_a_trusted_proxy() {
    let ctl = Controller::start_with(
        "[https]\nadmin_allow = [\"127.0.0.1/32\", \"198.51.100.0/24\"]\n\
         trusted_proxies = [\"127.0.0.1/32\"]\n\
         [metrics]\nscrape_allow = [\"127.0.0.1/32\"]",
    )
    .await
    .unwrap();
    let api = Api::new(&ctl).unwrap();
    // (X-Forwarded-For lines, status of the OpenAPI document, status of /metrics)
    #[rustfmt::skip]
    let cases: &[(&[&str], u16, u16)] = &[
        (&[], 200, 200),                                // the proxy's own request
        (&["127.0.0.1"], 200, 200),                     // only proxies: the left-most
        (&["203.0.113.9"], 403, 403),
        (&["junk, 203.0.113.9"], 403, 403),             // the client, not the proxy
        (&["127.0.0.1, 203.0.113.9"], 403, 403),
        (&["203.0.113.9, 127.0.0.1"], 403, 403),        // the proxy's own hop is skipped
        (&["203.0.113.9, junk"], 400, 400),
        (&["junk"], 400, 400),
        (&["203.0.113.9, 127.0.0.1, junk"], 400, 400),
        (&["junk", "203.0.113.9"], 403, 403),           // two header lines, one list
        (&["203.0.113.9", "junk"], 400, 400),
        (&["203.0.113.9:4711"], 403, 403),
        (&["[2001:db8::1]:443"], 403, 403),
        (&["junk, 198.51.100.4"], 200, 401),            // allowlisted, but no scraper
        (&["198.51.100.4:4711, 127.0.0.1"], 200, 401),
    ];
    for (lines, doc, scrape) in cases {
        let headers: Vec<(&str, &str)> = lines.iter().map(|l| ("x-forwarded-for", *l)).collect();
        for (path, want) in [("/api/v1/openapi.json", doc), ("/metrics", scrape)] {
            let r = api
                .call_with(Method::GET, path, None, None, &headers)
                .await
                .unwrap();
            assert_eq!(r.status, *want, "{path} via {lines:?}: {}", r.text);
            if *want >= 400 {
                let j = problem(&r, *want, &format!("{path} via {lines:?}"));
                if *want == 400 {
                    assert!(
                        j["detail"]
                            .as_str()
                            .unwrap()
                            .contains("malformed X-Forwarded-For"),
                        "{}",
                        r.text
                    );
                }
            }
        }
    }
    // A header that is not visible ASCII is refused, wherever the bad bytes are.
    for bad in [&b"198.51.100.4, \xff"[..], b"\xc3\xa9, 198.51.100.4"] {
        let r = api
            .client
            .get(format!("{}/api/v1/openapi.json", api.base))
            .header(
                "x-forwarded-for",
                reqwest::header::HeaderValue::from_bytes(bad).unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{bad:?}");
    }
    // A sign-in with a body is refused the same way, before the guard counts it.
    let r = api
        .call_with(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(&json!({ "username": "admin", "password": "x".repeat(4000) })),
            &[("x-forwarded-for", "203.0.113.9, junk")],
        )
        .await
        .unwrap();
    problem(&r, 400, "sign-in with a malformed X-Forwarded-For");

    // The audit source and the sign-in limiter's key are the resolved client.
    let login = json!({ "username": "admin", "password": ctl.admin_password });
    let r = api
        .call_with(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(&login),
            &[("x-forwarded-for", "junk, 198.51.100.4")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let admin = api.admin(&ctl).await.unwrap();
    let entries = audit(&api, &admin, None, &[]).await;
    let logins: Vec<&Value> = entries
        .iter()
        .filter(|e| e["action"] == "auth.login" && e["outcome"] == "ok")
        .collect();
    assert_eq!(logins.len(), 3, "{entries:#?}");
    let sources: Vec<&str> = logins
        .iter()
        .map(|e| e["source"].as_str().unwrap())
        .collect();
    // Newest first: the helper's two sign-ins straight from loopback, then the proxied one.
    assert_eq!(
        sources,
        ["127.0.0.1", "127.0.0.1", "198.51.100.4"],
        "{entries:#?}"
    );
}

/// GET /healthz over a fresh TLS connection limited to `version`; returns the negotiated
/// version, cipher suite and HTTP status.
async fn healthz_over(
    ctl: &Controller,
    version: &'static rustls::SupportedProtocolVersion,
) -> (rustls::ProtocolVersion, rustls::CipherSuite, u16) {
    let tls = tls_connect(ctl, version).await;
    let (_, conn) = tls.get_ref();
    let negotiated = conn.protocol_version().unwrap();
    let suite = conn.negotiated_cipher_suite().unwrap().suite();
    let (mut sender, c) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = c.await;
    });
    let req = hyper::Request::get("/healthz")
        .header("host", format!("localhost:{}", ctl.https.port()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    (negotiated, suite, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_and_1_3_clients_connect() {
    let ctl = Controller::start().await.unwrap();
    let (v, suite, status) = healthz_over(&ctl, &rustls::version::TLS12).await;
    assert_eq!((v, status), (rustls::ProtocolVersion::TLSv1_2, 200));
    // rustls offers only forward-secret AEAD suites for TLS 1.2; the server picked one.
    let name = format!("{suite:?}");
    assert!(
        name.starts_with("TLS_ECDHE_") && (name.contains("GCM") || name.contains("CHACHA20")),
        "{name}"
    );
    let (v, _, status) = healthz_over(&ctl, &rustls::version::TLS13).await;
    assert_eq!((v, status), (rustls::ProtocolVersion::TLSv1_3, 200));
}
