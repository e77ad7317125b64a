//! A controller signing with an intermediate CA whose root stays offline, made with the
//! `openssl` commands docs/OPERATIONS.md gives: `init --ca-cert/--ca-key` takes it, enrollment
//! tokens pin the root, an agent enrolls, streams and runs nothing it should not, a
//! revocation (a CRL the intermediate signs) keeps it out; `init` refuses a chain that does
//! not lead to a root and leaves no data dir behind.

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
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "intermediate.key",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "intermediate.key",
            "-subj",
            "/CN=pifleet site intermediate",
            "-config",
            "ca.ext",
            "-out",
            "intermediate.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "intermediate.csr",
            "-CA",
            &root_crt,
            "-CAkey",
            &root_key,
            "-days",
            "1825",
            "-extfile",
            "ca.ext",
            "-extensions",
            "intermediate",
            "-out",
            "intermediate.crt",
        ],
    );
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
