//! The dashboard's files, built from `web/` and embedded by `build.rs`. Hashed files under
//! `/assets/` are cached for a year (their names change with their content); `index.html`,
//! which is also the answer for every other page path (the dashboard routes in the browser),
//! is revalidated on every load. Files are sent gzip-compressed to clients that accept it.
//! `https.admin_allow` applies to the dashboard as to the admin API.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::api::AppState;
use crate::api::extract::ClientIp;
use crate::api::problem::Problem;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// URL path, e.g. `/assets/index-3f2a9c.js`.
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
    /// A gzip copy, when it is smaller.
    pub gzip: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// The embedded file at `path`.
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// Whether the client accepts gzip (`Accept-Encoding`, honouring `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let q_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
        })
}

/// Paths that belong to the API or to Prometheus: never answered with the dashboard.
fn is_api_path(path: &str) -> bool {
    path == "/api"
        || path.starts_with("/api/")
        || path == "/metrics"
        || path.starts_with("/metrics/")
}

/// Answers every request no route matched: a dashboard file, the dashboard's page for a
/// browser path, or a 404 problem.
pub async fn fallback(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path();
    if (method != Method::GET && method != Method::HEAD) || is_api_path(path) {
        return Problem::not_found("no such route").into_response();
    }
    let allow = &st.cfg.https.admin_allow;
    if !allow.is_empty() && !allow.iter().any(|n| n.contains(&ip)) {
        return Problem::forbidden("your address may not use the dashboard").into_response();
    }
    let (file, immutable) = match asset(path) {
        Some(a) => (a, path.starts_with("/assets/")),
        None if path.starts_with("/assets/") => {
            return Problem::not_found("no such file").into_response();
        }
        None => match asset("/index.html") {
            Some(index) => (index, false),
            None => return Problem::not_found("no such route").into_response(),
        },
    };
    let cache = if immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static(file.content_type),
        )
        .header(header::CACHE_CONTROL, HeaderValue::from_static(cache))
        .header(header::VARY, HeaderValue::from_static("accept-encoding"));
    let body = match file.gzip {
        Some(gz) if accepts_gzip(&headers) => {
            resp = resp.header(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            gz
        }
        _ => file.body,
    };
    resp.body(Body::from(body))
        .unwrap_or_else(|e| Problem::internal(&e).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(&enc("gzip, deflate, br")));
        assert!(accepts_gzip(&enc("br;q=1.0, GZIP;q=0.5")));
        assert!(accepts_gzip(&enc("*")));
        assert!(!accepts_gzip(&enc("gzip;q=0")));
        assert!(!accepts_gzip(&enc("br, deflate")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn api_paths_are_never_the_dashboard() {
        for p in ["/api", "/api/v1/nope", "/metrics", "/metrics/devices/x"] {
            assert!(is_api_path(p), "{p}");
        }
        for p in ["/", "/devices/pi-1", "/apis", "/metricsx", "/assets/a.js"] {
            assert!(!is_api_path(p), "{p}");
        }
    }

    #[test]
    fn the_build_embedded_an_index_and_hashed_assets() {
        let index = asset("/index.html").expect("index.html embedded");
        assert_eq!(index.content_type, "text/html; charset=utf-8");
        let html = std::str::from_utf8(index.body).unwrap();
        // No inline script or style: the CSP forbids them.
        assert!(
            !html.contains("<script>") && !html.contains("<style"),
            "{html}"
        );
        let scripts: Vec<&Asset> = ASSETS
            .iter()
            .filter(|a| a.path.starts_with("/assets/") && a.path.ends_with(".js"))
            .collect();
        assert!(!scripts.is_empty());
        for a in scripts {
            assert!(
                html.contains(a.path) || !a.path.contains("index"),
                "{}",
                a.path
            );
            assert_eq!(a.content_type, "text/javascript; charset=utf-8");
            let gz = a.gzip.expect("scripts compress");
            assert!(gz.len() < a.body.len());
        }
    }
}
