//! Writes a few valid inputs per fuzz target into `<dir>/<target>/<name>`, in the framing
//! each target reads (see the comments at the top of `fuzz_targets/*.rs`).

use std::path::{Path, PathBuf};

use pifleet_shared::codec;
use pifleet_shared::command::{
    Action, CommandId, Envelope, Outcome, Output, Receipt, ServiceOp, SignedReceipt,
};
use pifleet_shared::proto::v1;
use pifleet_shared::signing::CommandSigner;
use pifleet_shared::topic::Kind;

/// The command target's trusted key and clock (`fuzz_targets/command.rs`).
const COMMAND_SEED: [u8; 32] = [7; 32];
const NOW_MS: i64 = 1_700_000_000_000;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let d = dir.join(target);
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join(name), bytes)?;
    Ok(())
}

fn framed(head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = head.to_vec();
    v.extend_from_slice(body);
    v
}

fn envelopes(signer: &CommandSigner) -> Vec<(&'static str, Envelope)> {
    let env = |action| Envelope {
        id: CommandId([0x42; 16]),
        device: "pi-01".into(),
        issued_at_ms: NOW_MS - 1_000,
        expires_at_ms: NOW_MS + 60_000,
        key_id: signer.id(),
        action,
    };
    vec![
        ("ping", env(Action::Ping)),
        (
            "service",
            env(Action::Service {
                unit: "nginx.service".into(),
                op: ServiceOp::Restart,
            }),
        ),
        (
            "script",
            env(Action::RunScript {
                name: "rotate-logs".into(),
                args: vec!["--now".into()],
            }),
        ),
        (
            "deploy",
            env(Action::Deploy {
                app: "web".into(),
                release: 3,
                manifest_sha256: [1; 32],
                archive_sha256: [2; 32],
                archive_size: 4096,
                retry_failed: false,
            }),
        ),
    ]
}

fn receipt() -> Receipt {
    Receipt {
        command: CommandId([0x42; 16]),
        device: "pi-01".into(),
        outcome: Outcome::Failed("exit 1".into()),
        exit_code: Some(1),
        duration_ms: 12,
        stdout: Output {
            data: b"hello\n".to_vec(),
            len: 6,
            sha256: vec![3; 32],
        },
        stderr: Output::default(),
        at_ms: NOW_MS,
    }
}

fn sample() -> v1::Sample {
    v1::Sample {
        seq: 7,
        ts_ms: NOW_MS,
        cpu_pct: 12.5,
        load1: 0.5,
        load5: 0.25,
        load15: 0.125,
        mem_total_bytes: 1 << 30,
        mem_used_bytes: 1 << 29,
        swap_total_bytes: 0,
        swap_used_bytes: 0,
        disks: vec![v1::Disk {
            mount: "/".into(),
            fs: "ext4".into(),
            total_bytes: 32 << 30,
            used_bytes: 8 << 30,
        }],
        nets: vec![v1::Net {
            iface: "eth0".into(),
            rx_bytes: 1,
            tx_bytes: 2,
        }],
        temp_c: Some(48.3),
        throttled: Some(0x50005),
        uptime_s: 3600,
        spool_dropped: 0,
        spool_backlog: 0,
    }
}

fn codec_seeds(dir: &Path, signer: &CommandSigner) -> Result<()> {
    let t = "codec";
    let hello = v1::Hello {
        agent_version: "0.1.0".into(),
        hostname: "pi-01".into(),
        os: "Debian GNU/Linux 12".into(),
        kernel: "6.6.31".into(),
        arch: "aarch64".into(),
        model: Some("Raspberry Pi 4 Model B".into()),
        uptime_s: 3600,
        interval_s: 10,
    };
    let receipt_body = postcard::to_allocvec(&receipt())?;
    let signed_receipt = SignedReceipt {
        body: receipt_body.clone(),
        signature: vec![0x30; 70],
    };
    let (_, env) = envelopes(signer).swap_remove(1);
    let caps = v1::Event::Capabilities(v1::Capabilities {
        ping: true,
        reboot: false,
        services: vec!["nginx.service".into()],
        journal_units: vec!["nginx.service".into()],
        scripts: vec![v1::ScriptCapability {
            name: "rotate-logs".into(),
            allowed_args: vec!["--now".into()],
        }],
        set_interval: Some(v1::IntervalBounds {
            min_s: 5,
            max_s: 60,
        }),
    });
    let seeds: Vec<(&str, u8, Vec<u8>)> = vec![
        ("hello", 0, codec::encode(Kind::Hello, &hello)?),
        (
            "telemetry",
            1,
            codec::encode(Kind::Telemetry, &v1::Telemetry { samples: vec![sample()] })?,
        ),
        ("result", 2, codec::encode(Kind::Result, &signed_receipt)?),
        ("event", 3, codec::encode(Kind::Event, &caps)?),
        ("status", 4, codec::encode(Kind::Status, &v1::Status::Online)?),
        ("cmd", 5, codec::encode(Kind::Cmd, &signer.sign(&env)?)?),
        (
            "ack",
            6,
            codec::encode(
                Kind::Ack,
                &v1::Ack {
                    ranges: vec![v1::SeqRange { first: 1, last: 9 }],
                },
            )?,
        ),
        (
            "csr",
            7,
            codec::encode(
                Kind::Csr,
                &v1::RenewRequest {
                    csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n".into(),
                },
            )?,
        ),
        (
            "cert",
            8,
            codec::encode(
                Kind::Cert,
                &v1::RenewAnswer::Refused {
                    reason: "too soon".into(),
                    retry_after_s: 60,
                },
            )?,
        ),
        ("envelope", 9, postcard::to_allocvec(&env)?),
        ("receipt", 10, receipt_body),
    ];
    for (name, which, bytes) in seeds {
        write(dir, t, name, &framed(&[which], &bytes))?;
    }
    Ok(())
}

fn command_seeds(dir: &Path, signer: &CommandSigner) -> Result<()> {
    for (name, env) in envelopes(signer) {
        let body = postcard::to_allocvec(&env)?;
        let payload = codec::encode(Kind::Cmd, &signer.sign(&env)?)?;
        write(
            dir,
            "command",
            &format!("{name}-payload"),
            &framed(&[0, 0, 0], &payload),
        )?;
        // Not seen, allowed: accepted as signed.
        write(
            dir,
            "command",
            &format!("{name}-body"),
            &framed(&[1, 2, 5], &body),
        )?;
        write(
            dir,
            "command",
            &format!("{name}-envelope"),
            &framed(&[2, 0x1e, 9], &body),
        )?;
    }
    // Key chains: four keys, the oldest trusted; six keys, the third trusted, a link after
    // it tampered with.
    write(dir, "command", "chain", &[3, 3, 0b0001, 0, 0, 0])?;
    write(dir, "command", "chain-tampered", &[3, 5, 0b0100, 1, 200, 0])?;
    Ok(())
}

fn receipt_seeds(dir: &Path) -> Result<()> {
    let body = postcard::to_allocvec(&receipt())?;
    let signed = SignedReceipt {
        body: body.clone(),
        signature: vec![0x30; 70],
    };
    write(
        dir,
        "receipt",
        "payload",
        &framed(&[0, 0, 0], &codec::encode(Kind::Result, &signed)?),
    )?;
    for which in 0..4u8 {
        write(
            dir,
            "receipt",
            &format!("body-{which}"),
            &framed(&[1, which << 3, 3], &body),
        )?;
    }
    write(dir, "receipt", "receipt", &framed(&[2, 0, 0], &body))?;
    Ok(())
}

fn topic_seeds(dir: &Path) -> Result<()> {
    let seeds: [(&str, &[u8]); 4] = [
        (
            "publish",
            b"\x10pi-01\0fleet/pi-01/up/telemetry\nfleet/pi-01/up/hello\nfleet/pi-01/up/csr",
        ),
        (
            "subscribe",
            b"\x01pi-01\0fleet/pi-01/down/#\nfleet/pi-01/down/+\nfleet/pi-01/down/cmd",
        ),
        (
            "other",
            b"\x01pi-01\0fleet/pi-02/up/telemetry\nfleet/pi-01/down/ack\nfleet/+/up/#",
        ),
        (
            "oversize",
            b"\xffgarden-7\0fleet/garden-7/up/status\nfleet/garden-7/up/result",
        ),
    ];
    for (name, bytes) in seeds {
        write(dir, "topic_acl", name, bytes)?;
    }
    Ok(())
}

fn csr_seeds(dir: &Path) -> Result<()> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
    for (name, alg, which) in [
        ("p256", &rcgen::PKCS_ECDSA_P256_SHA256, 0u8),
        ("ed25519", &rcgen::PKCS_ED25519, 1),
    ] {
        let key = KeyPair::generate_for(alg)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "pi-01");
        params.distinguished_name = dn;
        let csr = params.serialize_request(&key)?;
        write(
            dir,
            "csr",
            &format!("{name}-pem"),
            &framed(&[0], csr.pem()?.as_bytes()),
        )?;
        write(dir, "csr", &format!("{name}-der"), &framed(&[1], csr.der()))?;
        write(
            dir,
            "csr",
            &format!("{name}-cn"),
            &framed(&[2 + 3 * which], b"pi-01"),
        )?;
    }
    write(dir, "csr", "bad-cn", &framed(&[2], b"Bad Name"))?;
    Ok(())
}

/// Entries as the intake target's builder reads them: type, mode (LE), name, data.
fn described(entries: &[(u8, u16, &str, &[u8])]) -> Vec<u8> {
    let mut v = Vec::new();
    for (ty, mode, name, data) in entries {
        v.push(*ty);
        v.extend_from_slice(&mode.to_le_bytes());
        v.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        v.extend_from_slice(name.as_bytes());
        v.push(u8::try_from(data.len()).unwrap_or(u8::MAX));
        v.extend_from_slice(data);
    }
    v
}

fn intake_seeds(dir: &Path) -> Result<()> {
    use pifleet_intake::testkit::{T, Z, gz, tar, zip};
    let tree = tar(&[
        T::Dir("bin", 0o755),
        T::File("bin/app", 0o755, b"#!/bin/sh\necho hi\n"),
        T::File("etc/app.toml", 0o644, b"port = 8080\n"),
        T::Link("bin/current", "app"),
    ]);
    write(dir, "intake", "upload-tar", &framed(&[0], &tree))?;
    write(dir, "intake", "upload-tar-gz", &framed(&[0], &gz(&tree)))?;
    let z = zip(&[
        Z::Dir("bin/"),
        Z::File("bin/app", 0o755, b"#!/bin/sh\necho hi\n"),
        Z::Link("bin/current", "app"),
    ]);
    write(dir, "intake", "upload-zip", &framed(&[0], &z))?;
    write(dir, "intake", "git-archive", &framed(&[1], &tree))?;
    let entries = described(&[
        (1, 0o755, "bin", b""),
        (0, 0o755, "bin/app", b"#!/bin/sh\n"),
        (2, 0o777, "bin/current", b"app"),
        (4, 0, "././@LongLink", b"share/a-long-name.txt"),
        (0, 0o644, "ignored", b"long"),
        (5, 0, "pax", b"22 path=share/pax.txt\n"),
        (0, 0o644, "ignored", b"pax"),
    ]);
    for mode in [2u8, 3, 4] {
        write(
            dir,
            "intake",
            &format!("described-{mode}"),
            &framed(&[mode], &entries),
        )?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: pifleet-fuzz-seeds DIR")?,
    );
    let signer = CommandSigner::from_seed(&COMMAND_SEED)?;
    codec_seeds(&dir, &signer)?;
    command_seeds(&dir, &signer)?;
    receipt_seeds(&dir)?;
    topic_seeds(&dir)?;
    csr_seeds(&dir)?;
    intake_seeds(&dir)?;
    Ok(())
}
