//! The device routes that deliver a release: its signed manifest (postcard bytes) and its
//! archive, streamed from disk with `Range` support so an interrupted download resumes.
//! Only a device certificate opens them (`Permission::Device`, checked by the guard), and
//! only for a release the device has a deploy or rollback command in progress for
//! ([`crate::releases::delivery`]). A release is named by its manifest's SHA-256, which the
//! signed command carries.
//!
//! Mutual TLS ends here, in the controller's own listener: a proxy that terminates TLS in
//! front of it cannot pass the device certificate on, so these routes cannot sit behind one.

use std::io::SeekFrom;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use utoipa::IntoParams;

use crate::api::AppState;
use crate::api::extract::{DevicePrincipal, Path};
use crate::api::problem::{Problem, Refused};
use crate::releases::delivery::{self, DeliveryError, Want};
use crate::releases::{self, storage};

/// Bytes read from disk per chunk of an archive response.
const CHUNK: usize = 64 * 1024;

/// A release as devices name it.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ReleasePath {
    /// SHA-256 of the release's signed manifest (64 lowercase hex), as the deploy or
    /// rollback command names it.
    #[param(min_length = 64, max_length = 64, pattern = "^[0-9a-f]{64}$")]
    pub id: String,
}

impl ReleasePath {
    fn digest(&self) -> Result<[u8; 32], Problem> {
        storage::parse_digest(&self.id).ok_or_else(|| {
            Problem::bad_request("a release is named by its manifest's SHA-256: 64 lowercase hex")
        })
    }
}

/// A device download refused: not ordered 403, deleted 404.
impl From<DeliveryError> for Problem {
    fn from(e: DeliveryError) -> Self {
        match e {
            DeliveryError::NotOrdered => Problem::forbidden(e.to_string()),
            DeliveryError::Gone => Problem::not_found(e.to_string()),
            DeliveryError::Store(e) => e.into(),
        }
    }
}

/// The signed manifest of a release this device is told to install or roll back to.
#[utoipa::path(
    get,
    operation_id = "device_release_manifest",
    path = "/api/v1/device/releases/{id}/manifest",
    tag = "device",
    params(ReleasePath),
    security(("device_certificate" = [])),
    responses(
        (status = 200, description = "The signed manifest (postcard: key id, manifest bytes, Ed25519 signature)", body = String, content_type = "application/octet-stream"),
        Refused,
    )
)]
pub async fn manifest(
    State(st): State<AppState>,
    DevicePrincipal(device): DevicePrincipal,
    Path(path): Path<ReleasePath>,
) -> Result<Response, Problem> {
    let digest = path.digest()?;
    let row =
        delivery::release_for_device(&st.store, device.as_str(), &digest, Want::Manifest).await?;
    let signed = releases::signed_manifest(&st.dd, &row)
        .await
        .map_err(|e| Problem::internal(&e))?;
    let bytes = postcard::to_allocvec(&signed).map_err(|e| Problem::internal(&e))?;
    tracing::info!(device = %device, release = row.id, app = %row.app, "release manifest sent");
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Bytes::from(bytes),
    )
        .into_response())
}

/// The archive of a release this device is told to install, whole or the byte range asked
/// for (`Range: bytes=FIRST-[LAST]` or `bytes=-SUFFIX`, one range).
#[utoipa::path(
    get,
    operation_id = "device_release_archive",
    path = "/api/v1/device/releases/{id}/archive",
    tag = "device",
    params(
        ReleasePath,
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=FIRST-[LAST]` or `bytes=-SUFFIX`; anything else is answered 416"),
    ),
    security(("device_certificate" = [])),
    responses(
        (status = 200, description = "The whole archive (gzip-compressed tar)", body = String, content_type = "application/gzip"),
        (status = 206, description = "The range asked for, with Content-Range", body = String, content_type = "application/gzip"),
        Refused,
    )
)]
pub async fn archive(
    State(st): State<AppState>,
    DevicePrincipal(device): DevicePrincipal,
    Path(path): Path<ReleasePath>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let digest = path.digest()?;
    let row =
        delivery::release_for_device(&st.store, device.as_str(), &digest, Want::Archive).await?;
    let archive = storage::parse_digest(&row.archive_sha256)
        .ok_or_else(|| Problem::internal(&releases::ReleaseError::Corrupt(row.id)))?;
    let dd = st.dd.clone();
    let (file, len) = tokio::task::spawn_blocking(move || storage::open_archive(&dd, &archive))
        .await
        .map_err(|e| Problem::internal(&e))?
        .map_err(|e| Problem::internal(&e))?;
    if len != row.archive_size {
        let why = format!(
            "release {}: its archive is {len} bytes on disk, {} recorded",
            row.id, row.archive_size
        );
        return Err(Problem::internal(&why));
    }
    let range = headers
        .get(header::RANGE)
        .map(|v| v.to_str().unwrap_or_default());
    let (status, start, count) = match byte_range(range, len) {
        Span::Whole => (StatusCode::OK, 0, len),
        Span::Part { first, last } => (StatusCode::PARTIAL_CONTENT, first, last - first + 1),
        Span::Unsatisfiable => {
            let mut resp = Problem::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("the archive is {len} bytes; ask for one range within it"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let mut file = tokio::fs::File::from_std(file);
    file.seek(SeekFrom::Start(start))
        .await
        .map_err(|e| Problem::internal(&e))?;
    tracing::info!(device = %device, release = row.id, app = %row.app, start, bytes = count, "release archive sent");
    let mut resp = Response::new(file_body(file, count));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", row.archive_sha256)) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", start + count - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

/// `count` bytes of `file` from where it stands, read a chunk at a time as the client
/// takes them: an archive is never held in memory.
pub(crate) fn file_body(file: tokio::fs::File, count: u64) -> Body {
    let chunks = futures_util::stream::try_unfold((file, count), |(mut file, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        let mut buf = vec![0u8; want];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file ended early",
            ));
        }
        buf.truncate(n);
        Ok::<_, std::io::Error>(Some((Bytes::from(buf), (file, left - n as u64))))
    });
    Body::from_stream(chunks)
}

/// What part of a `len`-byte file a `Range` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    /// No `Range`: all of it.
    Whole,
    /// Bytes `first..=last`, within the file.
    Part { first: u64, last: u64 },
    /// A range outside the file, several ranges, another unit or a malformed header.
    Unsatisfiable,
}

/// Reads a `Range` header (RFC 9110 §14.1.2), one byte range only; pure.
fn byte_range(header: Option<&str>, len: u64) -> Span {
    let Some(h) = header else {
        return Span::Whole;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Span::Unsatisfiable;
    };
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Span::Unsatisfiable;
    };
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            Some(n) if n > 0 && len > 0 => Span::Part {
                first: len - n.min(len),
                last: len - 1,
            },
            _ => Span::Unsatisfiable,
        },
        (first, "") => match num(first) {
            Some(f) if f < len => Span::Part {
                first: f,
                last: len - 1,
            },
            _ => Span::Unsatisfiable,
        },
        (first, last) => match (num(first), num(last)) {
            (Some(f), Some(l)) if f <= l && f < len => Span::Part {
                first: f,
                last: l.min(len - 1),
            },
            _ => Span::Unsatisfiable,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_headers() {
        use Span::*;
        let part = |first, last| Part { first, last };
        let table: &[(Option<&str>, u64, Span)] = &[
            (None, 100, Whole),
            (Some("bytes=0-99"), 100, part(0, 99)),
            (Some("bytes=0-0"), 100, part(0, 0)),
            (Some("bytes=10-"), 100, part(10, 99)),
            (Some("bytes=10-1000"), 100, part(10, 99)),
            (Some("bytes=99-"), 100, part(99, 99)),
            (Some("bytes=-10"), 100, part(90, 99)),
            (Some("bytes=-1000"), 100, part(0, 99)),
            (Some(" bytes=5-6 "), 100, part(5, 6)),
            // Outside the file, backwards, empty, several ranges, other units, junk.
            (Some("bytes=100-"), 100, Unsatisfiable),
            (Some("bytes=100-200"), 100, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=-0"), 100, Unsatisfiable),
            (Some("bytes=-5"), 0, Unsatisfiable),
            (Some("bytes=9-5"), 100, Unsatisfiable),
            (Some("bytes=0-1,5-6"), 100, Unsatisfiable),
            (Some("bytes=-"), 100, Unsatisfiable),
            (Some("bytes=+1-2"), 100, Unsatisfiable),
            (Some("bytes=a-b"), 100, Unsatisfiable),
            (Some("items=0-1"), 100, Unsatisfiable),
            (Some("bytes=18446744073709551616-"), 100, Unsatisfiable),
            (Some(""), 100, Unsatisfiable),
        ];
        for (h, len, want) in table {
            assert_eq!(byte_range(*h, *len), *want, "{h:?} of {len}");
        }
    }
}
