//! A minimal HTTPS client for tests: one JSON POST or GET to the controller over rustls,
//! trusting only the controller's CA and presenting a device certificate when asked, so
//! tests can send requests the real agent never would.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::mqtt::client_tls;

/// A response: status, `Content-Type` (empty if absent) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// A header's value as text (empty if absent or not text).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

impl Response {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "response body is not JSON: {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// POSTs `body` as JSON to `path` on the controller's HTTPS listener at `addr` (as
/// `localhost`), trusting only `ca`. Times out after 30 s.
pub async fn post_json(
    ca: &Path,
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> Result<Response> {
    tokio::time::timeout(Duration::from_secs(30), post(ca, addr, path, body))
        .await
        .context("HTTPS request timed out")?
}

async fn post(
    ca: &Path,
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> Result<Response> {
    let req = Request::post(path)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
    send(ca, addr, None, req).await
}

/// GETs `path` on the controller's HTTPS listener at `addr` (as `localhost`), trusting only
/// `ca`, with `headers`, presenting `client` (certificate and key files) when given. Times
/// out after 30 s.
pub async fn get(
    ca: &Path,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    client: Option<(&Path, &Path)>,
) -> Result<Response> {
    let mut req = Request::get(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new()))?;
    tokio::time::timeout(Duration::from_secs(30), send(ca, addr, client, req))
        .await
        .context("HTTPS request timed out")?
}

async fn send(
    ca: &Path,
    addr: SocketAddr,
    client: Option<(&Path, &Path)>,
    mut req: Request<Full<Bytes>>,
) -> Result<Response> {
    let tls = client_tls(ca, client)?;
    let tcp = TcpStream::connect(addr).await?;
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await
        .context("TLS handshake with the controller")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    req.headers_mut().insert(
        hyper::header::HOST,
        hyper::header::HeaderValue::from_str(&format!("localhost:{}", addr.port()))?,
    );
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let content_type = headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Response {
        status,
        content_type,
        headers,
        body,
    })
}

/// PEM-encodes `der` under `label` (e.g. `CERTIFICATE REQUEST`), for hand-modified objects.
pub fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A well-formed CSR (ECDSA P-256, like the agent's).
#[allow(clippy::unwrap_used)] // a test helper: like the tests, it panics
pub fn csr_pem(cn: &str) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    params.distinguished_name = dn;
    params
        .serialize_request(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_base64() {
        assert_eq!(pem("X", b""), "-----BEGIN X-----\n-----END X-----\n");
        assert_eq!(pem("X", b"f"), "-----BEGIN X-----\nZg==\n-----END X-----\n");
        assert_eq!(
            pem("X", b"fo"),
            "-----BEGIN X-----\nZm8=\n-----END X-----\n"
        );
        assert_eq!(
            pem("X", b"foobar"),
            "-----BEGIN X-----\nZm9vYmFy\n-----END X-----\n"
        );
    }
}
