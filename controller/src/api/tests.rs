//! Unit tests of the parent module.
use super::*;
use std::collections::BTreeSet;

/// The router (through its OpenAPI document) and the permission table list exactly the
/// same routes, so no route escapes the guard's table and no entry is stale.
#[test]
fn every_route_is_in_the_permission_table_and_back() {
    let (_, doc) = api_routes();
    let mut documented = BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ] {
            if op.is_some() {
                documented.insert((method.to_owned(), path.clone()));
            }
        }
    }
    documented.insert(("GET".to_owned(), "/api/v1/openapi.json".to_owned()));
    let table: BTreeSet<(String, String)> = rbac::ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(documented, table);
}

#[test]
fn operation_ids_are_unique() {
    let (_, doc) = api_routes();
    let mut seen = BTreeSet::new();
    for item in doc.paths.paths.values() {
        for op in [&item.get, &item.post, &item.put, &item.patch, &item.delete]
            .into_iter()
            .flatten()
        {
            let id = op.operation_id.clone().unwrap_or_default();
            assert!(
                !id.is_empty() && seen.insert(id.clone()),
                "operation id {id:?}"
            );
        }
    }
}

#[test]
fn public_operations_declare_no_security() {
    let (_, doc) = api_routes();
    for r in rbac::ROUTES.iter().filter(|r| r.perm == Permission::Public) {
        if r.path == "/api/v1/openapi.json" {
            continue;
        }
        let item = &doc.paths.paths[r.path];
        let op = match r.method {
            "POST" => item.post.as_ref(),
            _ => item.get.as_ref(),
        };
        let op = op.unwrap_or_else(|| panic!("{} {} documented", r.method, r.path));
        let sec = op.security.as_ref().map(|s| s.len());
        assert_eq!(
            sec,
            Some(1),
            "{} {} must say security(())",
            r.method,
            r.path
        );
    }
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let proxy: IpAddr = "10.0.0.5".parse().unwrap();
    let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
    let mut h = axum::http::HeaderMap::new();
    h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.7".parse().unwrap());
    // Right-most untrusted hop is the client.
    assert_eq!(
        resolve_client(proxy, &h, &trusted),
        "203.0.113.9".parse::<IpAddr>().unwrap()
    );
    // Not from a trusted proxy: the header is ignored.
    let stranger: IpAddr = "198.51.100.1".parse().unwrap();
    assert_eq!(resolve_client(stranger, &h, &trusted), stranger);
    // Trust off by default.
    assert_eq!(resolve_client(proxy, &h, &[]), proxy);
    // A client cannot hide behind a spoofed left-most entry.
    h.insert("x-forwarded-for", "1.2.3.4, 198.51.100.77".parse().unwrap());
    assert_eq!(
        resolve_client(proxy, &h, &trusted),
        "198.51.100.77".parse::<IpAddr>().unwrap()
    );
    // Garbage: the peer.
    h.insert("x-forwarded-for", "not-an-ip".parse().unwrap());
    assert_eq!(resolve_client(proxy, &h, &trusted), proxy);
}
