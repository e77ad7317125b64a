//! Downloads from the controller the agent enrolled with, over HTTPS with the device
//! certificate ([`crate::https`]): a release's signed manifest (bounded, in memory) and its
//! archive, to a file that an interrupted download leaves behind so that the next attempt
//! (the next deploy command of the release, after an agent restart too) continues it with
//! `Range`. One blocking thread writes the file: it hashes what an earlier attempt left,
//! appends what arrives and syncs it, so a complete file is checked against the digest and
//! size the command names before anything unpacks it.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use pifleet_shared::release::{Digest, MAX_MANIFEST_BYTES};
use pifleet_shared::token::to_hex;
use sha2::{Digest as _, Sha256};

use crate::https::{self, Endpoint, HttpsError};

/// The whole manifest request may take this long.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Connecting and the response head may take this long; then each chunk of the body.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Replaced when the device certificate is renewed.
    pub tls: crate::tls::Shared,
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
            https::send(&self.endpoint, self.tls.get(), req),
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
    /// what an earlier attempt left there, and checks that it is `size` bytes with digest
    /// `sha256`. `progress` hears the bytes on disk as they grow. A complete file with the
    /// wrong digest is removed; an incomplete one is kept for the next attempt.
    pub async fn archive(
        &self,
        manifest_sha256: &Digest,
        dest: &Path,
        size: u64,
        sha256: &Digest,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(), FetchError> {
        // A stat: what an earlier attempt left (a file longer than the archive is wrong).
        let mut have = std::fs::metadata(dest).map_or(0, |m| m.len());
        if have > size {
            have = 0;
        }
        let (from, body) = if have == size {
            (have, None)
        } else {
            let path = format!(
                "/api/v1/device/releases/{}/archive",
                to_hex(manifest_sha256)
            );
            let resp = refused(self.get(&path, have).await?).await?;
            let from = match resp.status() {
                StatusCode::PARTIAL_CONTENT if range_start(&resp) == Some(have) => have,
                StatusCode::PARTIAL_CONTENT => return Err(FetchError::BadRange(have)),
                _ => 0,
            };
            (from, Some(resp.into_body()))
        };
        // The file's side, on one blocking thread: what is kept is hashed again, the new
        // bytes appended, and all of it made durable.
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(CHUNKS);
        let dest_owned = dest.to_owned();
        let writer = tokio::task::spawn_blocking(move || write(&dest_owned, from, rx));
        progress(from);
        let received = match body {
            Some(body) => receive(body, tx, from, size, progress).await,
            // Complete already: the writer only hashes what is there.
            None => {
                drop(tx);
                Ok(())
            }
        };
        let (len, digest) = writer.await?.map_err(file_err(dest))?;
        received?;
        if len != size {
            return Err(FetchError::Size {
                expected: size,
                found: len,
            });
        }
        if &digest != sha256 {
            let _ = std::fs::remove_file(dest);
            return Err(FetchError::Digest);
        }
        Ok(())
    }
}

/// Chunks of the archive on their way to the writing thread.
const CHUNKS: usize = 16;

/// The first byte of a 206 answer's `Content-Range`.
fn range_start(resp: &Response<Incoming>) -> Option<u64> {
    resp.headers()
        .get(header::CONTENT_RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes ")?
        .split_once('-')?
        .0
        .parse()
        .ok()
}

/// Passes the body's chunks to the writing thread until it ends, stalls, or would pass
/// `size` bytes (counting from `have`).
async fn receive(
    mut body: Incoming,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    mut have: u64,
    size: u64,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<(), FetchError> {
    let mut reported = have;
    loop {
        let frame = match tokio::time::timeout(STALL_TIMEOUT, body.frame()).await {
            Err(_) => return Err(FetchError::Stalled(STALL_TIMEOUT)),
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(FetchError::Body(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        have = have.saturating_add(data.len() as u64);
        if have > size {
            return Err(FetchError::Oversize(size));
        }
        if tx.send(data.to_vec()).await.is_err() {
            // The writer stopped: its error is what the caller reports.
            return Ok(());
        }
        if have - reported > size / 20 {
            reported = have;
            progress(have);
        }
    }
}

/// Keeps the first `keep` bytes of `dest` (hashing them), appends every chunk received,
/// syncs, and returns the file's length and SHA-256. Blocking.
pub(super) fn write(
    dest: &Path,
    keep: u64,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<(u64, Digest)> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dest)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    while len < keep {
        let want = usize::try_from(keep - len).map_or(buf.len(), |w| w.min(buf.len()));
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    file.set_len(len)?;
    file.seek(SeekFrom::Start(len))?;
    while let Some(chunk) = rx.blocking_recv() {
        file.write_all(&chunk)?;
        hasher.update(&chunk);
        len += chunk.len() as u64;
    }
    file.sync_all()?;
    Ok((len, hasher.finalize().into()))
}

/// A non-success answer as an error with the problem's detail.
async fn refused(resp: Response<Incoming>) -> Result<Response<Incoming>, FetchError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = Limited::new(resp.into_body(), 16 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Err(FetchError::Status {
        status: status.as_u16(),
        detail: https::problem_detail(&body),
    })
}
