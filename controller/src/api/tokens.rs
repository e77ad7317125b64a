//! Enrollment tokens: create (the secret appears only in that response), list and revoke.
//! Creation runs the same code as the CLI ([`crate::enroll::tokens::create_token`]).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::AppState;
use crate::api::extract::{Json, Path};
use crate::api::params::device_id;
use crate::api::problem::{Problem, ProblemDoc, Refused};
use crate::enroll::tokens;
use crate::model::labels;
use crate::store::{TokenRow, now_ms};

/// Token lifetime when none is given.
const DEFAULT_TTL_S: u64 = 3_600;

/// A new single-use enrollment token.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Lifetime in seconds (default 3600; at most `enrollment.max_token_ttl_s`).
    pub ttl_s: Option<u64>,
    /// Device id the enrolling device gets (otherwise the id it proposes); the device must
    /// propose this id (`enroll_command` passes it as `--device-id`).
    pub name: Option<String>,
    /// Labels the device starts with.
    pub labels: Option<BTreeMap<String, String>>,
    /// Make a provisioning token that enrolls up to this many devices (1–100000), to bake
    /// into an SD-card image; it cannot have a `name`.
    pub max_uses: Option<u32>,
    /// Devices it enrolls wait until an admin accepts them
    /// (`/api/v1/enrollment-requests`).
    #[serde(default)]
    pub require_approval: bool,
}

/// A created token. The secret is shown here once and stored only as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// Public id, for listing and revoking.
    pub id: String,
    /// The secret token to give the device.
    pub token: String,
    pub expires_at: i64,
    /// The command to run on the device (with `--device-id` when the token names one).
    pub enroll_command: String,
}

/// Where a token is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    Unused,
    Used,
    Expired,
    Revoked,
}

/// A stored token (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: String,
    #[schema(required)]
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub state: TokenState,
    /// The device that enrolled with it (a provisioning token: the latest).
    #[schema(required)]
    pub used_by: Option<String>,
    #[schema(required)]
    pub used_at: Option<i64>,
    /// A provisioning token enrolls up to this many devices; null: single use.
    #[schema(required)]
    pub max_uses: Option<i64>,
    /// Devices a provisioning token enrolled so far.
    pub uses: i64,
    /// Devices it enrolls wait for an admin to accept them.
    pub require_approval: bool,
}

fn state(t: &TokenRow, now: i64) -> TokenState {
    if t.revoked_at.is_some() {
        TokenState::Revoked
    } else if t.used_at.is_some() || t.max_uses.is_some_and(|max| t.uses >= max) {
        TokenState::Used
    } else if t.expires_at <= now {
        TokenState::Expired
    } else {
        TokenState::Unused
    }
}

/// `host:port` from a Host header, if it is a plain host name or address with an optional
/// numeric port (so it can go into a shell command as is). Without a port the client used
/// the HTTPS default, 443.
pub(crate) fn controller_authority(host: Option<&str>) -> Option<String> {
    let host = host?.trim();
    if host.len() > 255 {
        return None;
    }
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        let addr = &host[1..end];
        let addr_ok = !addr.is_empty()
            && addr
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
        if !addr_ok {
            return None;
        }
        let rest = &host[end + 1..];
        let port = if rest.is_empty() {
            None
        } else {
            Some(rest.strip_prefix(':')?)
        };
        (&host[..=end], port)
    } else {
        let (name, port) = match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        };
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
        if !name_ok {
            return None;
        }
        (name, port)
    };
    match port {
        None => Some(format!("{name}:443")),
        Some(p)
            if p.parse::<u16>().is_ok_and(|p| p > 0) && p.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(format!("{name}:{p}"))
        }
        Some(_) => None,
    }
}

/// The device must propose the token's name, if it has one: the controller refuses a CSR
/// for any other id, and without `--device-id` the agent proposes its hostname.
fn enroll_command(authority: &str, token: &str, name: Option<&str>) -> String {
    let mut cmd = format!("pifleet-agent enroll --controller https://{authority} --token {token}");
    if let Some(name) = name {
        // A validated device id: a-z 0-9 and '-', safe in a shell command as is.
        cmd.push_str(" --device-id ");
        cmd.push_str(name);
    }
    cmd
}

/// Creates an enrollment token: single-use, or with `max_uses` a provisioning token.
#[utoipa::path(
    post,
    operation_id = "create_token",
    path = "/api/v1/tokens",
    tag = "tokens",
    request_body = CreateToken,
    responses(
        (status = 201, description = "The token, shown this once", body = CreatedToken),
        (status = "4XX", description = "Invalid request or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(st): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<CreateToken>,
) -> Result<(StatusCode, axum::Json<CreatedToken>), Problem> {
    let max = st.cfg.enrollment.max_token_ttl_s;
    let ttl_s = req.ttl_s.unwrap_or(DEFAULT_TTL_S.min(max));
    if ttl_s < 1 || ttl_s > max {
        return Err(Problem::bad_request(format!(
            "ttl_s must be between 1 and {max} (enrollment.max_token_ttl_s)"
        )));
    }
    let name = req.name.as_deref().map(device_id).transpose()?;
    let labels = labels::from_map(&req.labels.unwrap_or_default())?;
    let spec = tokens::TokenSpec {
        ttl: Duration::from_secs(ttl_s),
        name: name.as_ref().map(ToString::to_string),
        labels,
        max_uses: req.max_uses,
        require_approval: req.require_approval,
    };
    let created = tokens::create_token(&st.dd, &st.store, max, &spec).await?;
    let authority = controller_authority(headers.get(header::HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_else(|| format!("<controller-host>:{}", st.cfg.https.listen.port()));
    let token = created.token.to_string();
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedToken {
            enroll_command: enroll_command(&authority, &token, name.as_ref().map(|n| n.as_str())),
            id: created.id,
            token,
            expires_at: created.expires_at_ms,
        }),
    ))
}

/// Lists enrollment tokens, newest first.
#[utoipa::path(
    get,
    operation_id = "list_tokens",
    path = "/api/v1/tokens",
    tag = "tokens",
    responses(
        (status = 200, description = "All tokens", body = [TokenInfo]),
        Refused,
    )
)]
pub async fn list(State(st): State<AppState>) -> Result<axum::Json<Vec<TokenInfo>>, Problem> {
    let now = now_ms();
    let tokens = st
        .store
        .list_tokens()
        .await?
        .into_iter()
        .map(|t| TokenInfo {
            state: state(&t, now),
            id: t.id,
            name: t.name,
            labels: t.labels,
            created_at: t.created_at,
            expires_at: t.expires_at,
            used_by: t.used_by,
            used_at: t.used_at,
            max_uses: t.max_uses,
            uses: t.uses,
            require_approval: t.require_approval,
        })
        .collect();
    Ok(axum::Json(tokens))
}

/// Revokes an unused token.
#[utoipa::path(
    delete,
    operation_id = "revoke_token",
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    params(("id" = String, Path, description = "Token id, 12 lowercase hex digits", pattern = r"^[0-9a-f]{12}$")),
    responses(
        (status = 204, description = "Revoked"),
        (status = "4XX", description = "Invalid id, no unused token with this id, or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn revoke(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let valid = id.len() == 12
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !valid {
        return Err(Problem::bad_request(
            "a token id is 12 lowercase hex digits",
        ));
    }
    if st.store.revoke_token(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no unused token {id}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_from_host_header() {
        let cases = [
            (Some("ctl.example:8443"), Some("ctl.example:8443")),
            (Some("ctl.example"), Some("ctl.example:443")),
            (Some("127.0.0.1:40123"), Some("127.0.0.1:40123")),
            (Some("[::1]:8443"), Some("[::1]:8443")),
            (Some("[::1]"), Some("[::1]:443")),
            (Some("::1"), None),
            (Some("h:0"), None),
            (Some("h:"), None),
            (Some("h:+1"), None),
            (Some("[::1]x"), None),
            (Some("[zz]:1"), None),
            (Some("evil;rm -rf /"), None),
            (Some("a@b"), None),
            (Some("$(id)"), None),
            (Some(""), None),
            (None, None),
        ];
        for (host, want) in cases {
            assert_eq!(controller_authority(host).as_deref(), want, "{host:?}");
        }
        assert_eq!(
            enroll_command("h:1", "tok", None),
            "pifleet-agent enroll --controller https://h:1 --token tok"
        );
        assert_eq!(
            enroll_command("h:1", "tok", Some("pi-7")),
            "pifleet-agent enroll --controller https://h:1 --token tok --device-id pi-7"
        );
    }

    #[test]
    fn token_states() {
        let t = TokenRow {
            id: "abc".into(),
            name: None,
            labels: Default::default(),
            created_at: 0,
            expires_at: 100,
            used_at: None,
            used_by: None,
            revoked_at: None,
            max_uses: None,
            uses: 0,
            require_approval: false,
        };
        assert_eq!(state(&t, 50), TokenState::Unused);
        let provisioning = |uses| TokenRow {
            max_uses: Some(20),
            uses,
            ..t.clone()
        };
        assert_eq!(state(&provisioning(19), 50), TokenState::Unused);
        assert_eq!(state(&provisioning(20), 50), TokenState::Used, "all used");
        assert_eq!(state(&t, 100), TokenState::Expired);
        let used = TokenRow {
            used_at: Some(10),
            used_by: Some("pi-1".into()),
            ..t.clone()
        };
        assert_eq!(state(&used, 500), TokenState::Used);
        let revoked = TokenRow {
            revoked_at: Some(20),
            ..t
        };
        assert_eq!(state(&revoked, 50), TokenState::Revoked);
    }
}
