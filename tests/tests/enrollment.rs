//! Enrollment refusals end to end: bad tokens through the real `pifleet-agent enroll`, bad
//! CSRs over HTTPS, and the controller refusing unsafe data directories. Every refusal is
//! clear and changes nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pifleet_tests::harness::{Controller, bin, now_ms, wait_for};
use pifleet_tests::https::{Response, pem, post_json};
use rcgen::{CertificateParams, CertificateSigningRequest, DistinguishedName, DnType, KeyPair};
use serde_json::json;

/// Runs a command with a 60 s limit (killed on timeout).
async fn output(cmd: &mut tokio::process::Command) -> Result<Output> {
    let run = cmd.kill_on_drop(true).output();
    Ok(tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .with_context(|| format!("{cmd:?} did not finish in 60 s"))??)
}

/// Runs `pifleet-agent enroll` into `dir/agent.toml`, proposing `id`.
async fn agent_enroll(url: &str, token: &str, dir: &Path, id: &str) -> Result<Output> {
    output(
        tokio::process::Command::new(bin("pifleet-agent")?)
            .args(["enroll", "--controller", url, "--token", token, "--config"])
            .arg(dir.join("agent.toml"))
            .args(["--device-id", id]),
    )
    .await
}

/// Asserts a refused enrollment: non-zero exit, a message containing `what`, no files.
fn assert_refused(out: &Output, dir: &Path, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "enrollment succeeded, expected a refusal ({what})"
    );
    assert!(
        stderr.contains(what),
        "expected {what:?} in the error, got: {stderr}"
    );
    assert!(
        !dir.join("agent.toml").exists() && !dir.join("device.crt").exists(),
        "a refused enrollment wrote files into {}",
        dir.display()
    );
    eprintln!("refused as expected: {}", stderr.trim());
}

async fn device_ids(ctl: &Controller) -> Result<Vec<String>> {
    let db = ctl.db().await?;
    let ids = sqlx::query_scalar("SELECT id FROM devices ORDER BY id")
        .fetch_all(&db)
        .await?;
    db.close().await;
    Ok(ids)
}

/// `token list` columns (id, name, state) of the token created with `--name name`.
fn token_row(ctl: &Controller, name: &str) -> Result<[String; 3]> {
    let out = ctl.cli(&["token", "list"])?;
    if !out.status.success() {
        bail!("token list: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let rows: Vec<[String; 3]> = text
        .lines()
        .filter_map(|l| match l.split('\t').collect::<Vec<_>>()[..] {
            [id, n, state] if n == name => Some([id.into(), n.into(), state.into()]),
            _ => None,
        })
        .collect();
    match <[_; 1]>::try_from(rows) {
        Ok([row]) => Ok(row),
        Err(_) => bail!("not exactly one token named {name} in:\n{text}"),
    }
}

/// `token list` state of the token named `name`: unused, used by X, expired, revoked.
fn token_state(ctl: &Controller, name: &str) -> String {
    match token_row(ctl, name) {
        Ok([_, _, state]) => state,
        Err(e) => format!("{e:#}"),
    }
}

// ---------------------------------------------------------------------------------------
// 6. Token refusals through the real agent

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_and_change_nothing() {
    let ctl = Controller::start().await.unwrap();
    let other = Controller::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| -> PathBuf { tmp.path().join(name) };

    // A good token works once …
    let token = ctl.token(Some("pi-first"), "10m").unwrap();
    let out = agent_enroll(&ctl.url(), &token, &dir("first"), "pi-first")
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ctl.log()
    );
    assert!(dir("first").join("device.crt").exists());
    assert_eq!(device_ids(&ctl).await.unwrap(), ["pi-first"]);
    assert_eq!(token_state(&ctl, "pi-first"), "used by pi-first");

    // … and never again.
    let out = agent_enroll(&ctl.url(), &token, &dir("second"), "pi-first")
        .await
        .unwrap();
    assert_refused(&out, &dir("second"), "enrollment token already used");
    assert!(String::from_utf8_lossy(&out.stderr).contains("(403)"));

    // A well-formed token with our CA fingerprint and a secret nobody issued.
    let fingerprint = token.rsplit('.').next().unwrap();
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let unknown = format!("pft1.{secret}.{fingerprint}");
    let out = agent_enroll(&ctl.url(), &unknown, &dir("unknown"), "pi-unknown")
        .await
        .unwrap();
    assert_refused(&out, &dir("unknown"), "unknown enrollment token");

    // An expired token: wait until the clock is past its expiry.
    let expiring = ctl.token(Some("pi-exp"), "1s").unwrap();
    let expires_at: i64 = {
        let db = ctl.db().await.unwrap();
        let v = sqlx::query_scalar("SELECT expires_at FROM enrollment_tokens WHERE name = ?")
            .bind("pi-exp")
            .fetch_one(&db)
            .await
            .unwrap();
        db.close().await;
        v
    };
    wait_for(Duration::from_secs(10), "token expiry", || async {
        (now_ms() > expires_at).then_some(())
    })
    .await
    .unwrap();
    let out = agent_enroll(&ctl.url(), &expiring, &dir("expired"), "pi-exp")
        .await
        .unwrap();
    assert_refused(&out, &dir("expired"), "enrollment token expired");
    assert_eq!(token_state(&ctl, "pi-exp"), "expired");

    // A revoked token.
    let revoked = ctl.token(Some("pi-rvk"), "10m").unwrap();
    let [id, ..] = token_row(&ctl, "pi-rvk").unwrap();
    assert!(ctl.cli(&["token", "revoke", &id]).unwrap().status.success());
    let out = agent_enroll(&ctl.url(), &revoked, &dir("revoked"), "pi-rvk")
        .await
        .unwrap();
    assert_refused(&out, &dir("revoked"), "enrollment token revoked");

    // Another controller's token: its CA fingerprint does not match what this controller
    // presents, so the agent's pinning fails and it sends nothing.
    let foreign = other.token(Some("pi-foreign"), "10m").unwrap();
    let out = agent_enroll(&ctl.url(), &foreign, &dir("foreign"), "pi-foreign")
        .await
        .unwrap();
    assert_refused(&out, &dir("foreign"), "TLS with the controller failed");
    assert_eq!(token_state(&other, "pi-foreign"), "unused");
    assert!(device_ids(&other).await.unwrap().is_empty());

    // Malformed tokens are refused by the agent before any network traffic.
    for bad in [
        "pft1.nothex.nothex".to_owned(),
        token.to_uppercase(),
        format!("{token}.extra"),
        String::from("garbage"),
    ] {
        let out = agent_enroll(&ctl.url(), &bad, &dir("malformed"), "pi-malformed")
            .await
            .unwrap();
        assert_refused(&out, &dir("malformed"), "not a pifleet enrollment token");
    }

    // The controller logged each server-side refusal, and nothing changed.
    let refusals = ctl
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["message"] == "enrollment refused" && e["status"] == 403)
        .count();
    assert_eq!(refusals, 4, "{}", ctl.log());
    assert_eq!(device_ids(&ctl).await.unwrap(), ["pi-first"]);

    // A refused request with a valid token but a bad CSR leaves the token usable.
    let token = ctl.token(Some("pi-later"), "10m").unwrap();
    let r = post_json(
        &ctl.ca_path(),
        ctl.https,
        "/api/v1/enroll",
        &json!({"token": token, "csr": "not a CSR"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(token_state(&ctl, "pi-later"), "unused");
    let out = agent_enroll(&ctl.url(), &token, &dir("later"), "pi-later")
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(device_ids(&ctl).await.unwrap(), ["pi-first", "pi-later"]);
}

// ---------------------------------------------------------------------------------------
// 7. CSR refusals over HTTPS

/// A CSR (ECDSA P-256, like the agent's) with this common name, or none.
fn csr(cn: Option<&str>) -> Result<CertificateSigningRequest> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    if let Some(cn) = cn {
        dn.push(DnType::CommonName, cn);
    }
    params.distinguished_name = dn;
    Ok(params.serialize_request(&KeyPair::generate()?)?)
}

fn csr_pem(cn: Option<&str>) -> Result<String> {
    Ok(csr(cn)?.pem()?)
}

/// A CSR whose last signature byte is flipped: still well-formed DER, signature invalid.
fn csr_bad_signature(cn: &str) -> Result<String> {
    let mut der = csr(Some(cn))?.der().to_vec();
    if let Some(last) = der.last_mut() {
        *last ^= 0x01;
    }
    Ok(pem("CERTIFICATE REQUEST", &der))
}

async fn enroll_request(ctl: &Controller, token: &str, csr: &str) -> Result<Response> {
    post_json(
        &ctl.ca_path(),
        ctl.https,
        "/api/v1/enroll",
        &json!({ "token": token, "csr": csr }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_csrs_are_refused_with_problem_json() {
    let ctl = Controller::start().await.unwrap();
    let token = ctl.token(Some("pi-good"), "10m").unwrap();
    let rsa = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../controller/tests/fixtures/pki/rsa2048.csr.pem"),
    )
    .unwrap();

    let cases: Vec<(&str, String, &str)> = vec![
        ("garbage", "this is not a CSR".into(), "not valid PEM"),
        (
            "garbage DER",
            pem("CERTIFICATE REQUEST", b"\x30\x03garbage"),
            "not a valid PKCS#10",
        ),
        (
            "flipped signature byte",
            csr_bad_signature("pi-good").unwrap(),
            "signature does not verify",
        ),
        ("RSA key", rsa, "weak or unsupported key"),
        (
            "CN not a device id",
            csr_pem(Some("Not_A_Device!")).unwrap(),
            "is not a valid device id",
        ),
        ("no CN", csr_pem(None).unwrap(), "no common name"),
        (
            "CN other than the token's device name",
            csr_pem(Some("pi-other")).unwrap(),
            "does not match the device id",
        ),
    ];
    for (what, csr, expected) in cases {
        let r = enroll_request(&ctl, &token, &csr).await.unwrap();
        assert_eq!(r.status, 400, "{what}: {r:?}");
        assert_eq!(r.content_type, "application/problem+json", "{what}: {r:?}");
        let body = r.json().unwrap();
        assert_eq!(body["status"], 400, "{what}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(expected),
            "{what}: expected {expected:?} in detail {detail:?}"
        );
        eprintln!("{what}: 400 {detail}");
        assert_eq!(token_state(&ctl, "pi-good"), "unused", "{what}");
    }
    assert!(device_ids(&ctl).await.unwrap().is_empty());

    // The token is still good for a proper request.
    let r = enroll_request(&ctl, &token, &csr_pem(Some("pi-good")).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}\n{}", ctl.log());
    let body = r.json().unwrap();
    assert_eq!(body["device_id"], "pi-good");
    assert!(
        body["certificate"]
            .as_str()
            .unwrap_or_default()
            .starts_with("-----BEGIN CERTIFICATE-----"),
        "{body}"
    );
    assert_eq!(token_state(&ctl, "pi-good"), "used by pi-good");
    assert_eq!(device_ids(&ctl).await.unwrap(), ["pi-good"]);
}

// ---------------------------------------------------------------------------------------
// 8. Unsafe data directories

async fn controller_cli(args: &[&str], data: &Path) -> Result<Output> {
    output(
        tokio::process::Command::new(bin("pifleet-controller")?)
            .args(args)
            .arg("--data-dir")
            .arg(data),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_and_serve_refuse_unsafe_data_dirs() {
    let tmp = tempfile::tempdir().unwrap();

    // init refuses a non-empty directory and leaves it alone.
    let occupied = tmp.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("notes.txt"), "keep me").unwrap();
    let out = controller_cli(&["init", "--hostname", "localhost"], &occupied)
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(73), "{stderr}");
    assert!(
        stderr.contains("already exists and is not empty"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(occupied.join("notes.txt")).unwrap(),
        "keep me"
    );
    let entries = std::fs::read_dir(&occupied).unwrap().count();
    assert_eq!(entries, 1, "init wrote into a refused directory");

    // init also refuses an initialised directory, keeping its CA.
    let data = tmp.path().join("data");
    let out = controller_cli(&["init", "--hostname", "localhost"], &data)
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = std::fs::read(data.join("ca.crt")).unwrap();
    let out = controller_cli(&["init", "--hostname", "localhost"], &data)
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(73),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(data.join("ca.crt")).unwrap(), ca);

    // serve refuses a CA key readable by others, naming the file, before binding anything.
    let ca_key = data.join("ca.key");
    std::fs::set_permissions(&ca_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = controller_cli(
        &[
            "serve",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--https-listen",
            "127.0.0.1:0",
        ],
        &data,
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(
        stderr.contains(&ca_key.display().to_string()),
        "error does not name {}: {stderr}",
        ca_key.display()
    );
    assert!(!data.join("serve.json").exists(), "serve bound its ports");
}
