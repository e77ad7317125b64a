//! The hardening and bookkeeping layers around every request: security headers, request
//! ids and the per-request log line, the deadline, the body limit, the client address
//! (trusted proxies) and the HTTP metrics.

use super::*;

/// Headers on every response, errors included.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'",
    ),
    (
        "strict-transport-security",
        "max-age=63072000; includeSubDomains",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    (
        "permissions-policy",
        "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), \
         microphone=(), payment=(), usb=()",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
];

pub(super) fn security_headers(mut router: Router) -> Router {
    for (name, value) in SECURITY_HEADERS {
        router = router.layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
    }
    router.layer(SetResponseHeaderLayer::if_not_present(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    ))
}

/// The request id header, taken from the client (or a proxy) when it is sane, else made up.
pub const REQUEST_ID: &str = "x-request-id";

/// Runs the request inside a span carrying its request id (so every log line of the request
/// has it), returns the id in `X-Request-Id`, and logs one line per request. Only the method
/// and path are logged: never headers, query strings or bodies, which carry credentials.
pub(super) async fn request_span(mut req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let mut b = [0u8; 8];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
            pifleet_shared::token::to_hex(&b)
        });
    if let Ok(v) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(REQUEST_ID, v);
    }
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path()
    );
    let started = std::time::Instant::now();
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let mut resp = async move {
        let resp = next.run(req).await;
        let status = resp.status().as_u16();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        // Successful reads (dashboards, Prometheus scrapes) are many and uneventful: debug.
        if read && status < 400 {
            tracing::debug!(status, duration_ms = ms, "request done");
        } else {
            tracing::info!(status, duration_ms = ms, "request done");
        }
        resp
    }
    .instrument(span)
    .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Answers 408 (as a problem document) when a request takes longer than
/// `https.request_timeout_s`.
pub(super) async fn deadline(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let limit = Duration::from_secs(if is_upload(&req) {
        st.cfg.releases.upload_timeout_s
    } else {
        st.cfg.https.request_timeout_s
    });
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request took too long and was abandoned",
        )
        .into_response(),
    }
}

/// A release upload: the one request whose body is not read up front.
fn is_upload(req: &Request) -> bool {
    req.method() == axum::http::Method::POST && req.uri().path() == super::releases::UPLOAD_PATH
}

/// Reads the whole request body (at most `https.max_body_bytes`) before the guard or a
/// handler sees the request. An answer sent while part of the body is still unread (a 401
/// from the guard, say) makes hyper close the connection without `Connection: close`, so a
/// keep-alive client that reuses it gets a reset instead of its next answer, and a client
/// still sending gets a broken connection instead of the answer. A body over the limit is
/// refused here with 413 and `Connection: close`, without reading the rest.
pub(super) async fn read_body(State(st): State<AppState>, req: Request, next: Next) -> Response {
    use futures_util::StreamExt;
    if is_upload(&req) {
        // A release upload is streamed to disk by its handler, after the guard. An answer
        // other than success may leave part of the body unread: close the connection.
        let mut resp = next.run(req).await;
        if !resp.status().is_success() {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return resp;
    }
    let limit = st.cfg.https.max_body_bytes;
    let too_large = || {
        let mut resp = Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes"),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(data) if buf.len().saturating_add(data.len()) > limit => return too_large(),
            Ok(data) => buf.extend_from_slice(&data),
            Err(e) => {
                tracing::debug!(error = %e, "request body unreadable");
                let mut resp =
                    Problem::bad_request("the request body could not be read").into_response();
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return resp;
            }
        }
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(buf)))
        .await
}

/// Works out the client address (trusted proxies only) and puts it in the request. A
/// trusted proxy's malformed X-Forwarded-For is answered 400: guessing would hand the
/// request the proxy's own address, and with it the proxy's allowlist entries.
pub(super) async fn client_ip(
    State(st): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    match resolve_client(peer, req.headers(), &st.cfg.https.trusted_proxies) {
        Ok(ip) => {
            req.extensions_mut().insert(ClientIp(ip));
            next.run(req).await
        }
        Err(e) => {
            tracing::info!(%peer, error = %e, "request refused: malformed X-Forwarded-For");
            Problem::bad_request(format!("malformed X-Forwarded-For: {e}")).into_response()
        }
    }
}

/// Why a trusted proxy's X-Forwarded-For could not be believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardedError {
    #[error("the header is not visible ASCII")]
    NotAscii,
    #[error("entry {0:?} is not an IP address")]
    NotAnAddress(String),
}

/// The client address of a request from `peer`.
///
/// A peer outside `trusted` is the client; its X-Forwarded-For is ignored. From a trusted
/// proxy, the entries of every X-Forwarded-For line (in order, comma separated) are walked
/// from the right: trusted proxies are skipped and the first other address is the client.
/// Entries left of the client are the client's own to write and are never parsed. An entry
/// on the way that is not an address (`1.2.3.4`, `1.2.3.4:port`, `2001:db8::1` and
/// `[2001:db8::1]:port` are) is an error, never the peer: a trusted peer is only a proxy,
/// not a client. If every entry is a trusted proxy, the left-most one is the client; with
/// no header, the peer is. IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
pub fn resolve_client(
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> Result<IpAddr, ForwardedError> {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Ok(peer);
    }
    let mut lines = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        lines.push(v.to_str().map_err(|_| ForwardedError::NotAscii)?);
    }
    let mut leftmost = None;
    for entry in lines.iter().rev().flat_map(|l| l.rsplit(',')) {
        let ip = forwarded_address(entry)
            .ok_or_else(|| ForwardedError::NotAnAddress(entry.trim().to_owned()))?;
        if !is_trusted(&ip) {
            return Ok(ip);
        }
        leftmost = Some(ip);
    }
    Ok(leftmost.unwrap_or(peer))
}

/// One X-Forwarded-For entry as an address: `ip`, `ipv4:port`, `[ipv6]` or `[ipv6]:port`,
/// with optional white space around it.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim_matches([' ', '\t']);
    let ip = if let Ok(ip) = entry.parse::<IpAddr>() {
        ip
    } else if let Ok(sa) = entry.parse::<std::net::SocketAddr>() {
        sa.ip()
    } else {
        entry
            .strip_prefix('[')?
            .strip_suffix(']')?
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)?
    };
    Some(ip.to_canonical())
}

/// Counts every routed request by method, route template and status, with its duration.
pub(super) async fn http_metrics(
    State(st): State<AppState>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().as_str().to_owned();
    let route = matched
        .as_ref()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched")
        .to_owned();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    st.metrics
        .http_request_seconds
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    st.metrics
        .http_requests
        .with_label_values(&[&method, &route, resp.status().as_str()])
        .inc();
    resp
}
