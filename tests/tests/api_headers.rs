//! The HTTP layer of the admin HTTPS API, end to end against the real controller: security
//! headers on every kind of response (a real 500 included), CORS closed by default and open
//! only to listed origins, the body limit and strict JSON, and keep-alive connections that
//! survive a request refused before its body was read.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use pifleet_tests::api::{Api, Resp, TEST_PASSWORD};
use pifleet_tests::apikit::problem;
use pifleet_tests::fleetkit::{assert_hardening_headers, assert_security_headers, tls_connect};
use pifleet_tests::harness::{Controller, wait_for};
use reqwest::Method;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

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
    problem(&r, 401, "GET /api/v1/devices without a token");
    assert_eq!(r.header("www-authenticate"), "Bearer");
    assert_security_headers(&r, "401");

    for path in [
        "/api/v1/no-such-thing",
        "/metrics/no-such-thing",
        "/assets/no-such.js",
    ] {
        let r = api.get(path, Some(&admin)).await.unwrap();
        problem(&r, 404, path);
        assert_security_headers(&r, &format!("404 {path}"));
    }
    let r = api
        .call(Method::POST, "/no-such-thing", None, None)
        .await
        .unwrap();
    problem(&r, 404, "POST /no-such-thing");

    // The dashboard: any other page path is its index (the browser routes), revalidated on
    // every load, under the same strict headers; its hashed files are cached for good and
    // sent compressed to clients that accept it.
    let r = api.get("/devices/pi-1", None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(r.header("cache-control"), "no-cache");
    assert_hardening_headers(&r, "dashboard index");
    let script = r
        .text
        .split("src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the index loads a script")
        .to_owned();
    assert!(
        script.starts_with("/assets/") && script.ends_with(".js"),
        "{script}"
    );
    let r = api
        .call_with(
            Method::GET,
            &script,
            None,
            None,
            &[("accept-encoding", "gzip")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "text/javascript; charset=utf-8");
    assert_eq!(
        r.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(r.header("content-encoding"), "gzip");
    assert_hardening_headers(&r, "dashboard script");

    let r = api
        .call(Method::DELETE, "/healthz", None, None)
        .await
        .unwrap();
    problem(&r, 405, "DELETE /healthz");
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
    let j = problem(&r, 500, "GET /api/v1/tokens without its table");
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
    problem(&r, 413, "token request over the body limit");
    assert_security_headers(&r, "413");
    // Also before authentication, on the public sign-in route.
    let big_login = json!({ "username": "admin", "password": "p".repeat(5000) });
    let r = api
        .post("/api/v1/auth/login", None, &big_login)
        .await
        .unwrap();
    problem(&r, 413, "sign-in over the body limit");
    // Just under the limit is read (and refused for what it says, not for its size).
    let fits = json!({ "ttl_s": 60, "labels": { "note": "x".repeat(200) } });
    let r = api
        .post("/api/v1/tokens", Some(&admin), &fits)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text);

    // Malformed bodies: cut-off or not JSON (400), or not declared as JSON (415).
    let json_ct = "application/json";
    let cases = [
        (
            "/api/v1/tokens",
            Some(admin.as_str()),
            json_ct,
            "{\"ttl_s\": ",
            400,
        ),
        (
            "/api/v1/tokens",
            Some(admin.as_str()),
            json_ct,
            "not json",
            400,
        ),
        (
            "/api/v1/tokens",
            Some(admin.as_str()),
            "text/plain",
            "{}",
            415,
        ),
        ("/api/v1/auth/login", None, json_ct, "{\"username\":", 400),
    ];
    for (path, token, content_type, body, status) in cases {
        let r = raw(&api, Method::POST, path, token, content_type, body).await;
        problem(&r, status, &format!("{path} {content_type} {body:?}"));
    }

    // Well-formed JSON of the wrong shape.
    let r = api
        .post("/api/v1/tokens", Some(&admin), &json!({ "ttl_s": "soon" }))
        .await
        .unwrap();
    problem(&r, 422, "ttl_s a string");
    let r = api
        .post("/api/v1/tokens", Some(&admin), &json!([1, 2]))
        .await
        .unwrap();
    problem(&r, 422, "an array for a token request");

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
        let j = problem(&r, 422, &format!("{path} with {field}"));
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
    problem(&r, 422, "labels with an unknown field");
    // Nothing was created by the refused requests.
    let r = api.get("/api/v1/users", Some(&admin)).await.unwrap();
    assert!(!r.text.contains("eve"), "{}", r.text);
    let r = api.get("/api/v1/tokens", Some(&admin)).await.unwrap();
    assert_eq!(r.json().as_array().unwrap().len(), 1, "{}", r.text);
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
