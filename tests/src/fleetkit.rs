//! Shared pieces of the fleet API tests (`tests/api_devices.rs`, `api_commands.rs`,
//! `api_tokens.rs`) and of the HTTPS hardening tests (`api_headers.rs`, `api_network.rs`,
//! `api_mutation_audit.rs`, `api_openapi.rs`): real agents enrolled with tokens the test
//! chooses, a three-device fleet, security-header checks and TLS connections limited to one
//! protocol version (problem documents and audit reads are in `apikit`). Like the tests,
//! these helpers assert and panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use pifleet_controller::api::SECURITY_HEADERS;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::api::{Api, Resp};
use crate::harness::{Controller, bin, signal, wait_for};
use crate::mqtt::provider;

// ---- The fleet, with real agents ---------------------------------------------------------

/// How long agents get to connect, report and answer.
pub const WAIT: Duration = Duration::from_secs(30);

/// A real agent enrolled with a token the test chose (the harness's `Agent::enroll` always
/// makes its own token, without labels).
#[derive(Debug)]
pub struct Pi {
    id: String,
    pub dir: PathBuf,
    _tmp: TempDir,
    child: Option<Child>,
    starts: u32,
}

/// `pifleet-agent enroll` with `args` (after `enroll`) into `dir`, telemetry every second,
/// proposing `id` when given.
pub fn agent_enroll(args: &[&str], dir: &std::path::Path, id: Option<&str>) -> Output {
    let mut cmd = Command::new(bin("pifleet-agent").unwrap());
    cmd.arg("enroll")
        .args(args)
        .arg("--config")
        .arg(dir.join("agent.toml"))
        .args(["--interval", "1"]);
    if let Some(id) = id {
        cmd.args(["--device-id", id]);
    }
    cmd.output().unwrap()
}

impl Pi {
    /// Enrolls as `id` with `token`; fails the test if the controller refuses.
    pub fn enroll(ctl: &Controller, id: &str, token: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(id);
        let out = agent_enroll(
            &["--controller", &ctl.url(), "--token", token],
            &dir,
            Some(id),
        );
        assert!(
            out.status.success(),
            "enroll {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            id: id.to_owned(),
            dir,
            _tmp: tmp,
            child: None,
            starts: 0,
        }
    }

    /// Runs the agent (`pifleet-agent run`), its log in a new file.
    pub fn start(&mut self) {
        self.starts += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("agent-{}.log", self.starts))).unwrap();
        let child = Command::new(bin("pifleet-agent").unwrap())
            .arg("run")
            .arg("--config")
            .arg(self.dir.join("agent.toml"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// Everything the agent logged, over all its runs.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.join(format!("agent-{n}.log"))).unwrap_or_default()
            })
            .collect()
    }
}

impl Drop for Pi {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Checks the status; the body as JSON.
pub fn ok(r: Resp, status: u16, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", r.text);
    r.json()
}

/// A GET that must answer 200: its JSON.
pub async fn get(api: &Api, token: &str, path: &str) -> Value {
    ok(api.get(path, Some(token)).await.unwrap(), 200, path)
}

/// `POST /api/v1/tokens` with `body`: the created token.
pub async fn api_token(api: &Api, admin: &str, body: Value) -> Value {
    ok(
        api.post("/api/v1/tokens", Some(admin), &body)
            .await
            .unwrap(),
        201,
        "create token",
    )
}

/// pi-1 (site=lobby, tier=a; token from the CLI), pi-2 (site=lobby) and pi-3 (site=lab)
/// (tokens from the API), started, online and reporting.
pub async fn fleet(ctl: &Controller, api: &Api, admin: &str) -> Vec<Pi> {
    let out = ctl
        .cli(&[
            "token",
            "create",
            "--ttl",
            "10m",
            "--label",
            "site=lobby",
            "--label",
            "tier=a",
        ])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let t1 = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let t2 = api_token(api, admin, json!({ "labels": { "site": "lobby" } })).await;
    let t3 = api_token(api, admin, json!({ "labels": { "site": "lab" } })).await;
    let mut pis = vec![
        Pi::enroll(ctl, "pi-1", &t1),
        Pi::enroll(ctl, "pi-2", t2["token"].as_str().unwrap()),
        Pi::enroll(ctl, "pi-3", t3["token"].as_str().unwrap()),
    ];
    for p in &mut pis {
        p.start();
    }
    let all_reporting = wait_for(WAIT, "three devices online with samples", || async {
        let j = api.get("/api/v1/devices", Some(admin)).await.ok()?.json();
        let items = j["items"].as_array()?.clone();
        (items.len() == 3
            && items
                .iter()
                .all(|d| d["status"] == "online" && d["cpu_pct"].is_number()))
        .then_some(())
    })
    .await;
    if let Err(e) = all_reporting {
        let logs: Vec<String> = pis
            .iter()
            .map(|p| format!("{}:\n{}", p.id, p.log()))
            .collect();
        panic!("{e}\n{}\ncontroller:\n{}", logs.join("\n"), ctl.log());
    }
    pis
}

// ---- HTTPS hardening ---------------------------------------------------------------------

/// Every hardening header, with a value that is actually strict, and `no-store`.
pub fn assert_security_headers(r: &Resp, what: &str) {
    assert_hardening_headers(r, what);
    assert_eq!(r.header("cache-control"), "no-store", "{what}");
}

/// Every hardening header, with a value that is actually strict (for responses that may be
/// cached: the dashboard's files).
pub fn assert_hardening_headers(r: &Resp, what: &str) {
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
}

/// A TLS connection to the HTTPS listener, limited to `version`, speaking HTTP/1.1.
pub async fn tls_connect(
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
