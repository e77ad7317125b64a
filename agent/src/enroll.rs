//! `pifleet-agent enroll`: make the device key here, send only a CSR to the controller over
//! HTTPS pinned to the CA fingerprint in the token, and store the identity (0600 files).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use pifleet_io::{FileError, create_private_dir, write_private};
use pifleet_shared::DeviceId;
use pifleet_shared::enroll::v1::{EnrollRequest, EnrollResponse};
use pifleet_shared::signing::TrustedKey;
use pifleet_shared::token::EnrollToken;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use sha2::Digest as _;

use crate::config::{ControllerConfig, MqttSection, SpoolSection, TelemetryConfig, TlsFiles};
use crate::https::{self, Endpoint, HttpsError};
use crate::tls::{self, PinnedCa};

/// Enrollment errors, each with a message that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    Token(#[from] pifleet_shared::token::InvalidToken),
    #[error("--controller must be an https:// URL with a host, e.g. https://controller:8443 ({0})")]
    Url(String),
    #[error("{0} exists: this device is already enrolled (use --force to enroll again)")]
    AlreadyEnrolled(PathBuf),
    #[error(
        "cannot derive a device id from the hostname {0:?} (and no board serial was found); \
         pass --device-id"
    )]
    NoDeviceId(String),
    #[error("generating the device key: {0}")]
    Key(#[from] rcgen::Error),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with the controller failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("TLS set-up: {0}")]
    TlsSetup(#[from] tls::TlsError),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the controller refused the enrollment ({status}): {detail}")]
    Refused { status: u16, detail: String },
    #[error("the controller's answer is invalid: {0}")]
    BadResponse(String),
    #[error("timed out talking to the controller")]
    Timeout,
    #[error(transparent)]
    Files(#[from] FileError),
}

/// What `enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    pub controller: String,
    pub token: String,
    pub config: PathBuf,
    pub device_id: Option<String>,
    pub interval_s: Option<u32>,
    pub force: bool,
    /// Where the board's serial number is, instead of `/proc/device-tree/serial-number`
    /// (or `/etc/machine-id`).
    pub serial_file: Option<PathBuf>,
    /// Tables to keep in the new configuration as written (a first boot keeps the image's
    /// allowlists, [`crate::bootstrap`]); `enroll` then writes only the identity, the
    /// controller and the telemetry interval, and leaves the rest to them.
    pub keep: Option<String>,
}

/// What `enroll` writes: the identity, the controller and the transport settings (with
/// their defaults, to be edited in place); allowlists (`[commands]`, `[apps.NAME]`) are
/// the administrator's to add, or a first boot's kept tables. Written by hand: toml's
/// serializer would cost the agent's size budget more than these lines (strings are quoted
/// as JSON strings, which are TOML basic strings).
fn identity_toml(
    device_id: &DeviceId,
    controller: &ControllerConfig,
    tls: &TlsFiles,
    interval_s: u32,
) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let p = |p: &Path| q(&p.to_string_lossy());
    let spool = SpoolSection::default();
    let mqtt = MqttSection::default();
    let release_keys: Vec<String> = tls.release_keys.iter().map(|f| p(f)).collect();
    format!(
        "device_id = {}\n\n[controller]\nurl = {}\nmqtt_host = {}\nmqtt_port = {}\n\n\
         [tls]\nca = {}\ncert = {}\nkey = {}\ncommand_key = {}\nrelease_keys = [{}]\n\n\
         [telemetry]\ninterval_s = {interval_s}\n\n\
         [spool]\ndir = {}\nmax_bytes = {}\nsync_interval_s = {}\n\n\
         [mqtt]\nkeep_alive_s = {}\nbackoff_max_s = {}\nrenew_check_s = {}\n\
         renew_answer_timeout_s = {}\nrenew_backoff_max_s = {}\n",
        q(device_id.as_str()),
        q(&controller.url),
        q(&controller.mqtt_host),
        controller.mqtt_port,
        p(&tls.ca),
        p(&tls.cert),
        p(&tls.key),
        p(&tls.command_key),
        release_keys.join(", "),
        p(&spool.dir),
        spool.max_bytes,
        spool.sync_interval_s,
        mqtt.keep_alive_s,
        mqtt.backoff_max_s,
        mqtt.renew_check_s,
        mqtt.renew_answer_timeout_s,
        mqtt.renew_backoff_max_s,
    )
}

/// Where to connect for MQTT: the host the controller names (an external broker), or the
/// one enrolled with. A named host must be a DNS name or an IP address: it goes into the
/// configuration and is what the broker's certificate is checked against.
fn mqtt_host(named: Option<&str>, enrolled_with: String) -> Result<String, EnrollError> {
    match named {
        None => Ok(enrolled_with),
        Some(h) if rustls_pki_types::ServerName::try_from(h).is_ok() && !h.contains('/') => {
            Ok(h.to_owned())
        }
        Some(h) => Err(EnrollError::BadResponse(format!(
            "mqtt_host {h:?} is not a DNS name or an IP address"
        ))),
    }
}

/// Enrolls this device and writes its configuration. Returns the assigned device id.
pub async fn enroll(opts: &EnrollOptions) -> Result<DeviceId, EnrollError> {
    let token = EnrollToken::parse(&opts.token)?;
    let endpoint =
        Endpoint::parse(&opts.controller).map_err(|e| EnrollError::Url(e.to_string()))?;
    if opts.config.exists() && !opts.force {
        return Err(EnrollError::AlreadyEnrolled(opts.config.clone()));
    }
    let (proposed, fallback) = match &opts.device_id {
        Some(id) => (
            DeviceId::parse(id).map_err(|e| EnrollError::Url(format!("--device-id: {e}")))?,
            None,
        ),
        None => derived_ids(&hostname(), board_serial(opts.serial_file.as_deref()))
            .ok_or_else(|| EnrollError::NoDeviceId(hostname()))?,
    };

    // The key is made here and never leaves the device. It is kept from the first attempt,
    // so a device waiting for approval (or restarted meanwhile) asks again as itself.
    let dir = opts.config.parent().unwrap_or(Path::new(".")).to_path_buf();
    let (key, write_key) = device_key(&dir)?;
    tracing::info!(
        key_sha256 = %pifleet_shared::token::to_hex(&sha2::Sha256::digest(key.public_key_raw())),
        "device key"
    );
    let csr = csr_for(&key, &proposed)?;

    let body = serde_json::to_vec(&EnrollRequest {
        token: opts.token.clone(),
        csr,
        fallback_id: fallback.map(|f| f.to_string()),
    })
    .map_err(|e| EnrollError::Http(e.to_string()))?;
    // A busy controller (429: many devices of one site enrolling at once; 503) says when to
    // try again; the token is not spent by such an answer, so the request is sent again.
    let started = tokio::time::Instant::now();
    let resp = loop {
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            post(
                &endpoint,
                &token.ca_fingerprint_hex(),
                "/api/v1/enroll",
                body.clone(),
            ),
        )
        .await
        .map_err(|_| EnrollError::Timeout)??;
        match answer {
            Answer::Done(bytes) => break bytes,
            Answer::Later {
                wait,
                status,
                detail,
            } => {
                // Waiting for approval has no limit: a rejection or the token's expiry
                // ends it with a refusal.
                if status != 202 && started.elapsed() + wait > MAX_WAITING {
                    return Err(EnrollError::Refused { status, detail });
                }
                tracing::info!(
                    status,
                    wait_s = wait.as_secs(),
                    "the controller is busy; enrolling again after its Retry-After"
                );
                tokio::time::sleep(wait).await;
            }
        }
    };
    let resp: EnrollResponse =
        serde_json::from_slice(&resp).map_err(|e| EnrollError::BadResponse(e.to_string()))?;
    let device_id =
        DeviceId::parse(&resp.device_id).map_err(|e| EnrollError::BadResponse(e.to_string()))?;
    let mqtt_host = mqtt_host(resp.mqtt_host.as_deref(), endpoint.host)?;
    // The CA we store must be the one the token pinned.
    let ca_ders =
        tls::pem_certs(resp.ca.as_bytes()).map_err(|e| EnrollError::BadResponse(e.to_string()))?;
    if !ca_ders
        .iter()
        .any(|c| tls::fingerprint(c) == token.ca_fingerprint_hex())
    {
        return Err(EnrollError::BadResponse(
            "returned CA does not match the token".into(),
        ));
    }

    create_private_dir(&dir)?;
    if write_key {
        write_private(&dir.join("device.key"), key.serialize_pem().as_bytes())?;
    }
    write_private(&dir.join("device.crt"), resp.certificate.as_bytes())?;
    write_private(&dir.join("ca.crt"), resp.ca.as_bytes())?;
    write_private(&dir.join("command.pub"), resp.command_public_key.as_bytes())?;
    // Pinned as sent; a controller from before releases sends none, and announces them
    // later with a signed command that writes this file.
    let release_keys = check_release_keys(&resp.release_public_keys)?;
    write_private(&dir.join(RELEASE_KEYS_FILE), release_keys.as_bytes())?;
    let text = identity_toml(
        &device_id,
        &ControllerConfig {
            url: opts.controller.clone(),
            mqtt_host,
            mqtt_port: resp.mqtt_port,
        },
        &TlsFiles {
            ca: "ca.crt".into(),
            cert: "device.crt".into(),
            key: "device.key".into(),
            command_key: "command.pub".into(),
            release_keys: vec![RELEASE_KEYS_FILE.into()],
        },
        opts.interval_s
            .unwrap_or(TelemetryConfig::default().interval_s),
    );
    // Written by hand rather than as a whole `AgentConfig`: the allowlists are not ours.
    let text = format!("{text}\n{}", opts.keep.as_deref().unwrap_or_default());
    let text = format!(
        "# pifleet agent configuration, written by `pifleet-agent enroll`.\n# Relative paths are relative to this file.\n\n{text}"
    );
    write_private(&opts.config, text.as_bytes())?;
    Ok(device_id)
}

/// A new device key (it is made here and never leaves the device) and a CSR (PEM) for it
/// naming `id`: what renewal sends.
pub fn key_and_csr(id: &DeviceId) -> Result<(KeyPair, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let csr = csr_for(&key, id)?;
    Ok((key, csr))
}

/// A CSR (PEM) for `key` naming `id`.
fn csr_for(key: &KeyPair, id: &DeviceId) -> Result<String, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.as_str());
    params.distinguished_name = dn;
    params.serialize_request(key)?.pem()
}

/// The device key for this enrollment and whether it still has to be written. A device
/// not enrolled yet keeps the key an unfinished enrollment made (written, 0600, before it is
/// first used); one enrolling again (`--force`) makes a new key, written only with its new
/// certificate, so a failed attempt leaves the working pair alone.
fn device_key(dir: &Path) -> Result<(KeyPair, bool), EnrollError> {
    let path = dir.join("device.key");
    if dir.join("device.crt").exists() {
        return Ok((KeyPair::generate()?, true));
    }
    // Read with the PEM reader TLS uses already (rcgen's would add its own).
    if let Ok(rustls::pki_types::PrivateKeyDer::Pkcs8(der)) = pifleet_io::load_key(&path)
        && let Ok(key) = KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ECDSA_P256_SHA256)
    {
        return Ok((key, false));
    }
    let key = KeyPair::generate()?;
    create_private_dir(dir)?;
    write_private(&path, key.serialize_pem().as_bytes())?;
    Ok((key, false))
}

/// The file of pinned release keys that `enroll` writes, next to `agent.toml`.
const RELEASE_KEYS_FILE: &str = "release-keys.pem";

/// The release keys of the answer as one PEM file, each checked; empty when none came.
fn check_release_keys(pems: &[String]) -> Result<String, EnrollError> {
    let mut out = String::new();
    for pem in pems {
        let key = TrustedKey::from_pem(pem)
            .map_err(|e| EnrollError::BadResponse(format!("release key: {e}")))?;
        out.push_str(&key.to_pem());
    }
    Ok(out)
}

/// How long `enroll` keeps retrying while the controller answers 429 or 503.
const MAX_WAITING: Duration = Duration::from_secs(15 * 60);

/// What the controller answered.
enum Answer {
    Done(Vec<u8>),
    /// Busy (429 or 503): try again after `wait` (its Retry-After, 1 to 60 s, plus jitter).
    Later {
        wait: Duration,
        status: u16,
        detail: String,
    },
}

async fn post(
    to: &Endpoint,
    fingerprint: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Answer, EnrollError> {
    let cfg = PinnedCa::new(fingerprint.to_owned())
        .client_config()
        .map_err(tls::TlsError::from)?;
    let req = Request::post(path)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| EnrollError::Http(e.to_string()))?;
    let resp = https::send(to, Arc::new(cfg), req)
        .await
        .map_err(|e| match e {
            HttpsError::Url(u) => EnrollError::Url(u),
            HttpsError::Connect { addr, source } => EnrollError::Connect { addr, source },
            HttpsError::Tls(e) => EnrollError::Tls(e),
            HttpsError::Http(e) => EnrollError::Http(e),
        })?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let bytes = Limited::new(resp.into_body(), 256 * 1024)
        .collect()
        .await
        .map_err(|e| EnrollError::Http(e.to_string()))?
        .to_bytes();
    // 202: waiting for an administrator to accept this device; ask again as told.
    if !status.is_success() || status.as_u16() == 202 {
        let detail = https::problem_detail(&bytes);
        if status.as_u16() == 202 {
            tracing::info!(%detail, "waiting for approval");
            return Ok(Answer::Later {
                wait: retry_wait(retry_after),
                status: 202,
                detail,
            });
        }
        if matches!(status.as_u16(), 429 | 503) {
            return Ok(Answer::Later {
                wait: retry_wait(retry_after),
                status: status.as_u16(),
                detail,
            });
        }
        return Err(EnrollError::Refused {
            status: status.as_u16(),
            detail,
        });
    }
    Ok(Answer::Done(bytes.to_vec()))
}

/// The controller's Retry-After (1 to 60 s; 5 s when absent) plus up to half of it again
/// at random, so the devices of a site that were turned away together do not all come back
/// in the same second.
fn retry_wait(retry_after: Option<u64>) -> Duration {
    let base = retry_after.unwrap_or(5).clamp(1, 60) * 1000;
    Duration::from_millis(crate::backoff::jitter(base, base + base / 2))
}

/// The id to propose and the one to fall back to when the controller has it already: the
/// hostname when it is an id, with the hostname plus a stable suffix from the board's
/// serial number as the fallback; only the suffixed one when the hostname is not an id.
fn derived_ids(hostname: &str, serial: Option<String>) -> Option<(DeviceId, Option<DeviceId>)> {
    let suffixed = serial.and_then(|s| {
        let digest = sha2::Sha256::digest(s.as_bytes());
        let hex = pifleet_shared::token::to_hex(&digest[..4]);
        DeviceId::with_suffix(hostname, &hex)
    });
    match DeviceId::sanitize(hostname) {
        Some(id) => Some((id, suffixed)),
        None => suffixed.map(|id| (id, None)),
    }
}

/// The board's serial number: a Raspberry Pi's from the device tree, else the machine id.
fn board_serial(file: Option<&Path>) -> Option<String> {
    let candidates: Vec<&Path> = match file {
        Some(f) => vec![f],
        None => vec![
            Path::new("/proc/device-tree/serial-number"),
            Path::new("/etc/machine-id"),
        ],
    };
    candidates.into_iter().find_map(|p| {
        let text = std::fs::read_to_string(p).ok()?;
        let serial = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        (!serial.is_empty()).then(|| serial.to_owned())
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mqtt_host_is_the_named_one_or_the_enrollment_host() {
        let enrolled = || "fleet.example".to_owned();
        assert_eq!(mqtt_host(None, enrolled()).unwrap(), "fleet.example");
        for ok in ["broker.example", "10.0.0.7", "::1"] {
            assert_eq!(mqtt_host(Some(ok), enrolled()).unwrap(), ok);
        }
        for bad in ["", "a b", "evil\nmqtt_port = 1", "host/path", "-x..y"] {
            let err = mqtt_host(Some(bad), enrolled()).unwrap_err();
            assert!(matches!(err, EnrollError::BadResponse(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_written_identity_reads_back_as_the_agent_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let text = identity_toml(
            &DeviceId::parse("pi-7").unwrap(),
            &ControllerConfig {
                url: "https://fleet.example:8443".into(),
                mqtt_host: "fleet.example".into(),
                mqtt_port: 8883,
            },
            &TlsFiles {
                ca: "ca.crt".into(),
                cert: "odd \"name\\.crt".into(),
                key: "device.key".into(),
                command_key: "command.pub".into(),
                release_keys: vec!["a.pem".into(), "b.pem".into()],
            },
            5,
        );
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!("{text}\n[commands]\nservices = [\"kiosk.service\"]\n"),
        )
        .unwrap();
        let cfg = crate::config::AgentConfig::load(&path).unwrap();
        assert_eq!(cfg.device_id.as_str(), "pi-7");
        assert_eq!(cfg.controller.url, "https://fleet.example:8443");
        assert_eq!(cfg.controller.mqtt_port, 8883);
        assert_eq!(cfg.tls.cert, dir.path().join("odd \"name\\.crt"));
        assert_eq!(cfg.tls.release_keys.len(), 2);
        assert_eq!(cfg.telemetry.interval_s, 5);
        let (spool, mqtt) = (SpoolSection::default(), MqttSection::default());
        assert_eq!(cfg.spool.max_bytes, spool.max_bytes);
        assert_eq!(cfg.spool.dir, dir.path().join(&spool.dir));
        assert_eq!(cfg.mqtt.renew_check_s, mqtt.renew_check_s);
        assert_eq!(cfg.mqtt.backoff_max_s, mqtt.backoff_max_s);
    }

    #[test]
    fn ids_come_from_the_hostname_and_the_board_serial() {
        let serial = || Some("10000000abcdef01".to_owned());
        let (p, f) = derived_ids("raspberrypi", serial()).unwrap();
        assert_eq!(p.as_str(), "raspberrypi");
        let f = f.unwrap();
        assert!(
            f.as_str().starts_with("raspberrypi-") && f.as_str().len() == 20,
            "{f}"
        );
        // Stable: the same serial gives the same id; another serial another.
        assert_eq!(
            derived_ids("raspberrypi", serial()).unwrap().1,
            Some(f.clone())
        );
        let other = derived_ids("raspberrypi", Some("10000000abcdef02".into()));
        assert_ne!(other.unwrap().1, Some(f));
        // A hostname that is no id alone ("vm") takes the suffixed one.
        let (p, f) = derived_ids("vm", serial()).unwrap();
        assert!(p.as_str().starts_with("vm-"), "{p}");
        assert_eq!(f, None);
        assert_eq!(derived_ids("vm", None), None);
        assert_eq!(derived_ids("pi4", None).unwrap().0.as_str(), "pi4");
    }

    #[test]
    fn the_board_serial_is_read_trimmed_of_nuls() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("serial-number");
        std::fs::write(&f, "10000000abcdef01\0").unwrap();
        assert_eq!(board_serial(Some(&f)).as_deref(), Some("10000000abcdef01"));
        std::fs::write(&f, "\n").unwrap();
        assert_eq!(board_serial(Some(&f)), None);
    }

    #[test]
    fn a_busy_controller_is_asked_again_after_its_retry_after_and_some_jitter() {
        for _ in 0..100 {
            let w = retry_wait(Some(2)).as_millis();
            assert!((2_000..=3_000).contains(&w), "{w}");
            let w = retry_wait(None).as_millis();
            assert!((5_000..=7_500).contains(&w), "{w}");
            // Out-of-range answers are clamped.
            assert!(retry_wait(Some(0)).as_millis() >= 1_000);
            assert!(retry_wait(Some(86_400)).as_millis() <= 90_000);
        }
    }
}
