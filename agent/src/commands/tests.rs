//! The handler end to end in-process: real keys, real signatures, the real journal and fake
//! executables; receipts are captured instead of published.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use pifleet_shared::command::{KeyId, ServiceOp, SignedReceipt};
use pifleet_shared::signing::{CommandSigner, DeviceKeyAlg, verify_receipt};

use super::*;

const DEVICE: &str = "pi-01";

#[derive(Default)]
struct Recorder {
    offline: AtomicBool,
    sent: Mutex<Vec<Vec<u8>>>,
}

impl Sink for Recorder {
    fn try_send(&self, payload: Vec<u8>) -> bool {
        if self.offline.load(Ordering::SeqCst) {
            return false;
        }
        self.sent.lock().unwrap().push(payload);
        true
    }
}

struct Rig {
    dir: tempfile::TempDir,
    signer: CommandSigner,
    device_key: rcgen::KeyPair,
    sink: Arc<Recorder>,
    interval: watch::Receiver<u32>,
    cfg: CommandsConfig,
}

impl Rig {
    fn new(edit: impl FnOnce(&mut CommandsConfig, &Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let mut cfg = CommandsConfig {
            path: bin.display().to_string(),
            state_dir: dir.path().join("commands"),
            ..CommandsConfig::default()
        };
        edit(&mut cfg, dir.path());
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Self {
            signer: CommandSigner::from_pkcs8_pem(&kp.serialize_pem()).unwrap(),
            device_key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            sink: Arc::new(Recorder::default()),
            interval: watch::channel(10).1,
            dir,
            cfg,
        }
    }

    fn fake(&self, name: &str, body: &str) -> String {
        let p = self.dir.path().join("bin").join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.display().to_string()
    }

    fn start(&mut self, shutdown: CancellationToken) -> Commands {
        let kp = rcgen::KeyPair::from_pem(&self.device_key.serialize_pem()).unwrap();
        let settings = Settings {
            cfg: self.cfg.clone(),
            device: DEVICE.into(),
            keys: vec![TrustedKey::from_pem(&public_pem(&self.signer)).unwrap()],
            key_file: self.dir.path().join("command.pub"),
            signer: DeviceSigner::from_pkcs8_pem(&kp.serialize_pem()).unwrap(),
            deploys: None,
        };
        let (tx, rx) = watch::channel(10);
        self.interval = rx;
        let c = Commands::start(settings, self.sink.clone(), tx, shutdown).unwrap();
        c.set_connected(true);
        c
    }

    fn envelope(&self, n: u8, action: Action) -> Envelope {
        let now = clock_ms();
        Envelope {
            id: CommandId([n; 16]),
            device: DEVICE.into(),
            issued_at_ms: now,
            expires_at_ms: now + 60_000,
            key_id: self.signer.id(),
            action,
        }
    }

    fn signed(&self, env: &Envelope) -> Vec<u8> {
        codec::encode(Kind::Cmd, &self.signer.sign(env).unwrap()).unwrap()
    }

    /// Every receipt so far, with its signature checked against the device key.
    fn receipts(&self) -> Vec<Receipt> {
        self.sink
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|p| {
                let signed: SignedReceipt = codec::decode(Kind::Result, p).unwrap();
                verify_receipt(
                    &signed,
                    DeviceKeyAlg::EcdsaP256,
                    self.device_key.public_key_raw(),
                )
                .unwrap()
            })
            .collect()
    }

    fn outcomes(&self, n: u8) -> Vec<Outcome> {
        self.receipts()
            .into_iter()
            .filter(|r| r.command == CommandId([n; 16]))
            .map(|r| r.outcome)
            .collect()
    }

    /// Waits (bounded) until `n` final receipts for command `id` byte `n` arrived.
    async fn until(&self, what: impl Fn(&Self) -> bool) {
        let t = Instant::now();
        while !what(self) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "timed out; receipts: {:#?}",
                self.receipts()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The SPKI PEM of a command signer's public key.
fn public_pem(s: &CommandSigner) -> String {
    use base64::Engine;
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(s.verifying_key().as_bytes());
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
}

fn finals(o: &[Outcome]) -> usize {
    o.iter().filter(|o| o.is_final()).count()
}

#[tokio::test]
async fn ping_is_accepted_run_and_answered_with_signed_receipts() {
    let mut rig = Rig::new(|_, _| {});
    let c = rig.start(CancellationToken::new());
    c.submit(&rig.signed(&rig.envelope(1, Action::Ping)));
    rig.until(|r| finals(&r.outcomes(1)) == 1).await;
    assert_eq!(
        rig.outcomes(1),
        vec![Outcome::Accepted, Outcome::Running, Outcome::Succeeded]
    );
    let last = rig.receipts().pop().unwrap();
    assert_eq!(last.device, DEVICE);
    assert_eq!(last.stdout, exec::output_of(b"pong"));
    assert!(last.at_ms > 0);
}

#[tokio::test]
async fn duplicate_delivery_runs_once() {
    let mut rig = Rig::new(|_, _| {});
    let log = rig.dir.path().join("runs.log");
    let script = rig.fake("count", &format!("echo run >> {}", log.display()));
    rig.cfg.scripts.insert(
        "count".into(),
        ScriptConfig {
            argv: vec![script],
            allowed_args: vec![],
        },
    );
    let c = rig.start(CancellationToken::new());
    let cmd = rig.signed(&rig.envelope(
        2,
        Action::RunScript {
            name: "count".into(),
            args: vec![],
        },
    ));
    c.submit(&cmd);
    c.submit(&cmd);
    rig.until(|r| finals(&r.outcomes(2)) == 2).await;
    let o = rig.outcomes(2);
    assert!(o.contains(&Outcome::Succeeded), "{o:?}");
    assert!(
        o.iter()
            .any(|o| matches!(o, Outcome::Rejected(m) if m.starts_with("replayed: "))),
        "{o:?}"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "run\n");
}

#[tokio::test]
async fn refused_commands_are_reported_and_never_run() {
    let mut rig = Rig::new(|cfg, _| cfg.services = vec!["kiosk.service".into()]);
    let marker = rig.dir.path().join("ran");
    rig.fake("systemctl", &format!("echo ran > {}", marker.display()));
    let c = rig.start(CancellationToken::new());
    let other = CommandSigner::from_pkcs8_pem(
        &rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .serialize_pem(),
    )
    .unwrap();
    let svc = |unit: &str| Action::Service {
        unit: unit.into(),
        op: ServiceOp::Restart,
    };
    let mut expired = rig.envelope(13, svc("kiosk.service"));
    expired.issued_at_ms -= 120_000;
    expired.expires_at_ms -= 120_000;
    let mut wrong_device = rig.envelope(14, svc("kiosk.service"));
    wrong_device.device = "pi-02".into();
    let mut tampered = other.sign(&rig.envelope(15, svc("kiosk.service"))).unwrap();
    tampered.key_id = rig.signer.id();
    let mut forged_key_id = rig.envelope(16, svc("kiosk.service"));
    forged_key_id.key_id = KeyId([9; 8]);
    let table: Vec<(&str, Vec<u8>, CommandId, &str)> = vec![
        ("garbage", vec![1, 2, 3], UNKNOWN_ID, "malformed: "),
        ("empty", vec![], UNKNOWN_ID, "malformed: "),
        (
            "oversize",
            vec![1; Kind::Cmd.max_payload() + 1],
            UNKNOWN_ID,
            "oversize: ",
        ),
        (
            "unknown key",
            codec::encode(
                Kind::Cmd,
                &other.sign(&rig.envelope(11, Action::Ping)).unwrap(),
            )
            .unwrap(),
            // Unverified ids are never reported: a forger could copy a real one.
            UNKNOWN_ID,
            "unknown_key: ",
        ),
        (
            "bad signature",
            codec::encode(Kind::Cmd, &tampered).unwrap(),
            UNKNOWN_ID,
            "bad_signature: ",
        ),
        (
            "key id inside differs",
            rig.signed(&forged_key_id),
            UNKNOWN_ID,
            "bad_signature: ",
        ),
        (
            "unit not allowlisted",
            rig.signed(&rig.envelope(12, svc("ssh.service"))),
            CommandId([12; 16]),
            "not_allowed: ",
        ),
        (
            "reboot disabled",
            rig.signed(&rig.envelope(17, Action::Reboot)),
            CommandId([17; 16]),
            "not_allowed: ",
        ),
        (
            "expired",
            rig.signed(&expired),
            CommandId([13; 16]),
            "expired: ",
        ),
        (
            "other device",
            rig.signed(&wrong_device),
            CommandId([14; 16]),
            "wrong_device: ",
        ),
    ];
    let n = table.len();
    for (_, bytes, _, _) in &table {
        c.submit(bytes);
    }
    rig.until(|r| r.receipts().len() == n).await;
    let receipts = rig.receipts();
    for (i, (name, _, id, reason)) in table.iter().enumerate() {
        let r = &receipts[i];
        assert_eq!(r.command, *id, "{name}");
        assert!(
            matches!(&r.outcome, Outcome::Rejected(m) if m.starts_with(reason)),
            "{name}: {:?}",
            r.outcome
        );
    }
    assert!(!marker.exists(), "a refused command ran");
    let journal = std::fs::read_to_string(rig.cfg.state_dir.join("journal")).unwrap();
    assert!(!journal.contains("\nA "), "{journal}");
}

#[tokio::test]
async fn a_command_cut_short_by_restart_is_reported_failed_and_never_rerun() {
    let mut rig = Rig::new(|_, _| {});
    let log = rig.dir.path().join("runs.log");
    let script = rig.fake(
        "slow",
        &format!("echo run >> {}\n/bin/sleep 30", log.display()),
    );
    rig.cfg.scripts.insert(
        "slow".into(),
        ScriptConfig {
            argv: vec![script],
            allowed_args: vec![],
        },
    );
    let cmd = rig.signed(&rig.envelope(
        3,
        Action::RunScript {
            name: "slow".into(),
            args: vec![],
        },
    ));
    let stop = CancellationToken::new();
    let c = rig.start(stop.clone());
    c.submit(&cmd);
    rig.until(|r| r.outcomes(3).contains(&Outcome::Running))
        .await;
    // "running" is sent when the process starts, which may be before the script's first
    // line has run: cut it short only once it has.
    rig.until(|_| std::fs::read_to_string(&log).is_ok_and(|t| t == "run\n"))
        .await;
    stop.cancel();
    c.join().await;
    assert_eq!(finals(&rig.outcomes(3)), 0);

    // Restart, offline at first: the report waits for the link.
    rig.sink.sent.lock().unwrap().clear();
    rig.sink.offline.store(true, Ordering::SeqCst);
    let c = rig.start(CancellationToken::new());
    c.submit(&cmd);
    rig.until(|_| c.pending_receipts() == 2).await;
    rig.sink.offline.store(false, Ordering::SeqCst);
    c.set_connected(true);
    rig.until(|r| finals(&r.outcomes(3)) == 2).await;
    let o = rig.outcomes(3);
    assert_eq!(o[0], Outcome::Failed("interrupted by agent restart".into()));
    assert!(matches!(&o[1], Outcome::Rejected(m) if m.starts_with("replayed")));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "run\n");

    // Reported once: a further restart has nothing left to say.
    let journal = rig.cfg.state_dir.join("journal");
    let finished = format!("\nF {} ", CommandId([3; 16]));
    rig.until(|_| std::fs::read_to_string(&journal).is_ok_and(|t| t.contains(&finished)))
        .await;
    drop(c);
    rig.sink.sent.lock().unwrap().clear();
    let c = rig.start(CancellationToken::new());
    c.submit(&rig.signed(&rig.envelope(4, Action::Ping)));
    rig.until(|r| finals(&r.outcomes(4)) == 1).await;
    assert!(rig.outcomes(3).is_empty());
}

#[tokio::test]
async fn offline_keeps_final_receipts_and_drops_progress() {
    let mut rig = Rig::new(|_, _| {});
    let c = rig.start(CancellationToken::new());
    c.set_connected(false);
    c.submit(&rig.signed(&rig.envelope(5, Action::Ping)));
    rig.until(|_| c.pending_receipts() == 1).await;
    assert!(rig.receipts().is_empty());
    c.set_connected(true);
    assert_eq!(rig.outcomes(5), vec![Outcome::Succeeded]);
}

#[tokio::test]
async fn set_interval_reaches_the_telemetry_loop() {
    let mut rig = Rig::new(|cfg, _| cfg.set_interval = true);
    let c = rig.start(CancellationToken::new());
    c.submit(&rig.signed(&rig.envelope(6, Action::SetInterval { seconds: 30 })));
    c.submit(&rig.signed(&rig.envelope(7, Action::SetInterval { seconds: 4 })));
    rig.until(|r| finals(&r.outcomes(6)) + finals(&r.outcomes(7)) == 2)
        .await;
    assert_eq!(*rig.interval.borrow(), 30);
    assert!(
        matches!(rig.outcomes(7).as_slice(), [Outcome::Rejected(m)] if m.starts_with("not_allowed"))
    );
}

#[tokio::test]
async fn operations_on_one_unit_are_serialized_others_overlap() {
    let mut rig = Rig::new(|cfg, _| {
        cfg.services = vec!["a.service".into(), "b.service".into()];
        cfg.workers = 2;
    });
    let log = rig.dir.path().join("calls.log");
    rig.fake(
        "systemctl",
        &format!(
            "echo \"begin $1 $2 $3\" >> {l}\n/bin/sleep 0.3\necho \"end $3\" >> {l}",
            l = log.display()
        ),
    );
    let c = rig.start(CancellationToken::new());
    let svc = |unit: &str, op| Action::Service {
        unit: unit.into(),
        op,
    };
    c.submit(&rig.signed(&rig.envelope(8, svc("a.service", ServiceOp::Stop))));
    c.submit(&rig.signed(&rig.envelope(9, svc("a.service", ServiceOp::Start))));
    rig.until(|r| finals(&r.outcomes(8)) + finals(&r.outcomes(9)) == 2)
        .await;
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        calls,
        "begin stop -- a.service\nend a.service\nbegin start -- a.service\nend a.service\n"
    );
    std::fs::remove_file(&log).unwrap();
    c.submit(&rig.signed(&rig.envelope(10, svc("a.service", ServiceOp::Restart))));
    c.submit(&rig.signed(&rig.envelope(11, svc("b.service", ServiceOp::Restart))));
    rig.until(|r| finals(&r.outcomes(10)) + finals(&r.outcomes(11)) == 2)
        .await;
    let calls = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<_> = calls.lines().map(|l| &l[..3]).collect();
    assert_eq!(lines, vec!["beg", "beg", "end", "end"], "{calls}");
}

#[tokio::test]
async fn reboot_sends_success_first_then_reboots() {
    let mut rig = Rig::new(|cfg, _| cfg.reboot = true);
    let log = rig.dir.path().join("reboot.log");
    rig.fake("systemctl", &format!("echo \"$@\" >> {}", log.display()));
    let c = rig.start(CancellationToken::new());
    c.submit(&rig.signed(&rig.envelope(12, Action::Reboot)));
    rig.until(|r| finals(&r.outcomes(12)) == 1).await;
    assert!(!log.exists(), "rebooted before the delay");
    let t = Instant::now();
    rig.until(|_| log.exists()).await;
    assert!(t.elapsed() >= REBOOT_DELAY - Duration::from_millis(200));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "reboot\n");
    assert_eq!(rig.outcomes(12).last(), Some(&Outcome::Succeeded));
    drop(c);
}

/// `env` signed by `s` (its key id set), encoded for `down/cmd`.
fn signed_by(s: &CommandSigner, mut env: Envelope) -> Vec<u8> {
    env.key_id = s.id();
    codec::encode(Kind::Cmd, &s.sign(&env).unwrap()).unwrap()
}

#[tokio::test]
async fn a_command_key_chain_is_followed_and_a_forged_one_refused() {
    let mut rig = Rig::new(|_, _| {});
    let c = rig.start(CancellationToken::new());
    let (k1, k2) = (
        CommandSigner::from_seed(&[21; 32]).unwrap(),
        CommandSigner::from_seed(&[22; 32]).unwrap(),
    );
    let keys = vec![
        rig.signer.verifying_key().to_bytes(),
        k1.verifying_key().to_bytes(),
        k2.verifying_key().to_bytes(),
    ];
    let first = rig.signer.sign_link(&k1.verifying_key());
    let mut signatures = first.clone();
    signatures.extend(k1.sign_link(&k2.verifying_key()));

    // A forged chain: the second link signed by a key the device never trusted.
    let stranger = CommandSigner::from_seed(&[23; 32]).unwrap();
    let mut forged_sigs = first;
    forged_sigs.extend(stranger.sign_link(&k2.verifying_key()));
    let forged = Action::TrustCommandKeys {
        keys: keys.clone(),
        signatures: forged_sigs,
        keep: 1,
    };
    // Refused as signed by an unknown key (reported without an id: the body is unverified).
    let unknown = |r: &Rig| {
        r.outcomes(0)
            .iter()
            .filter(|o| matches!(o, Outcome::Rejected(why) if why.starts_with("unknown_key")))
            .count()
    };
    c.submit(&signed_by(&k2, rig.envelope(1, forged)));
    rig.until(|r| unknown(r) == 1).await;
    // Nothing changed: a command signed by the new key is still refused.
    c.submit(&signed_by(&k2, rig.envelope(2, Action::Ping)));
    rig.until(|r| unknown(r) == 2).await;
    assert!(rig.outcomes(1).is_empty() && rig.outcomes(2).is_empty());
    assert!(!rig.dir.path().join("command.pub").exists());

    // Two rotations at once, signed by the newest key the chain proves; k1 and k2 stay.
    let chain = Action::TrustCommandKeys {
        keys,
        signatures,
        keep: 2,
    };
    c.submit(&signed_by(&k2, rig.envelope(3, chain)));
    rig.until(|r| finals(&r.outcomes(3)) == 1).await;
    assert_eq!(rig.outcomes(3).last(), Some(&Outcome::Succeeded));
    let pinned = TrustedKey::all_from_pem(
        &std::fs::read_to_string(rig.dir.path().join("command.pub")).unwrap(),
    )
    .unwrap();
    let ids: Vec<_> = pinned.iter().map(|k| k.id).collect();
    assert_eq!(ids, [k1.id(), k2.id()]);
    for (n, s) in [(4, &k2), (5, &k1)] {
        c.submit(&signed_by(s, rig.envelope(n, Action::Ping)));
        rig.until(|r| finals(&r.outcomes(n)) == 1).await;
        assert_eq!(rig.outcomes(n).last(), Some(&Outcome::Succeeded), "{n}");
    }
    // The key it started with is no longer trusted.
    c.submit(&rig.signed(&rig.envelope(6, Action::Ping)));
    rig.until(|r| unknown(r) == 3).await;
    assert!(rig.outcomes(6).is_empty());
}
