//! Downloads from the controller the agent enrolled with, over HTTPS with the device
//! certificate ([`crate::https`]): a release's signed manifest (bounded, in memory) and its
//! archive, to a file that an interrupted download leaves behind so that the next attempt
//! continues it with `Range`. The archive is hashed as it arrives (and what an earlier
//! attempt left is hashed first), so a complete file is checked against the digest and
//! size the command names before anything unpacks it.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use pifleet_shared::release::{Digest, MAX_MANIFEST_BYTES};
use pifleet_shared::token::to_hex;
use rustls::ClientConfig;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::backoff::Backoff;
use crate::https::{self, Endpoint, HttpsError};

/// The whole manifest request may take this long.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Connecting and the response head may take this long; then each chunk of the body.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at the archive in one go; each resumes where the previous one stopped.
const ATTEMPTS: u32 = 5;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Https(#[from] HttpsError),
    #[error("the controller answered {status}: {detail}")]
    Status { status: u16, detail: String },
    #[error("the download stalled for {0:?}")]
    Stalled(Duration),
    #[error("reading the answer: {0}")]
    Body(String),
    #[error("the manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the controller sent more than the {0} bytes the command names")]
    Oversize(u64),
    #[error("the controller answered a range that does not start at byte {0}")]
    BadRange(u64),
    #[error("the archive is {found} bytes, the command names {expected}")]
    Size { expected: u64, found: u64 },
    #[error("the archive's SHA-256 is not the one the command names")]
    Digest,
    #[error("background task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The controller's HTTPS listener and the device's mutual-TLS client configuration.
#[derive(Debug, Clone)]
pub struct Controller {
    pub endpoint: Endpoint,
    pub tls: Arc<ClientConfig>,
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::File {
        path: path.display().to_string(),
        source,
    }
}

impl Controller {
    /// GET `path`, with `Range: bytes=<from>-` when resuming; the response head within the
    /// stall timeout.
    async fn get(&self, path: &str, from: u64) -> Result<Response<Incoming>, FetchError> {
        let mut req = Request::get(path);
        if from > 0 {
            req = req.header(header::RANGE, format!("bytes={from}-"));
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| FetchError::Body(e.to_string()))?;
        tokio::time::timeout(
            STALL_TIMEOUT,
            https::send(&self.endpoint, self.tls.clone(), req),
        )
        .await
        .map_err(|_| FetchError::Stalled(STALL_TIMEOUT))?
        .map_err(FetchError::from)
    }

    /// The signed manifest's bytes, as the controller stores them.
    pub async fn manifest(&self, manifest_sha256: &Digest) -> Result<Vec<u8>, FetchError> {
        let path = format!(
            "/api/v1/device/releases/{}/manifest",
            to_hex(manifest_sha256)
        );
        tokio::time::timeout(MANIFEST_TIMEOUT, async {
            let resp = refused(self.get(&path, 0).await?).await?;
            let body = Limited::new(resp.into_body(), MAX_MANIFEST_BYTES + 1024)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        FetchError::TooLarge
                    } else {
                        FetchError::Body(e.to_string())
                    }
                })?;
            Ok(body.to_bytes().to_vec())
        })
        .await
        .map_err(|_| FetchError::Stalled(MANIFEST_TIMEOUT))?
    }

    /// Downloads the archive named by `manifest_sha256`'s release into `dest`, continuing
    /// what an earlier attempt left there, until it is `size` bytes with digest `sha256`.
    /// `progress` hears the bytes on disk as they grow. A complete file with the wrong
    /// digest is removed; an incomplete one is kept for the next attempt.
    pub async fn archive(
        &self,
        manifest_sha256: &Digest,
        dest: &Path,
        size: u64,
        sha256: &Digest,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(), FetchError> {
        let path = format!(
            "/api/v1/device/releases/{}/archive",
            to_hex(manifest_sha256)
        );
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut attempt = 1;
        let (have, hasher) = loop {
            let (have, hasher) = resume(dest, size).await?;
            progress(have);
            if have == size {
                break (have, hasher);
            }
            match self
                .download(&path, dest, have, size, hasher, progress)
                .await
            {
                Ok(done) => break done,
                Err(e @ (FetchError::Status { .. } | FetchError::Oversize(_))) => return Err(e),
                Err(e) if attempt >= ATTEMPTS => return Err(e),
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, attempt, wait_ms = wait.as_millis() as u64, "archive download interrupted; resuming");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        };
        if have != size {
            return Err(FetchError::Size {
                expected: size,
                found: have,
            });
        }
        let got: Digest = hasher.finalize().into();
        if &got != sha256 {
            let _ = tokio::fs::remove_file(dest).await;
            return Err(FetchError::Digest);
        }
        Ok(())
    }

    /// One attempt: appends what the controller sends from byte `have` on.
    async fn download(
        &self,
        path: &str,
        dest: &Path,
        mut have: u64,
        size: u64,
        mut hasher: Sha256,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(u64, Sha256), FetchError> {
        let resp = refused(self.get(path, have).await?).await?;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dest)
            .await
            .map_err(file_err(dest))?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let starts = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split_once('-'))
                    .and_then(|(first, _)| first.parse::<u64>().ok());
                if starts != Some(have) {
                    return Err(FetchError::BadRange(have));
                }
            }
            _ if have > 0 => {
                // The whole archive after all: start the file again.
                file.set_len(0).await.map_err(file_err(dest))?;
                (have, hasher) = (0, Sha256::new());
            }
            _ => {}
        }
        let mut body = resp.into_body();
        let mut reported = have;
        let result = loop {
            let frame = match tokio::time::timeout(STALL_TIMEOUT, body.frame()).await {
                Err(_) => break Err(FetchError::Stalled(STALL_TIMEOUT)),
                Ok(None) => break Ok(()),
                Ok(Some(Err(e))) => break Err(FetchError::Body(e.to_string())),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let len = data.len() as u64;
            if have.saturating_add(len) > size {
                break Err(FetchError::Oversize(size));
            }
            if let Err(e) = file.write_all(&data).await {
                break Err(file_err(dest)(e));
            }
            hasher.update(&data);
            have += len;
            if have - reported > size / 20 {
                reported = have;
                progress(have);
            }
        };
        // What arrived stays, durably, whatever ended the attempt: the next one resumes.
        file.sync_all().await.map_err(file_err(dest))?;
        match result {
            Err(FetchError::Oversize(n)) => {
                drop(file);
                let _ = tokio::fs::remove_file(dest).await;
                Err(FetchError::Oversize(n))
            }
            Err(e) => Err(e),
            Ok(()) => Ok((have, hasher)),
        }
    }
}

/// A non-success answer as an error with the problem's detail.
async fn refused(resp: Response<Incoming>) -> Result<Response<Incoming>, FetchError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    #[derive(serde::Deserialize)]
    struct Problem {
        detail: Option<String>,
    }
    let body = Limited::new(resp.into_body(), 16 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let detail = serde_json::from_slice::<Problem>(&body)
        .ok()
        .and_then(|p| p.detail)
        .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
    Err(FetchError::Status {
        status: status.as_u16(),
        detail,
    })
}

/// What an earlier attempt left in `dest`: its length and the hash of its bytes. A file
/// longer than the archive can only be wrong: it is started again.
async fn resume(dest: &Path, size: u64) -> Result<(u64, Sha256), FetchError> {
    let dest = dest.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        let mut file = match std::fs::File::open(&dest) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, hasher)),
            Err(e) => return Err(file_err(&dest)(e)),
        };
        let len = file.metadata().map_err(file_err(&dest))?.len();
        if len > size {
            drop(file);
            std::fs::remove_file(&dest).map_err(file_err(&dest))?;
            return Ok((0, hasher));
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut have = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(file_err(&dest))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            have += n as u64;
        }
        Ok((have, hasher))
    })
    .await?
}
