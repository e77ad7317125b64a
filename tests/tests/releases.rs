//! Application releases through the real controller: an operator's API token uploads an
//! archive from another process over HTTPS; the CLI makes one from a git commit; both are
//! numbered per app, signed with the release key and listed; an archive with an entry that
//! would escape the release, or an upload over the limit, is refused with a clear problem
//! and nothing is stored; the same archive twice is a conflict; a viewer cannot upload;
//! deleting is for admins.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use pifleet_shared::release::{SignedManifest, verify_manifest};
use pifleet_shared::signing::TrustedKey;
use pifleet_tests::api::Api;
use pifleet_tests::apikit::{audit, problem};
use pifleet_tests::fleetkit::{get, ok};
use pifleet_tests::harness::{Controller, bin};
use serde_json::json;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A .tar.gz of `dir`'s contents, made with the system tar.
fn targz(dir: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["-czf", "-", "-C"])
        .arg(dir)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_are_made_from_uploads_and_git_and_refused_when_unsafe() {
    let ctl =
        Controller::start_with("[releases]\ngit_allow_file_urls = true\nmax_upload_mib = 1\n")
            .await
            .unwrap();
    let api = Api::new(&ctl).unwrap();
    let admin = api.admin(&ctl).await.unwrap();
    let token = |name: &str, role: &str| {
        let api = &api;
        let admin = admin.clone();
        let body = json!({ "name": name, "role": role });
        async move {
            ok(
                api.post("/api/v1/api-tokens", Some(&admin), &body)
                    .await
                    .unwrap(),
                201,
                "token",
            )["token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let ci = token("ci", "operator").await;
    let viewer = token("watch", "viewer").await;

    // An app tree: a script, a nested folder, a link.
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("bin")).unwrap();
    std::fs::write(src.path().join("bin/run.sh"), "#!/bin/sh\necho hello\n").unwrap();
    std::os::unix::fs::symlink("bin/run.sh", src.path().join("start")).unwrap();
    let archive = targz(src.path());

    let path = "/api/v1/releases?app=web&version=1.0.0&arches=aarch64,armv7l&soak_s=5";
    let r1 = ok(
        api.post_bytes(path, Some(&ci), archive.clone())
            .await
            .unwrap(),
        201,
        "upload",
    );
    assert_eq!(r1["app"], "web");
    assert_eq!(r1["release"], 1);
    assert_eq!(r1["source"], "upload");
    assert_eq!(r1["created_by"], "token:ci");
    assert_eq!(r1["arches"], json!(["aarch64", "armv7l"]));
    assert_eq!(r1["soak_s"], 5);

    // The stored manifest verifies against the release key devices pin, and lists the tree.
    let digest = r1["manifest_sha256"].as_str().unwrap();
    let bytes = std::fs::read(ctl.data.join(format!("releases/{digest}.manifest"))).unwrap();
    let signed: SignedManifest = postcard::from_bytes(&bytes).unwrap();
    let pinned =
        TrustedKey::from_pem(&std::fs::read_to_string(ctl.data.join("release.pub")).unwrap())
            .unwrap();
    let manifest = verify_manifest(&signed, &[pinned]).unwrap();
    let paths: Vec<&str> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["bin", "bin/run.sh", "start"], "{paths:?}");

    // The same archive again is a conflict naming the release; nothing new is made.
    let doc = problem(
        &api.post_bytes(path, Some(&ci), archive.clone())
            .await
            .unwrap(),
        409,
        "same archive",
    );
    assert!(
        doc["detail"].as_str().unwrap().contains("release 1"),
        "{doc}"
    );

    // A viewer cannot upload.
    problem(
        &api.post_bytes(path, Some(&viewer), archive.clone())
            .await
            .unwrap(),
        403,
        "viewer uploads",
    );

    // An entry that would climb out of the release is refused, naming it; nothing stored.
    let evil = tempfile::tempdir().unwrap();
    std::fs::write(evil.path().join("ok.txt"), "fine").unwrap();
    let evil_tar = Command::new("tar")
        .args(["-czf", "-", "-C"])
        .arg(evil.path())
        .args(["--transform", "s,ok.txt,../escape.txt,", "ok.txt"])
        .output()
        .unwrap();
    assert!(evil_tar.status.success(), "{evil_tar:?}");
    let doc = problem(
        &api.post_bytes(path, Some(&ci), evil_tar.stdout)
            .await
            .unwrap(),
        400,
        "path traversal",
    );
    assert!(
        doc["detail"].as_str().unwrap().contains("escape.txt"),
        "{doc}"
    );
    // Not an archive at all.
    problem(
        &api.post_bytes(path, Some(&ci), b"hello".to_vec())
            .await
            .unwrap(),
        400,
        "not an archive",
    );
    // Over the 1 MiB upload limit: 413, and the connection is closed.
    let big = vec![0u8; 1024 * 1024 + 1];
    let r = api.post_bytes(path, Some(&ci), big).await.unwrap();
    assert_eq!(r.status, 413, "{}", r.text);
    let listed = get(&api, &ci, "/api/v1/releases").await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let left: Vec<String> = std::fs::read_dir(ctl.data.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "temp files left behind: {left:?}");

    // From git, with the CLI: release 2 of the same app.
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(repo.path()))
    };
    git(&["init", "-q"]);
    std::fs::write(repo.path().join("app.py"), "print('v2')\n").unwrap();
    git(&["add", "app.py"]);
    git(&["commit", "-q", "-m", "v2"]);
    let sha = git(&["rev-parse", "HEAD"]).trim().to_owned();
    let url = format!("file://{}", repo.path().display());
    let out = run(Command::new(bin("pifleet-controller").unwrap())
        .args([
            "release",
            "create",
            "web",
            "--version",
            "2.0.0",
            "--git",
            &url,
            "--rev",
            &sha,
        ])
        .arg("--data-dir")
        .arg(&ctl.data));
    let fields: Vec<&str> = out.trim().split('\t').collect();
    assert_eq!(&fields[1..3], ["web", "2"], "{out}");
    let r2 = get(&api, &ci, &format!("/api/v1/releases/{}", fields[0])).await;
    assert_eq!(r2["source"], "git");
    assert_eq!(r2["source_rev"], sha.as_str());

    // A short revision is the caller's mistake (exit 64), and nothing is made.
    let out = Command::new(bin("pifleet-controller").unwrap())
        .args([
            "release",
            "create",
            "web",
            "--version",
            "3",
            "--git",
            &url,
            "--rev",
            &sha[..8],
        ])
        .arg("--data-dir")
        .arg(&ctl.data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert_eq!(
        get(&api, &ci, "/api/v1/releases?app=web")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // From a build pipeline: the CLI against the controller's API, with an operator token
    // from the environment and the controller pinned by its CA's fingerprint.
    let ca_der = {
        let pem = std::fs::read_to_string(ctl.data.join("ca.crt")).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap()
    };
    let fpr = pifleet_io::pinned::fingerprint(&ca_der);
    let url = format!("https://localhost:{}", ctl.https.port());
    std::fs::write(src.path().join("v3.txt"), "three").unwrap();
    let v3 = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(v3.path(), targz(src.path())).unwrap();
    let remote = |token: &str, fingerprint: &str| {
        Command::new(bin("pifleet-controller").unwrap())
            .args(["release", "create", "web", "--version", "3.0.0"])
            .arg(v3.path())
            .args(["--url", &url, "--ca-fingerprint", fingerprint])
            .env("PIFLEET_API_TOKEN", token)
            .output()
            .unwrap()
    };
    let out = remote(&ci, &fpr);
    assert!(out.status.success(), "{out:?}");
    let fields: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split('\t')
        .map(str::to_owned)
        .collect();
    assert_eq!(fields[1..3], ["web", "3"], "{fields:?}");
    // A viewer's token is refused (exit 77), a wrong fingerprint never reaches the API.
    let out = remote(&viewer, &fpr);
    assert_eq!(out.status.code(), Some(77), "{out:?}");
    let out = remote(&ci, &"0".repeat(64));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fingerprint"),
        "{out:?}"
    );
    assert_eq!(
        get(&api, &ci, "/api/v1/releases?app=web")
            .await
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // The pipeline then starts a rollout of the newest release, over HTTPS too. The device
    // is seeded with what its agent would report: it allowlists `web`.
    let db = ctl.db_rw().await.unwrap();
    sqlx::query(
        "INSERT INTO devices (id, labels, enrolled_at, arch, apps) VALUES ('pi-ci', \
         '{\"channel\":\"beta\"}', 1, 'aarch64', \
         '[{\"app\":\"web\",\"unit\":\"web.service\",\"current\":null,\"current_dir\":null,\"kept\":[]}]')",
    )
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    let rollout = |token: &str, args: &[&str]| {
        Command::new(bin("pifleet-controller").unwrap())
            .arg("rollout")
            .args(args)
            .args(["--url", &url, "--ca-fingerprint", &fpr])
            .env("PIFLEET_API_TOKEN", token)
            .output()
            .unwrap()
    };
    let start = [
        "create",
        "--app",
        "web",
        "--label",
        "channel=beta",
        "--json",
    ];
    let out = rollout(&viewer, &start);
    assert_eq!(
        out.status.code(),
        Some(77),
        "a viewer cannot start one: {out:?}"
    );
    let out = rollout(&ci, &start);
    assert!(out.status.success(), "{out:?}");
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["release"], 3, "{made}");
    assert_eq!(made["rollout"]["rollout"]["status"], "running", "{made}");
    assert_eq!(
        made["rollout"]["rollout"]["created_by"], "token:ci",
        "{made}"
    );
    assert_eq!(made["plan"][0]["device"], "pi-ci", "{made}");
    let rollout_id = made["rollout"]["rollout"]["id"].as_i64().unwrap();
    // The release it uses cannot be deleted while it runs.
    let in_use = format!("/api/v1/releases/{}", made["release_id"]);
    let r = api
        .call(reqwest::Method::DELETE, &in_use, Some(&admin), None)
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.text);
    // Revoked, the token stops working at its next request.
    let tokens = get(&api, &admin, "/api/v1/api-tokens").await;
    let ci_id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = rollout(&ci, &["show", &rollout_id.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let r = api
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/api-tokens/{ci_id}"),
            Some(&admin),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text);
    let out = rollout(&ci, &["show", &rollout_id.to_string()]);
    assert_eq!(out.status.code(), Some(77), "revoked: {out:?}");

    // Deleting is for admins.
    let id = r1["id"].as_i64().unwrap();
    let del = format!("/api/v1/releases/{id}");
    let operator = token("ci2", "operator").await;
    let r = api
        .call(reqwest::Method::DELETE, &del, Some(&operator), None)
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text);
    let r = api
        .call(reqwest::Method::DELETE, &del, Some(&admin), None)
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text);
    problem(&api.get(&del, Some(&admin)).await.unwrap(), 404, "deleted");
    let created = audit(&api, &admin, Some("release.create"), &[]).await;
    assert!(
        created
            .iter()
            .any(|e| e["actor"] == "token:ci" && e["outcome"] == "ok"),
        "{created:?}"
    );
}
