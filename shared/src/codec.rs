//! Encoding and decoding of payloads: version byte + postcard, with the size limit of the
//! message kind checked before any decoding happens.

use serde::{Serialize, de::DeserializeOwned};

use crate::proto::v1;
use crate::topic::Kind;

/// Why a payload was refused. Each maps to a stable reason label for metrics.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{kind:?} payload of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        kind: Kind,
        len: usize,
        limit: usize,
    },
    #[error("empty payload")]
    Empty,
    #[error("unknown protocol version {0}")]
    UnknownVersion(u8),
    #[error("undecodable payload: {0}")]
    Malformed(#[source] postcard::Error),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

impl DecodeError {
    /// A short stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "oversize",
            Self::Empty => "empty",
            Self::UnknownVersion(_) => "unknown_version",
            Self::Malformed(_) => "malformed",
            Self::Trailing(_) => "trailing_bytes",
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoding failed: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("{kind:?} payload of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        kind: Kind,
        len: usize,
        limit: usize,
    },
}

/// Encodes `msg` as a v1 payload of `kind`, refusing anything over the kind's limit.
pub fn encode<T: Serialize>(kind: Kind, msg: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![v1::VERSION];
    out = postcard::to_extend(msg, out)?;
    let limit = kind.max_payload();
    if out.len() > limit {
        return Err(EncodeError::TooLarge {
            kind,
            len: out.len(),
            limit,
        });
    }
    Ok(out)
}

/// Decodes a v1 payload of `kind`. Never panics, whatever the bytes.
pub fn decode<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, DecodeError> {
    let limit = kind.max_payload();
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            kind,
            len: bytes.len(),
            limit,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != v1::VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let (msg, rest) = postcard::take_from_bytes(body).map_err(DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::*;
    use proptest::prelude::*;

    fn sample(seq: u64) -> Sample {
        Sample {
            seq,
            ts_ms: 1_700_000_000_000,
            cpu_pct: 12.5,
            load1: 0.5,
            load5: 0.25,
            load15: 0.125,
            mem_total_bytes: 1 << 30,
            mem_used_bytes: 1 << 29,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
            disks: vec![Disk {
                mount: "/".into(),
                fs: "ext4".into(),
                total_bytes: 32 << 30,
                used_bytes: 8 << 30,
            }],
            nets: vec![Net {
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

    #[test]
    fn version_byte_first() -> Result<(), EncodeError> {
        let bytes = encode(Kind::Status, &Status::Online)?;
        assert_eq!(bytes[0], v1::VERSION);
        assert_eq!(bytes.len(), 2);
        Ok(())
    }

    #[test]
    fn refuses_unknown_version_and_empty() {
        assert!(matches!(
            decode::<Status>(Kind::Status, &[]),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            decode::<Status>(Kind::Status, &[2, 0]),
            Err(DecodeError::UnknownVersion(2))
        ));
        assert!(matches!(
            decode::<Status>(Kind::Status, &[1, 9]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Status>(Kind::Status, &[1, 0, 0]),
            Err(DecodeError::Trailing(1))
        ));
    }

    #[test]
    fn size_checked_before_decoding() {
        let big = vec![1u8; Kind::Telemetry.max_payload() + 1];
        match decode::<Telemetry>(Kind::Telemetry, &big) {
            Err(DecodeError::TooLarge { len, limit, .. }) => {
                assert_eq!(len, limit + 1);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let many = Telemetry {
            samples: (0..2000).map(sample).collect(),
        };
        assert!(matches!(
            encode(Kind::Telemetry, &many),
            Err(EncodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn renewal_messages_roundtrip_within_their_limits() {
        let req = RenewRequest {
            csr_pem:
                "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
                    .into(),
        };
        let bytes = encode(Kind::Csr, &req).unwrap();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(decode::<RenewRequest>(Kind::Csr, &bytes).unwrap(), req);
        for a in [
            RenewAnswer::Issued {
                cert_pem: "pem".into(),
            },
            RenewAnswer::Refused {
                reason: "too soon".into(),
                retry_after_s: 7,
            },
        ] {
            let bytes = encode(Kind::Cert, &a).unwrap();
            assert_eq!(decode::<RenewAnswer>(Kind::Cert, &bytes).unwrap(), a);
        }
        // A CSR bigger than its kind's limit is refused before it is decoded.
        let huge = RenewRequest {
            csr_pem: "x".repeat(Kind::Csr.max_payload()),
        };
        assert!(matches!(
            encode(Kind::Csr, &huge),
            Err(EncodeError::TooLarge { .. })
        ));
        let big = vec![VERSION; Kind::Csr.max_payload() + 1];
        assert!(matches!(
            decode::<RenewRequest>(Kind::Csr, &big),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    fn arb_sample() -> impl Strategy<Value = Sample> {
        (
            any::<u64>(),
            any::<i64>(),
            any::<f32>().prop_filter("nan", |f| !f.is_nan()),
            prop::collection::vec(("\\PC{0,20}", any::<u64>(), any::<u64>()), 0..4),
            prop::option::of(-40.0f32..120.0),
            prop::option::of(any::<u32>()),
        )
            .prop_map(|(seq, ts, cpu, nets, temp, thr)| Sample {
                seq,
                ts_ms: ts,
                cpu_pct: cpu,
                nets: nets
                    .into_iter()
                    .map(|(iface, rx_bytes, tx_bytes)| Net {
                        iface,
                        rx_bytes,
                        tx_bytes,
                    })
                    .collect(),
                temp_c: temp,
                throttled: thr,
                ..sample(0)
            })
    }

    proptest! {
        #[test]
        fn telemetry_roundtrips(samples in prop::collection::vec(arb_sample(), 0..20)) {
            let msg = Telemetry { samples };
            let bytes = encode(Kind::Telemetry, &msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: Telemetry = decode(Kind::Telemetry, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn hello_roundtrips(h in "\\PC{0,40}", model in prop::option::of("\\PC{0,40}"), up in any::<u64>()) {
            let msg = Hello { agent_version: "0.1.0".into(), hostname: h.clone(), os: h.clone(), kernel: h.clone(), arch: "aarch64".into(), model, uptime_s: up, interval_s: 10 };
            let bytes = encode(Kind::Hello, &msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: Hello = decode(Kind::Hello, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn ack_roundtrips(r in prop::collection::vec((any::<u64>(), any::<u64>()), 0..50)) {
            let msg = Ack { ranges: r.into_iter().map(|(first, last)| SeqRange { first, last }).collect() };
            let bytes = encode(Kind::Ack, &msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: Ack = decode(Kind::Ack, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn events_roundtrip(units in prop::collection::vec("[a-z@.-]{1,40}", 0..20), flag in any::<bool>(), min in any::<u32>()) {
            let caps = Event::Capabilities(Capabilities {
                ping: flag,
                reboot: !flag,
                services: units.clone(),
                journal_units: units.clone(),
                scripts: units.iter().map(|u| ScriptCapability { name: u.clone(), allowed_args: vec![u.clone()] }).collect(),
                set_interval: flag.then_some(IntervalBounds { min_s: min, max_s: min.saturating_add(1) }),
            });
            let states = Event::Services(units.iter().map(|u| ServiceState { unit: u.clone(), active: "active".into(), sub: "running".into() }).collect());
            let apps = Event::Apps(units.iter().map(|u| AppState { app: u.clone(), unit: format!("{u}.service"), current: flag.then_some(u64::from(min)), current_dir: None, kept: vec![u64::from(min)] }).collect());
            let watch = Event::Watchdog(UnitEvent { unit: units.first().cloned().unwrap_or_default(), kind: UnitEventKind::CrashLoop { restarts: min } });
            let guard = Event::GuardRollback(GuardRollback { app: "web".into(), release: u64::from(min), reason: units.join(" "), journal: String::new(), restored: flag.then_some(1) });
            for msg in [caps, states, apps, watch, guard] {
                let bytes = encode(Kind::Event, &msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let back: Event = decode(Kind::Event, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(back, msg);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode::<Event>(Kind::Event, &bytes);
            let _ = decode::<Telemetry>(Kind::Telemetry, &bytes);
            let _ = decode::<Hello>(Kind::Hello, &bytes);
            let _ = decode::<Ack>(Kind::Ack, &bytes);
            let _ = decode::<Status>(Kind::Status, &bytes);
        }

        #[test]
        fn truncated_never_decodes_to_same(samples in prop::collection::vec(arb_sample(), 1..5), cut in 1usize..64) {
            let msg = Telemetry { samples };
            let bytes = encode(Kind::Telemetry, &msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let cut = cut.min(bytes.len() - 1);
            let r = decode::<Telemetry>(Kind::Telemetry, &bytes[..bytes.len() - cut]);
            prop_assert!(r.is_err());
        }
    }
}
