//! Unit tests of the parent module.
use super::*;

fn query(label: Option<&str>, limit: Option<i64>, offset: Option<i64>) -> DeviceQuery {
    DeviceQuery {
        label: label.map(str::to_owned),
        limit,
        offset,
        ..DeviceQuery::default()
    }
}

#[test]
fn device_query_bounds() {
    let f = query(None, None, None).validate().unwrap();
    assert_eq!(
        (f.limit, f.offset, f.sort, f.order),
        (50, 0, DeviceSort::Id, SortOrder::Asc)
    );
    for (limit, offset) in [
        (Some(0), None),
        (Some(501), None),
        (Some(-1), None),
        (None, Some(-1)),
    ] {
        assert!(
            query(None, limit, offset).validate().is_err(),
            "{limit:?} {offset:?}"
        );
    }
    assert!(query(Some("x"), None, None).validate().is_err());
    let q = DeviceQuery {
        q: Some("PI-".into()),
        ..DeviceQuery::default()
    };
    assert_eq!(q.validate().unwrap().q.as_deref(), Some("pi-"));
    let q = DeviceQuery {
        q: Some("x".repeat(256)),
        ..DeviceQuery::default()
    };
    assert!(q.validate().is_err());
}

fn hq(from: Option<i64>, to: Option<i64>, points: Option<i64>) -> HistoryQuery {
    HistoryQuery { from, to, points }
}

#[test]
fn history_buckets() {
    let now = 1_700_000_000_000;
    let p = plan_history(&hq(None, None, None), now).unwrap();
    assert_eq!((p.from, p.to, p.bucket_ms), (now - 3_600_000, now, 10_000));
    // Rounds up, so `points` buckets always cover the range.
    let p = plan_history(&hq(Some(0), Some(1_000), Some(3)), now).unwrap();
    assert_eq!(p.bucket_ms, 334);
    let p = plan_history(&hq(Some(0), Some(5), Some(2000)), now).unwrap();
    assert_eq!(p.bucket_ms, 1);
    let p = plan_history(&hq(Some(0), Some(MAX_HISTORY_MS), Some(1)), now).unwrap();
    assert_eq!(p.bucket_ms, MAX_HISTORY_MS);
    let bad = [
        hq(Some(10), Some(10), None),
        hq(Some(11), Some(10), None),
        hq(Some(0), Some(MAX_HISTORY_MS + 1), None),
        hq(Some(-1), Some(10), None),
        hq(None, Some(i64::MIN), None),
        hq(Some(0), Some(i64::MAX), None),
        hq(Some(0), Some(10), Some(0)),
        hq(Some(0), Some(10), Some(2001)),
        hq(Some(now + 1), None, None),
    ];
    for q in bad {
        assert!(plan_history(&q, now).is_err(), "{q:?}");
    }
}

#[test]
fn openapi_documents_the_fleet_routes() {
    let (_, doc) = crate::api::api_routes();
    let doc = serde_json::to_value(&doc).unwrap();
    let ops = [
        ("/api/v1/devices", "get", "list_devices"),
        ("/api/v1/devices/{id}", "get", "show_device"),
        ("/api/v1/devices/{id}/telemetry", "get", "device_telemetry"),
        ("/api/v1/devices/{id}/history", "get", "device_history"),
        ("/api/v1/devices/{id}/labels", "put", "set_device_labels"),
        ("/api/v1/devices/{id}/revoke", "post", "revoke_device"),
        ("/api/v1/commands", "post", "send_command"),
        ("/api/v1/commands", "get", "list_commands"),
        ("/api/v1/commands/{id}", "get", "show_command"),
        ("/api/v1/commands/{id}/cancel", "post", "cancel_command"),
        ("/api/v1/tokens", "post", "create_token"),
        ("/api/v1/tokens", "get", "list_tokens"),
        ("/api/v1/tokens/{id}", "delete", "revoke_token"),
        ("/api/v1/audit", "get", "list_audit"),
        ("/api/v1/audit/verify", "get", "verify_audit"),
    ];
    for (path, method, id) in ops {
        let op = &doc["paths"][path][method];
        assert_eq!(op["operationId"], id, "{method} {path}");
        assert!(op["responses"]["4XX"].is_object(), "{method} {path}");
    }
    let action = &doc["components"]["schemas"]["ActionSpec"]["oneOf"];
    assert_eq!(action.as_array().map(Vec::len), Some(6));
    assert!(
        action
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["additionalProperties"] == false)
    );
}
