//! A controller signing with an intermediate CA whose root stays offline, made with the
//! `openssl` commands docs/OPERATIONS.md gives: `init --ca-cert/--ca-key` takes it, enrollment
//! tokens pin the root, an agent enrolls, streams and runs nothing it should not, a
//! revocation (a CRL the intermediate signs) keeps it out; `init` refuses a chain that does
//! not lead to a root and leaves no data dir behind. `rotate ca` moves the controller to a
//! new intermediate from the same root: enrolled devices keep working, new ones get
//! certificates of the new CA, the previous CA's CRL still keeps its revoked devices out,
//! and `--finish` waits for the devices that still depend on it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pifleet_tests::harness::{Agent, Controller, bin, wait_for};
use pifleet_tests::mqtt::{connack, session};
use sha2::{Digest, Sha256};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An offline root and an intermediate under it, as an operator would make them.
fn make_pki(dir: &Path, root_name: &str) {
    std::fs::write(
        dir.join("ca.ext"),
        "[req]\ndistinguished_name = dn\n[dn]\n\
         [root]\nbasicConstraints = critical,CA:TRUE,pathlen:1\nkeyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n\
         [intermediate]\nbasicConstraints = critical,CA:TRUE,pathlen:0\nkeyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n",
    )
    .unwrap();
    let root_key = format!("{root_name}.key");
    let root_crt = format!("{root_name}.crt");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &root_key,
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &root_key,
            "-subj",
            &format!("/CN={root_name}"),
            "-days",
            "3650",
            "-config",
            "ca.ext",
            "-extensions",
            "root",
            "-out",
            &root_crt,
        ],
    );
    make_intermediate(dir, root_name, "intermediate", "pifleet site intermediate");
}

/// An intermediate `name` (`name.crt`, `name.key`, and `name-chain.pem` with the root)
/// signed by the root `root_name` of [`make_pki`].
fn make_intermediate(dir: &Path, root_name: &str, name: &str, cn: &str) {
    let (root_key, root_crt) = (format!("{root_name}.key"), format!("{root_name}.crt"));
    let (key, csr, crt) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    let subj = format!("/CN={cn}");
    let genpkey = "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out";
    openssl(
        dir,
        &[genpkey.split(' ').collect(), vec![key.as_str()]].concat(),
    );
    let req = [
        "req", "-new", "-key", &key, "-subj", &subj, "-config", "ca.ext", "-out", &csr,
    ];
    openssl(dir, &req);
    let x509 = "x509 -req -days 1825 -extfile ca.ext -extensions intermediate -in";
    let tail = [
        csr.as_str(),
        "-CA",
        &root_crt,
        "-CAkey",
        &root_key,
        "-out",
        &crt,
    ];
    openssl(dir, &[x509.split(' ').collect(), tail.to_vec()].concat());
    std::fs::write(
        dir.join(format!("{name}-chain.pem")),
        [
            std::fs::read(dir.join(&crt)).unwrap(),
            std::fs::read(dir.join(&root_crt)).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
}

/// Stops the controller with agents connected: every task stops when asked (none is
/// left for the drain time to cut off).
fn stop_cleanly(ctl: &mut Controller) {
    assert_eq!(ctl.stop().map(|s| s.success()), Some(true));
    let log = ctl.log();
    assert!(!log.contains("did not stop within the drain time"), "{log}");
}

/// The issuer's common name of an agent's certificate.
fn issuer(agent: &Agent) -> String {
    let cert = std::fs::read(agent.cert()).unwrap();
    let der = rustls_pemfile::certs(&mut cert.as_slice())
        .next()
        .unwrap()
        .unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    parsed.issuer().to_string()
}

async fn streaming(ctl: &Controller, agent: &Agent, id: &str, more_than: usize) {
    wait_for(
        Duration::from_secs(30),
        &format!("telemetry from {id}"),
        || async { (ctl.seqs(id).await.ok()?.len() > more_than).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", ctl.log(), agent.log()));
}

fn der_fingerprint(pem_path: &Path) -> String {
    let pem = std::fs::read(pem_path).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    hex::encode(Sha256::digest(&der))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_signs_with_an_intermediate_and_devices_pin_the_root() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path(), "offline-root");
    let chain = pki.path().join("chain.pem");
    std::fs::write(
        &chain,
        [
            std::fs::read(pki.path().join("intermediate.crt")).unwrap(),
            std::fs::read(pki.path().join("offline-root.crt")).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let key = pki.path().join("intermediate.key");
    let ctl = Controller::start_init(
        &[
            OsStr::new("--ca-cert"),
            chain.as_os_str(),
            OsStr::new("--ca-key"),
            key.as_os_str(),
        ],
        "[pki]\ncrl_check_s = 1\n",
    )
    .await
    .unwrap();

    // The token pins the root; the root's key is not in the data dir.
    let token = ctl.token(Some("pi-int-1"), "1h").unwrap();
    let root_fp = der_fingerprint(&pki.path().join("offline-root.crt"));
    assert!(token.ends_with(&root_fp), "{token} does not pin {root_fp}");
    let root_key = std::fs::read_to_string(pki.path().join("offline-root.key")).unwrap();
    for entry in std::fs::read_dir(&ctl.data).unwrap() {
        let path = entry.unwrap().path();
        if let Ok(text) = std::fs::read_to_string(&path) {
            assert!(
                !text.contains(root_key.trim()),
                "{} holds the root key",
                path.display()
            );
        }
    }

    // A device enrolls, connects and streams under the intermediate.
    let mut agent = Agent::enroll(&ctl, "pi-int-1", 1).unwrap();
    agent.start().unwrap();
    wait_for(
        Duration::from_secs(30),
        "telemetry from pi-int-1",
        || async { (ctl.seqs("pi-int-1").await.ok()?.len() >= 2).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", ctl.log(), agent.log()));
    // Its certificate was issued by the intermediate.
    let cert = std::fs::read(agent.cert()).unwrap();
    let der = rustls_pemfile::certs(&mut cert.as_slice())
        .next()
        .unwrap()
        .unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(parsed.issuer().to_string(), "CN=pifleet site intermediate");

    // Revoked: the intermediate's CRL keeps it out.
    ctl.revoke("pi-int-1").unwrap();
    wait_for(Duration::from_secs(15), "pi-int-1 refused", || async {
        let (_c, mut ev) = session(&ctl, &agent, "pi-int-1").ok()?;
        connack(&mut ev).await.is_err().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
    agent.stop();
}

#[test]
fn init_refuses_a_chain_that_does_not_lead_to_its_root() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path(), "offline-root");
    // A second root that did not sign the intermediate.
    let other = pki.path().join("other");
    std::fs::create_dir(&other).unwrap();
    make_pki(&other, "other-root");
    let init = |chain: &[&Path], key: &Path| {
        let file = pki.path().join("given.pem");
        let text: Vec<u8> = chain
            .iter()
            .flat_map(|p| std::fs::read(p).unwrap())
            .collect();
        std::fs::write(&file, text).unwrap();
        let data = pki.path().join("data");
        let out = Command::new(bin("pifleet-controller").unwrap())
            .args(["init", "--data-dir"])
            .arg(&data)
            .arg("--ca-cert")
            .arg(&file)
            .arg("--ca-key")
            .arg(key)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(!data.exists(), "a refused init left {}", data.display());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let int = pki.path().join("intermediate.crt");
    let key = pki.path().join("intermediate.key");
    let err = init(&[&int], &key);
    assert!(err.contains("not a self-signed root"), "{err}");
    let err = init(&[&int, &other.join("other-root.crt")], &key);
    assert!(err.contains("not signed by the next one"), "{err}");
    let err = init(
        &[&int, &pki.path().join("offline-root.crt")],
        &other.join("intermediate.key"),
    );
    assert!(err.contains("does not match"), "{err}");
    // The clap pairing: a certificate without its key is refused before anything happens.
    let out = Command::new(bin("pifleet-controller").unwrap())
        .args(["init", "--data-dir"])
        .arg(pki.path().join("data"))
        .arg("--ca-cert")
        .arg(&int)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_intermediate_from_the_same_root_replaces_the_ca_without_reenrolling() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path(), "offline-root");
    make_intermediate(
        pki.path(),
        "offline-root",
        "second",
        "pifleet second intermediate",
    );
    let arg = |name: &str| pki.path().join(name).into_os_string();
    let (first_chain, first_key) = (arg("intermediate-chain.pem"), arg("intermediate.key"));
    let mut ctl = Controller::start_init(
        &[
            OsStr::new("--ca-cert"),
            &first_chain,
            OsStr::new("--ca-key"),
            &first_key,
        ],
        "[pki]\ncrl_check_s = 1\n",
    )
    .await
    .unwrap();
    let mut old = Agent::enroll(&ctl, "pi-old", 1).unwrap();
    old.set_backoff_max(1).unwrap();
    old.start().unwrap();
    streaming(&ctl, &old, "pi-old", 1).await;
    let cli = |ctl: &Controller, args: &[&str]| {
        let out = ctl.cli(args).unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (second_chain, second_key) = (arg("second-chain.pem"), arg("second.key"));
    let rotate_args = [
        "rotate",
        "ca",
        "--ca-cert",
        second_chain.to_str().unwrap(),
        "--ca-key",
        second_key.to_str().unwrap(),
    ];
    // Not while a controller serves the data dir.
    let (ok, text) = cli(&ctl, &rotate_args);
    assert!(!ok && text.contains("stop it"), "{text}");

    stop_cleanly(&mut ctl);
    // Another root is refused: devices pin this one.
    let stranger = pki.path().join("stranger");
    std::fs::create_dir(&stranger).unwrap();
    make_pki(&stranger, "stranger-root");
    let (ok, text) = cli(
        &ctl,
        &[
            "rotate",
            "ca",
            "--ca-cert",
            stranger.join("intermediate-chain.pem").to_str().unwrap(),
            "--ca-key",
            stranger.join("intermediate.key").to_str().unwrap(),
        ],
    );
    assert!(!ok && text.contains("another root"), "{text}");
    let (ok, text) = cli(&ctl, &rotate_args);
    assert!(ok, "{text}");
    let (ok, text) = cli(&ctl, &rotate_args);
    assert!(!ok && text.contains("not finished"), "{text}");
    ctl.serve().await.unwrap();

    // The enrolled device reconnects with the certificate it holds and streams on.
    let before = ctl.seqs("pi-old").await.unwrap().len();
    streaming(&ctl, &old, "pi-old", before + 1).await;
    assert_eq!(issuer(&old), "CN=pifleet site intermediate");
    // A new device gets a certificate of the new CA.
    let mut new = Agent::enroll(&ctl, "pi-new", 1).unwrap();
    new.start().unwrap();
    streaming(&ctl, &new, "pi-new", 1).await;
    assert_eq!(issuer(&new), "CN=pifleet second intermediate");

    // Finishing now would lock pi-old out: refused, naming it.
    stop_cleanly(&mut ctl);
    let (ok, text) = cli(&ctl, &["rotate", "ca", "--finish"]);
    assert!(!ok && text.contains("pi-old"), "{text}");
    ctl.serve().await.unwrap();
    // Revoked, pi-old stays out: the previous CA's CRL lists it.
    ctl.revoke("pi-old").unwrap();
    wait_for(Duration::from_secs(15), "pi-old refused", || async {
        let (_c, mut ev) = session(&ctl, &old, "pi-old").ok()?;
        connack(&mut ev).await.is_err().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", ctl.log()));
    old.stop();

    // Nothing depends on the previous CA any more: the rotation ends, its key is gone.
    stop_cleanly(&mut ctl);
    let (ok, text) = cli(&ctl, &["rotate", "ca", "--finish"]);
    assert!(ok, "{text}");
    assert!(!ctl.data.join("ca-previous.key").exists());
    ctl.serve().await.unwrap();
    let before = ctl.seqs("pi-new").await.unwrap().len();
    streaming(&ctl, &new, "pi-new", before + 1).await;
    new.stop();
}
