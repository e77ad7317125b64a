//! Roles and the one permission table: every API route is listed here with the permission it
//! needs and the name it is audited under. The request guard looks routes up in this table
//! and refuses any route that is missing from it, so a new route cannot be reachable by
//! accident.

pub use crate::model::role::Role;

impl Role {
    /// Whether this role may use a route that needs `perm`.
    pub fn allows(self, perm: Permission) -> bool {
        match perm {
            Permission::Public | Permission::Session | Permission::Read | Permission::Scrape => {
                true
            }
            Permission::Operate => self >= Role::Operator,
            Permission::Admin => self == Role::Admin,
            // Device routes take no user: only a device certificate opens them.
            Permission::Device => false,
        }
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// No authentication (login, refresh, device enrollment, the OpenAPI document).
    Public,
    /// Any signed-in user, even one who must first change the password or set up MFA.
    Session,
    /// Viewer and up.
    Read,
    /// Operator and up: send and cancel commands.
    Operate,
    /// Admin only.
    Admin,
    /// Prometheus: the scrape token, an address in `metrics.scrape_allow`, or any signed-in
    /// user.
    Scrape,
    /// A device: the connection's client certificate (mutual TLS on the HTTPS listener),
    /// verified against the CA and the CRL, of an enrolled device whose certificate the
    /// database does not list as revoked. The only identity these routes accept: bearer
    /// tokens are never looked at, and no role opens them.
    Device,
}

/// One API route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    /// The axum path template, as `MatchedPath` reports it.
    pub path: &'static str,
    pub perm: Permission,
    /// Name in the audit log for mutating routes (and in logs).
    pub action: &'static str,
}

const fn r(
    method: &'static str,
    path: &'static str,
    perm: Permission,
    action: &'static str,
) -> Route {
    Route {
        method,
        path,
        perm,
        action,
    }
}

use Permission::{Admin, Device, Operate, Public, Read, Scrape, Session};

/// Every guarded route (the API under `/api/v1` and the Prometheus endpoints), and the
/// permission it needs.
pub const ROUTES: &[Route] = &[
    r("GET", "/api/v1/openapi.json", Public, "openapi"),
    r("POST", "/api/v1/enroll", Public, "device.enroll"),
    r("POST", "/api/v1/auth/login", Public, "auth.login"),
    r("POST", "/api/v1/auth/login/mfa", Public, "auth.login_mfa"),
    r("POST", "/api/v1/auth/refresh", Public, "auth.refresh"),
    r("POST", "/api/v1/auth/logout", Session, "auth.logout"),
    r("GET", "/api/v1/whoami", Session, "whoami"),
    r("POST", "/api/v1/me/password", Session, "self.password"),
    r("POST", "/api/v1/me/mfa", Session, "self.mfa_setup"),
    r(
        "POST",
        "/api/v1/me/mfa/confirm",
        Session,
        "self.mfa_confirm",
    ),
    r("GET", "/api/v1/me/sessions", Session, "self.sessions"),
    r(
        "DELETE",
        "/api/v1/me/sessions/{id}",
        Session,
        "self.session_revoke",
    ),
    r("GET", "/api/v1/devices", Read, "device.list"),
    r("GET", "/api/v1/fleet/summary", Read, "fleet.summary"),
    r("GET", "/api/v1/events", Read, "events"),
    r("GET", "/api/v1/devices/{id}", Read, "device.show"),
    r(
        "GET",
        "/api/v1/devices/{id}/telemetry",
        Read,
        "device.telemetry",
    ),
    r(
        "GET",
        "/api/v1/devices/{id}/history",
        Read,
        "device.history",
    ),
    r(
        "GET",
        "/api/v1/devices/{id}/unit-events",
        Read,
        "device.unit_events",
    ),
    r("PUT", "/api/v1/devices/{id}/labels", Admin, "device.labels"),
    r(
        "POST",
        "/api/v1/devices/{id}/revoke",
        Admin,
        "device.revoke",
    ),
    r(
        "POST",
        "/api/v1/devices/{id}/review",
        Admin,
        "device.review",
    ),
    r("POST", "/api/v1/commands", Operate, "command.send"),
    r("GET", "/api/v1/commands", Read, "command.list"),
    r("GET", "/api/v1/commands/{id}", Read, "command.show"),
    r(
        "POST",
        "/api/v1/commands/{id}/cancel",
        Operate,
        "command.cancel",
    ),
    r("POST", "/api/v1/releases", Operate, "release.create"),
    r("GET", "/api/v1/releases", Read, "release.list"),
    r("POST", "/api/v1/releases/git", Operate, "release.create"),
    r("GET", "/api/v1/releases/{id}", Read, "release.show"),
    r("DELETE", "/api/v1/releases/{id}", Admin, "release.delete"),
    r("GET", "/api/v1/devices/{id}/apps", Read, "device.apps"),
    r("POST", "/api/v1/rollouts", Operate, "rollout.create"),
    r("GET", "/api/v1/rollouts", Read, "rollout.list"),
    r("GET", "/api/v1/rollouts/{id}", Read, "rollout.show"),
    r(
        "POST",
        "/api/v1/rollouts/{id}/pause",
        Operate,
        "rollout.pause",
    ),
    r(
        "POST",
        "/api/v1/rollouts/{id}/resume",
        Operate,
        "rollout.resume",
    ),
    r(
        "POST",
        "/api/v1/rollouts/{id}/abort",
        Operate,
        "rollout.abort",
    ),
    r(
        "POST",
        "/api/v1/rollouts/{id}/approve",
        Admin,
        "rollout.approve",
    ),
    r("GET", "/api/v1/approvals", Read, "approval.list"),
    r("GET", "/api/v1/approvals/{id}", Read, "approval.show"),
    r(
        "POST",
        "/api/v1/approvals/{id}/approve",
        Admin,
        "approval.approve",
    ),
    r(
        "POST",
        "/api/v1/approvals/{id}/reject",
        Admin,
        "approval.reject",
    ),
    r("POST", "/api/v1/api-tokens", Admin, "api_token.create"),
    r("GET", "/api/v1/api-tokens", Admin, "api_token.list"),
    r(
        "DELETE",
        "/api/v1/api-tokens/{id}",
        Admin,
        "api_token.revoke",
    ),
    r("POST", "/api/v1/tokens", Admin, "token.create"),
    r("GET", "/api/v1/tokens", Admin, "token.list"),
    r("DELETE", "/api/v1/tokens/{id}", Admin, "token.revoke"),
    r(
        "GET",
        "/api/v1/enrollment-requests",
        Admin,
        "enrollment_request.list",
    ),
    r(
        "POST",
        "/api/v1/enrollment-requests/{id}/accept",
        Admin,
        "enrollment_request.accept",
    ),
    r(
        "POST",
        "/api/v1/enrollment-requests/{id}/reject",
        Admin,
        "enrollment_request.reject",
    ),
    r("GET", "/api/v1/users", Admin, "user.list"),
    r("POST", "/api/v1/users", Admin, "user.create"),
    r("PATCH", "/api/v1/users/{name}", Admin, "user.update"),
    r("DELETE", "/api/v1/users/{name}", Admin, "user.delete"),
    r(
        "POST",
        "/api/v1/users/{name}/reset-mfa",
        Admin,
        "user.reset_mfa",
    ),
    r("GET", "/api/v1/settings/security", Admin, "settings.show"),
    r(
        "PUT",
        "/api/v1/settings/security",
        Admin,
        "settings.security",
    ),
    r("GET", "/api/v1/audit", Admin, "audit.list"),
    r("GET", "/api/v1/audit/verify", Admin, "audit.verify"),
    r("GET", "/api/v1/backups", Admin, "backup.list"),
    r("POST", "/api/v1/backups", Admin, "backup.create"),
    r("GET", "/api/v1/backups/{name}", Admin, "backup.download"),
    r("DELETE", "/api/v1/backups/{name}", Admin, "backup.delete"),
    r("GET", "/api/v1/rotation", Admin, "rotation.status"),
    r("GET", "/api/v1/prometheus/sd", Scrape, "metrics.sd"),
    r("GET", "/metrics", Scrape, "metrics.controller"),
    r("GET", "/metrics/devices/{id}", Scrape, "metrics.device"),
    r(
        "GET",
        "/api/v1/device/releases/{id}/manifest",
        Device,
        "device.release_manifest",
    ),
    r(
        "GET",
        "/api/v1/device/releases/{id}/archive",
        Device,
        "device.release_archive",
    ),
];

/// The table entry for a request, if any.
pub fn route(method: &str, path: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| r.method == method && r.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_rights_below_them() {
        use Permission::*;
        let expect = [
            (Role::Viewer, [true, true, true, false, false]),
            (Role::Operator, [true, true, true, true, false]),
            (Role::Admin, [true, true, true, true, true]),
        ];
        for (role, allowed) in expect {
            for (perm, want) in [Public, Session, Read, Operate, Admin]
                .into_iter()
                .zip(allowed)
            {
                assert_eq!(role.allows(perm), want, "{role} {perm:?}");
            }
            assert!(!role.allows(Device), "{role}");
        }
    }

    #[test]
    fn table_has_no_duplicates_and_roles_parse() {
        for (i, a) in ROUTES.iter().enumerate() {
            assert!(
                !ROUTES[i + 1..]
                    .iter()
                    .any(|b| a.method == b.method && a.path == b.path),
                "duplicate {} {}",
                a.method,
                a.path
            );
        }
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
