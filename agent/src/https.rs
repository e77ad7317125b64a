//! The agent's one HTTPS client: hyper's HTTP/1.1 over rustls, one request per connection.
//! Enrollment uses it with the CA pinned by fingerprint; release downloads with the device
//! certificate. Callers put their own timeouts around it.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Port of the controller's HTTPS listener when its URL names none.
pub const DEFAULT_PORT: u16 = 8443;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("{0}")]
    Url(String),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with the controller failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("HTTP: {0}")]
    Http(String),
}

/// Where the controller's HTTPS listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// From an `https://host[:port]` URL (IPv6 hosts in brackets).
    pub fn parse(url: &str) -> Result<Self, HttpsError> {
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| HttpsError::Url(e.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Err(HttpsError::Url("scheme is not https".into()));
        }
        let host = uri
            .host()
            .ok_or_else(|| HttpsError::Url("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            host,
            port: uri.port_u16().unwrap_or(DEFAULT_PORT),
        })
    }

    /// `host:port`, for the `Host` header and messages.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Sends `req` (its path and headers; `Host` is added) to `to` over a new TLS connection
/// made with `tls`, and returns the response with its body still to be read.
pub async fn send(
    to: &Endpoint,
    tls: Arc<ClientConfig>,
    mut req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, HttpsError> {
    let tcp = TcpStream::connect((to.host.as_str(), to.port))
        .await
        .map_err(|source| HttpsError::Connect {
            addr: to.authority(),
            source,
        })?;
    let name = ServerName::try_from(to.host.clone()).map_err(|e| HttpsError::Url(e.to_string()))?;
    let stream = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(HttpsError::Tls)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| HttpsError::Http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let host = hyper::header::HeaderValue::from_str(&to.authority())
        .map_err(|e| HttpsError::Url(e.to_string()))?;
    req.headers_mut().insert(hyper::header::HOST, host);
    sender
        .send_request(req)
        .await
        .map_err(|e| HttpsError::Http(e.to_string()))
}

/// The `detail` of a problem document (RFC 9457) the controller answered with, or the
/// start of whatever else the body holds.
pub fn problem_detail(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Problem {
        detail: Option<String>,
    }
    serde_json::from_slice::<Problem>(body)
        .ok()
        .and_then(|p| p.detail)
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_from_urls() {
        let e = |u: &str| Endpoint::parse(u).map(|e| (e.host, e.port));
        assert_eq!(e("https://ctl:9443").unwrap(), ("ctl".into(), 9443));
        assert_eq!(e("https://ctl").unwrap(), ("ctl".into(), DEFAULT_PORT));
        assert_eq!(e("https://[::1]:8443").unwrap(), ("::1".into(), 8443));
        assert!(e("http://ctl").is_err());
        assert!(e("ctl:8443").is_err());
        assert_eq!(
            Endpoint::parse("https://[::1]:1").unwrap().authority(),
            "[::1]:1"
        );
    }

    #[test]
    fn problem_details() {
        assert_eq!(problem_detail(br#"{"status":403,"detail":"no"}"#), "no");
        assert_eq!(problem_detail(b"plain text"), "plain text");
    }
}
