//! Hardening of the admin HTTPS API, end to end against the real controller: security
//! headers on every kind of response (a real 500 included), CORS closed by default and
//! open only to listed origins, the body limit and strict JSON, the admin IP allowlist and
//! trusted proxies, TLS 1.2 and 1.3, the audit of every mutating request, the public
//! OpenAPI document, and keep-alive connections that survive a request refused before its
//! body was read.
//!
//! Not tested here: refusal of TLS 1.0/1.1. rustls cannot offer them, and `openssl` (which
//! could) is not part of the CI image; the server is configured for TLS 1.2+ only
//! (`controller/src/tls.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use pifleet_controller::api::SECURITY_HEADERS;
use pifleet_tests::api::{Api, Resp, TEST_PASSWORD};
use pifleet_tests::harness::{Agent, Controller, wait_for};
use pifleet_tests::mqtt::provider;
use reqwest::Method;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Checks the problem document shape and status; returns the document.
fn problem(r: &Resp, status: u16) -> Value {
    assert_eq!(r.status, status, "body: {}", r.text);
    assert_eq!(
        r.header("content-type"),
        "application/problem+json",
        "status {status}: {}",
        r.text
    );
    let j = r.json();
    assert_eq!(j["status"], status, "{}", r.text);
    assert_eq!(j["type"], "about:blank", "{}", r.text);
    assert!(j["title"].is_string(), "{}", r.text);
    assert!(
        j["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{}",
        r.text
    );
    j
}

/// Every hardening header, with a value that is actually strict.
fn assert_security_headers(r: &Resp, what: &str) {
    for (name, value) in SECURITY_HEADERS {
        assert_eq!(&r.header(name), value, "{what}: header {name}");
    }
    let csp = r.header("content-security-policy");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(
            csp.contains(directive),
            "{what}: CSP {csp:?} lacks {directive}"
        );
    }
    assert!(!csp.contains("unsafe-inline"), "{what}: CSP {csp:?}");
    assert!(!csp.contains("unsafe-eval"), "{what}: CSP {csp:?}");
    let hsts = r.header("strict-transport-security");
    let max_age: u64 = hsts
        .split(';')
        .find_map(|p| p.trim().strip_prefix("max-age="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: HSTS {hsts:?} has no max-age"));
    assert!(max_age >= 31_536_000, "{what}: HSTS {hsts:?}");
    assert!(hsts.contains("includeSubDomains"), "{what}: HSTS {hsts:?}");
    assert_eq!(r.header("x-frame-options"), "DENY", "{what}");
    assert_eq!(r.header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(r.header("referrer-policy"), "no-referrer", "{what}");
    let pp = r.header("permissions-policy");
    for feature in ["camera=()", "microphone=()", "geolocation=()"] {
        assert!(pp.contains(feature), "{what}: permissions-policy {pp:?}");
    }
    assert_eq!(r.header("cache-control"), "no-store", "{what}");
}

/// Sends `body` as is with `content_type` (no JSON encoding by the client).
async fn raw(
    api: &Api,
    method: Method,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> Resp {
    let mut rb = api
        .client
        .request(method, format!("{}{path}", api.base))
        .header("content-type", content_type)
        .body(body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let r = rb.send().await.unwrap();
    Resp {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        text: r.text().await.unwrap(),
    }
}

/// Every audit entry, newest first (as the admin sees them).
async fn audit(api: &Api, token: &str, headers: &[(&str, &str)]) -> Vec<Value> {
    let r = api
        .call_with(
            Method::GET,
            "/api/v1/audit?limit=1000",
            Some(token),
            None,
            headers,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_on_every_kind_of_response_even_a_real_500() {
    let ctl = Controller::start().await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();

    let r = api.get("/healthz", None).await.unwrap();
    assert_eq!((r.status, r.text.as_str()), (200, "ok"));
    assert_security_headers(&r, "GET /healthz");

    let r = api.get("/api/v1/devices", Some(&admin)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("content-type"), "application/json");
    assert_security_headers(&r, "authenticated GET /api/v1/devices");

    let r = api.get("/api/v1/devices", None).await.unwrap();
    problem(&r, 401);
    assert_eq!(r.header("www-authenticate"), "Bearer");
    assert_security_headers(&r, "401");

    for path in ["/api/v1/no-such-thing", "/no-such-thing"] {
        let r = api.get(path, Some(&admin)).await.unwrap();
        problem(&r, 404);
        assert_security_headers(&r, &format!("404 {path}"));
    }

    let r = api
        .call(Method::DELETE, "/healthz", None, None)
        .await
        .unwrap();
    problem(&r, 405);
    assert_security_headers(&r, "405");

    // A real internal failure: the table the handler reads is gone.
    let r = api.get("/api/v1/tokens", Some(&admin)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let opts = SqliteConnectOptions::new()
        .filename(ctl.data.join("pifleet.db"))
        .foreign_keys(false)
        .busy_timeout(Duration::from_secs(10));
    let db = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap();
    sqlx::query("DROP TABLE enrollment_tokens")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let r = api.get("/api/v1/tokens", Some(&admin)).await.unwrap();
    let j = problem(&r, 500);
    assert_eq!(j["detail"], "internal error", "{}", r.text);
    assert_eq!(j["title"], "Internal Server Error");
    for leak in ["enrollment_tokens", "SELECT", "sqlite", "no such table"] {
        assert!(
            !r.text.contains(leak),
            "500 body leaks {leak:?}: {}",
            r.text
        );
    }
    assert_security_headers(&r, "500");
    // The cause is in the log, for the operator.
    wait_for(Duration::from_secs(10), "the error in the log", || async {
        ctl.log().contains("no such table").then_some(())
    })
    .await
    .unwrap();
    // One failing table does not take the API down.
    let r = api.get("/api/v1/devices", Some(&admin)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(ctl.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_closed_by_default_and_open_only_to_listed_origins() {
    let preflight = |origin: &'static str| {
        [
            ("origin", origin),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ]
    };

    let ctl = Controller::start().await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let evil = [("origin", "https://evil.example")];
    let r = api
        .call_with(Method::GET, "/healthz", None, None, &evil)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), "");
    let r = api
        .call_with(Method::GET, "/api/v1/openapi.json", None, None, &evil)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), "");
    let r = api
        .call_with(
            Method::OPTIONS,
            "/api/v1/tokens",
            None,
            None,
            &preflight("https://evil.example"),
        )
        .await
        .unwrap();
    assert_eq!(r.header("access-control-allow-origin"), "", "{r:?}");
    assert_eq!(r.header("access-control-allow-methods"), "", "{r:?}");
    drop(ctl);

    let ctl = Controller::start_with("[https]\ncors_origins = [\"https://admin.example\"]")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();
    let r = api
        .call_with(
            Method::OPTIONS,
            "/api/v1/tokens",
            None,
            None,
            &preflight("https://admin.example"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        "https://admin.example"
    );
    assert_eq!(r.header("access-control-allow-credentials"), "true");
    let methods = r.header("access-control-allow-methods");
    assert!(methods.contains("POST"), "{methods}");
    let allowed = r
        .header("access-control-allow-headers")
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert_security_headers(&r, "preflight");

    let r = api
        .call_with(
            Method::OPTIONS,
            "/api/v1/tokens",
            None,
            None,
            &preflight("https://evil.example"),
        )
        .await
        .unwrap();
    // No allowed origin, so the browser refuses the cross-origin call (the other CORS
    // headers are the same for every origin and grant nothing without it).
    assert_eq!(r.header("access-control-allow-origin"), "", "{r:?}");

    // Actual requests: the listed origin is echoed, another origin is not; the answer
    // varies by origin so caches keep them apart.
    let r = api
        .call_with(
            Method::GET,
            "/healthz",
            None,
            None,
            &[("origin", "https://admin.example")],
        )
        .await
        .unwrap();
    assert_eq!(
        r.header("access-control-allow-origin"),
        "https://admin.example"
    );
    assert!(
        r.header("vary").to_ascii_lowercase().contains("origin"),
        "{r:?}"
    );
    let r = api
        .call_with(Method::GET, "/healthz", None, None, &evil)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_malformed_json_and_unknown_fields_are_problems() {
    let ctl = Controller::start_with("[https]\nmax_body_bytes = 4096")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();

    // Valid JSON, just too big.
    let big = json!({ "ttl_s": 60, "labels": { "note": "x".repeat(5000) } });
    let r = api
        .post("/api/v1/tokens", Some(&admin), &big)
        .await
        .unwrap();
    problem(&r, 413);
    assert_security_headers(&r, "413");
    // Also before authentication, on the public sign-in route.
    let big_login = json!({ "username": "admin", "password": "p".repeat(5000) });
    let r = api
        .post("/api/v1/auth/login", None, &big_login)
        .await
        .unwrap();
    problem(&r, 413);
    // Just under the limit is read (and refused for what it says, not for its size).
    let fits = json!({ "ttl_s": 60, "labels": { "note": "x".repeat(200) } });
    let r = api
        .post("/api/v1/tokens", Some(&admin), &fits)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text);

    let json_ct = "application/json";
    let r = raw(
        &api,
        Method::POST,
        "/api/v1/tokens",
        Some(&admin),
        json_ct,
        "{\"ttl_s\": ",
    )
    .await;
    problem(&r, 400);
    let r = raw(
        &api,
        Method::POST,
        "/api/v1/tokens",
        Some(&admin),
        json_ct,
        "not json",
    )
    .await;
    problem(&r, 400);
    let r = raw(
        &api,
        Method::POST,
        "/api/v1/tokens",
        Some(&admin),
        "text/plain",
        "{}",
    )
    .await;
    problem(&r, 415);
    let r = raw(
        &api,
        Method::POST,
        "/api/v1/auth/login",
        None,
        json_ct,
        "{\"username\":",
    )
    .await;
    problem(&r, 400);

    // Well-formed JSON of the wrong shape.
    let r = api
        .post("/api/v1/tokens", Some(&admin), &json!({ "ttl_s": "soon" }))
        .await
        .unwrap();
    problem(&r, 422);
    let r = api
        .post("/api/v1/tokens", Some(&admin), &json!([1, 2]))
        .await
        .unwrap();
    problem(&r, 422);

    // Unknown fields are refused, never ignored.
    let cases = [
        (
            "/api/v1/tokens",
            json!({ "ttl_s": 60, "admin": true }),
            "admin",
        ),
        (
            "/api/v1/commands",
            json!({ "devices": ["pi-1"], "action": { "kind": "ping" }, "priority": 1 }),
            "priority",
        ),
        (
            "/api/v1/commands",
            json!({ "devices": ["pi-1"], "action": { "kind": "ping", "shell": "id" } }),
            "shell",
        ),
        (
            "/api/v1/auth/login",
            json!({ "username": "admin", "password": TEST_PASSWORD, "role": "admin" }),
            "role",
        ),
        (
            "/api/v1/users",
            json!({ "name": "eve", "role": "viewer", "password": "initial-paper-cactus-91",
                    "is_admin": true }),
            "is_admin",
        ),
    ];
    for (path, body, field) in cases {
        let r = api.post(path, Some(&admin), &body).await.unwrap();
        let j = problem(&r, 422);
        let detail = j["detail"].as_str().unwrap();
        assert!(
            detail.contains("unknown field") && detail.contains(field),
            "{path}: {detail}"
        );
    }
    let r = api
        .call(
            Method::PUT,
            "/api/v1/devices/pi-1/labels",
            Some(&admin),
            Some(&json!({ "labels": {}, "merge": true })),
        )
        .await
        .unwrap();
    problem(&r, 422);
    // Nothing was created by the refused requests.
    let r = api.get("/api/v1/users", Some(&admin)).await.unwrap();
    assert!(!r.text.contains("eve"), "{}", r.text);
    let r = api.get("/api/v1/tokens", Some(&admin)).await.unwrap();
    assert_eq!(r.json().as_array().unwrap().len(), 1, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_allowlist_blocks_the_admin_api_but_not_health_or_enrollment() {
    let ctl = Controller::start_with("[https]\nadmin_allow = [\"10.0.0.0/8\"]")
        .await
        .unwrap();
    let api = Api::new(&ctl).unwrap();

    let r = api.login("admin", &ctl.admin_password).await.unwrap();
    let j = problem(&r, 403);
    assert!(
        j["detail"].as_str().unwrap().contains("address"),
        "{}",
        r.text
    );
    assert_security_headers(&r, "allowlist 403");
    for path in ["/api/v1/devices", "/api/v1/whoami", "/api/v1/openapi.json"] {
        let r = api.get(path, None).await.unwrap();
        problem(&r, 403);
    }
    let r = api
        .post(
            "/api/v1/auth/refresh",
            None,
            &json!({ "refresh_token": "x" }),
        )
        .await
        .unwrap();
    problem(&r, 403);

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
    problem(&r, 403);
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
    problem(&r, 403);
    // A malformed chain is not believed at all.
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
    problem(&r, 403);

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
    problem(&r, 403);

    let entries = audit(&api, &admin, &via).await;
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
    problem(&r, 403);
}

/// A TLS connection to the HTTPS listener, limited to `version`, speaking HTTP/1.1.
async fn tls_connect(
    ctl: &Controller,
    version: &'static rustls::SupportedProtocolVersion,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ctl.ca_path()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(ctl.https).await.unwrap();
    TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake limited to {version:?}: {e}"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutating_request_is_audited() {
    let ctl = Controller::start().await.unwrap();
    let _agent = Agent::enroll(&ctl, "pi-1", 5).unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let viewer = api.user(&admin, "vera", "viewer").await.unwrap();

    let r = api
        .post("/api/v1/tokens", Some(&admin), &json!({ "ttl_s": 600 }))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text);
    let token_id = r.json()["id"].as_str().unwrap().to_owned();
    let r = api
        .call(
            Method::PUT,
            "/api/v1/devices/pi-1/labels",
            Some(&admin),
            Some(&json!({ "labels": { "site": "lobby" } })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{token_id}"),
            Some(&admin),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text);
    // Refused for what it asks: audited with its status.
    let r = api
        .call(
            Method::DELETE,
            "/api/v1/tokens/000000000000",
            Some(&admin),
            None,
        )
        .await
        .unwrap();
    problem(&r, 404);
    // Refused by role: audited as denied, nothing done.
    let r = api
        .post("/api/v1/tokens", Some(&viewer), &json!({ "ttl_s": 600 }))
        .await
        .unwrap();
    problem(&r, 403);
    let r = api
        .post("/api/v1/devices/pi-1/revoke", Some(&viewer), &json!({}))
        .await
        .unwrap();
    problem(&r, 403);
    // Reads are not audited.
    for path in ["/api/v1/devices", "/api/v1/devices/pi-1", "/api/v1/tokens"] {
        let r = api.get(path, Some(&admin)).await.unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text);
    }

    let entries = audit(&api, &admin, &[]).await;
    let find = |actor: &str, action: &str, target: &str| -> Value {
        let hits: Vec<&Value> = entries
            .iter()
            .filter(|e| e["actor"] == actor && e["action"] == action && e["target"] == target)
            .collect();
        assert_eq!(hits.len(), 1, "{actor} {action} {target} in {entries:#?}");
        hits[0].clone()
    };
    let labels_target = "/api/v1/devices/pi-1/labels";
    let revoke_target = format!("/api/v1/tokens/{token_id}");
    let expect = [
        ("user:admin", "token.create", "/api/v1/tokens", "ok"),
        ("user:admin", "device.labels", labels_target, "ok"),
        ("user:admin", "token.revoke", revoke_target.as_str(), "ok"),
        (
            "user:admin",
            "token.revoke",
            "/api/v1/tokens/000000000000",
            "refused: 404",
        ),
        ("user:vera", "token.create", "/api/v1/tokens", "denied"),
        (
            "user:vera",
            "device.revoke",
            "/api/v1/devices/pi-1/revoke",
            "denied",
        ),
    ];
    let mut seqs = Vec::new();
    for (actor, action, target, outcome) in expect {
        let e = find(actor, action, target);
        assert_eq!(e["source"], "127.0.0.1", "{e}");
        assert_eq!(e["outcome"], outcome, "{e}");
        seqs.push(e["seq"].as_i64().unwrap());
    }
    // In the order of the requests.
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // Exactly these token and device actions by the two users, nothing more.
    let mutations = entries
        .iter()
        .filter(|e| {
            (e["actor"] == "user:admin" || e["actor"] == "user:vera")
                && (e["action"].as_str().unwrap().starts_with("token.")
                    || e["action"].as_str().unwrap().starts_with("device."))
        })
        .count();
    assert_eq!(mutations, expect.len(), "{entries:#?}");
    for read in ["device.list", "device.show", "token.list", "audit.list"] {
        assert!(
            entries.iter().all(|e| e["action"] != read),
            "{read} was audited"
        );
    }
    // The labels were changed and the device was not revoked.
    let r = api.get("/api/v1/devices/pi-1", Some(&admin)).await.unwrap();
    assert_eq!(r.json()["labels"], json!({ "site": "lobby" }));
    assert_eq!(r.json()["revoked_at"], Value::Null);

    let r = api.get("/api/v1/audit/verify", Some(&admin)).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["intact"], true, "{}", r.text);
    assert!(r.json()["entries"].as_u64().unwrap() >= entries.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_public_and_declares_bearer_auth() {
    let ctl = Controller::start().await.unwrap();
    let api = Api::new(&ctl).unwrap();
    let r = api.get("/api/v1/openapi.json", None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("content-type"), "application/json");
    assert_security_headers(&r, "openapi.json");
    let doc: Value = serde_json::from_str(&r.text).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({ "type": "http", "scheme": "bearer", "bearerFormat": "JWT" })
    );
    assert_eq!(doc["security"], json!([{ "bearer": [] }]));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/devices", "get"),
        ("/api/v1/devices/{id}/labels", "put"),
        ("/api/v1/commands", "post"),
        ("/api/v1/tokens/{id}", "delete"),
        ("/api/v1/audit/verify", "get"),
    ] {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} not documented");
        // Protected operations inherit the global bearer requirement.
        assert!(op.get("security").is_none(), "{method} {path}: {op}");
    }
    // Public operations say so.
    for path in ["/api/v1/auth/login", "/api/v1/enroll"] {
        assert_eq!(paths[path]["post"]["security"], json!([{}]), "{path}");
    }
}

/// Reads one HTTP/1.1 response (with a `content-length` body) from `stream`; returns its
/// status line, lowercased head and body. Bytes after it stay in `buf`.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<(String, String, String)> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                buf.drain(..end + 4 + len);
                let status = head.lines().next().unwrap_or_default().to_owned();
                return Ok((status, head, body));
            }
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A request refused before its body was read (the guard's 401) must not cost the client
/// its keep-alive connection: the server reads the whole body first. Before, hyper closed
/// the connection after such an answer whenever the body had not arrived yet, without
/// `Connection: close`, and the client's next request on it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_leaves_its_connection_usable() {
    use tokio::io::AsyncWriteExt;
    let ctl = Controller::start().await.unwrap();
    let mut tls = tls_connect(&ctl, &rustls::version::TLS13).await;
    let mut buf = Vec::new();
    let body = br#"{"ttl_s": 60}"#;
    for round in 0..3 {
        let head = format!(
            "POST /api/v1/tokens HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer nope\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        // Give the server the chance to answer early, before the body is on its way (an
        // early answer is fine, as long as the connection survives it).
        let early = tokio::time::timeout(
            Duration::from_millis(300),
            read_response(&mut tls, &mut buf),
        )
        .await
        .ok();
        tls.write_all(body).await.unwrap();
        tls.flush().await.unwrap();
        let (status, head, text) = match early {
            Some(r) => r.unwrap(),
            None => read_response(&mut tls, &mut buf).await.unwrap(),
        };
        assert!(status.contains(" 401 "), "round {round}: {status}\n{text}");
        assert!(!head.contains("connection: close"), "round {round}: {head}");
        tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        let (status, _, text) = read_response(&mut tls, &mut buf)
            .await
            .unwrap_or_else(|e| panic!("round {round}: the connection was dropped: {e}"));
        assert_eq!((status.as_str(), text.as_str()), ("http/1.1 200 ok", "ok"));
    }
    // Over the limit: refused at once, and the server says it closes the connection.
    let mut tls = tls_connect(&ctl, &rustls::version::TLS13).await;
    let head = "POST /api/v1/tokens HTTP/1.1\r\nhost: localhost\r\n\
                content-type: application/json\r\ncontent-length: 1000000\r\n\r\n";
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = Vec::new();
    let (status, head, text) = read_response(&mut tls, &mut buf).await.unwrap();
    assert!(status.contains(" 413 "), "{status}\n{text}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
}
