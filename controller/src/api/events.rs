//! `GET /api/v1/events`: the dashboard's live stream (server-sent events). It pushes the
//! fleet totals whenever they change, and for the devices the client watches (the page it
//! shows) their summaries and their commands' status changes, at most once a second each.
//! Watched devices' new capabilities and unit states come as `details` events.
//! The stream ends when the access token expires or the session ends, so a signed-out or
//! disabled user stops receiving at once; the client refreshes and reconnects.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use utoipa::IntoParams;

use super::AppState;
use super::extract::{Principal, Query};
use crate::api::problem::{Problem, ProblemDoc};
use crate::live::Change;
use crate::model::commands::CommandSummary;
use crate::model::devices::{DeviceCapabilities, ServiceState};

/// Devices one stream may watch.
pub const MAX_WATCHED: usize = 500;
/// Changes are coalesced and sent this often.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// The session is re-read this often; a revoked one ends the stream.
const SESSION_CHECK_EVERY: Duration = Duration::from_secs(10);
/// Keep-alive comments, so proxies do not close a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Which devices to follow.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Comma-separated device ids (at most 500) whose changes to receive.
    pub devices: Option<String>,
}

fn watched(q: &EventsQuery) -> Result<BTreeSet<String>, Problem> {
    let Some(list) = q.devices.as_deref().filter(|s| !s.is_empty()) else {
        return Ok(BTreeSet::new());
    };
    let ids: Vec<&str> = list.split(',').collect();
    if ids.len() > MAX_WATCHED {
        return Err(Problem::bad_request(format!(
            "devices lists at most {MAX_WATCHED} ids"
        )));
    }
    ids.into_iter()
        .map(|id| super::params::device_id(id).map(|d| d.as_str().to_owned()))
        .collect()
}

/// Live updates as server-sent events: `fleet` (totals), `device` (a watched device's
/// summary, as in the device list), `details` (a watched device's capabilities and unit
/// states, as in the device detail) and `command` (a command of a watched device, as in the
/// command list).
#[utoipa::path(
    get,
    operation_id = "events",
    path = "/api/v1/events",
    tag = "devices",
    params(EventsQuery),
    responses(
        (status = 200, description = "An event stream: `fleet`, `device`, `details` and `command` events with JSON data", content_type = "text/event-stream", body = String),
        (status = "4XX", description = "Invalid device list or not permitted", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn events(
    State(st): State<AppState>,
    principal: Principal,
    Query(q): Query<EventsQuery>,
) -> Result<Response, Problem> {
    let watched = watched(&q)?;
    let (tx, rx) = mpsc::channel::<Event>(16);
    tokio::spawn(pump(st, principal, watched, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// A `details` event: what changed of a device's capabilities and unit states.
#[derive(Debug, serde::Serialize)]
struct DeviceDetails {
    id: String,
    capabilities: Option<DeviceCapabilities>,
    services: Vec<ServiceState>,
    services_at: Option<i64>,
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Option<Event> {
    Event::default().event(name).json_data(data).ok()
}

/// Feeds one stream until the client goes away, the token expires or the session ends.
async fn pump(
    st: AppState,
    principal: Principal,
    watched: BTreeSet<String>,
    tx: mpsc::Sender<Event>,
) {
    let mut changes = st.live.subscribe();
    let mut summary = st.live.summary();
    let ends_in = Duration::from_millis(
        u64::try_from(principal.token_expires_at.saturating_mul(1000) - crate::store::now_ms())
            .unwrap_or(0),
    );
    let end = tokio::time::sleep(ends_in);
    tokio::pin!(end);
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let mut session_check = tokio::time::interval(SESSION_CHECK_EVERY);
    session_check.tick().await;

    // Start in sync: the totals and every watched device as they are now (read afresh: the
    // shared totals may be up to a second old).
    summary.borrow_and_update();
    let first = st.store.fleet_summary().await.ok();
    if let Some(e) = first.and_then(|s| json_event("fleet", &s))
        && tx.send(e).await.is_err()
    {
        return;
    }
    let mut devices: BTreeSet<String> = watched.clone();
    let mut commands: BTreeSet<String> = BTreeSet::new();
    let mut details: BTreeSet<String> = BTreeSet::new();

    loop {
        tokio::select! {
            _ = &mut end => return,
            _ = tx.closed() => return,
            _ = session_check.tick() => {
                match st.store.session_user(&principal.session_id, principal.user_id, crate::store::now_ms()).await {
                    Ok(Some(_)) => {}
                    _ => return,
                }
            }
            r = summary.changed() => {
                if r.is_err() {
                    return;
                }
                let s = *summary.borrow_and_update();
                if let Some(e) = s.and_then(|s| json_event("fleet", &s))
                    && tx.send(e).await.is_err()
                {
                    return;
                }
            }
            r = changes.recv() => match r {
                Ok(Change::Devices(ids)) => {
                    devices.extend(ids.iter().filter(|id| watched.contains(*id)).cloned());
                }
                Ok(Change::Details(ids)) => {
                    details.extend(ids.iter().filter(|id| watched.contains(*id)).cloned());
                }
                Ok(Change::Command { device, id }) => {
                    if watched.contains(&device) {
                        commands.insert(id);
                    }
                }
                Ok(Change::Rollout(_)) => {}
                // Too slow to keep up: resend everything watched.
                Err(broadcast::error::RecvError::Lagged(_)) => devices.extend(watched.iter().cloned()),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = flush.tick() => {
                if !send_pending(&st, &tx, &mut devices, &mut commands, &mut details).await {
                    return;
                }
            }
        }
    }
}

/// Sends the pending device and command events; false when the client is gone.
async fn send_pending(
    st: &AppState,
    tx: &mpsc::Sender<Event>,
    devices: &mut BTreeSet<String>,
    commands: &mut BTreeSet<String>,
    details: &mut BTreeSet<String>,
) -> bool {
    for id in std::mem::take(details) {
        match st.store.device_detail(&id).await {
            Ok(Some(d)) => {
                let data = DeviceDetails {
                    id: d.summary.id,
                    capabilities: d.capabilities,
                    services: d.services,
                    services_at: d.services_at,
                };
                if let Some(e) = json_event("details", &data)
                    && tx.send(e).await.is_err()
                {
                    return false;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "live device details failed"),
        }
    }
    if !devices.is_empty() {
        let ids: Vec<String> = std::mem::take(devices).into_iter().collect();
        match st.store.device_summaries(&ids).await {
            Ok(list) => {
                for d in list {
                    if let Some(e) = json_event("device", &d)
                        && tx.send(e).await.is_err()
                    {
                        return false;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "live device summaries failed"),
        }
    }
    for id in std::mem::take(commands) {
        let row = match st.store.command(&id).await {
            Ok(Some(row)) => row,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "live command read failed");
                continue;
            }
        };
        if let Some(e) = CommandSummary::try_from(&row)
            .ok()
            .and_then(|c| json_event("command", &c))
            && tx.send(e).await.is_err()
        {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(devices: &str) -> EventsQuery {
        EventsQuery {
            devices: Some(devices.to_owned()),
        }
    }

    #[test]
    fn watched_devices_are_validated_and_bounded() {
        assert!(watched(&EventsQuery { devices: None }).unwrap().is_empty());
        assert!(watched(&q("")).unwrap().is_empty());
        let w = watched(&q("pi-b,pi-a,pi-b")).unwrap();
        assert_eq!(w.into_iter().collect::<Vec<_>>(), ["pi-a", "pi-b"]);
        assert_eq!(watched(&q("pi-a,NOT AN ID")).unwrap_err().status, 400);
        let many: Vec<String> = (0..=MAX_WATCHED).map(|i| format!("pi-{i}")).collect();
        assert_eq!(watched(&q(&many.join(","))).unwrap_err().status, 400);
    }
}
