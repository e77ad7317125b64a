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

/// Who the client is, for a chain of (peer, X-Forwarded-For lines, trusted networks).
#[test]
fn forwarded_for_chains() {
    const BAD: &str = "400";
    let proxies = ["10.0.0.0/24"];
    let two_tiers = ["10.0.0.0/24", "192.0.2.0/24"];
    let v6 = ["2001:db8:ff::/48"];
    #[rustfmt::skip]
    let cases: &[(&str, &[&str], &[&str], &str)] = &[
        // Not from a trusted proxy: the peer, whatever the header says (junk included).
        ("198.51.100.1", &["203.0.113.9"], &proxies, "198.51.100.1"),
        ("198.51.100.1", &["junk"], &proxies, "198.51.100.1"),
        ("10.0.0.5", &["203.0.113.9"], &[], "10.0.0.5"),
        // From a proxy without a header: the proxy is the client.
        ("10.0.0.5", &[], &proxies, "10.0.0.5"),
        // The right-most untrusted entry; what is left of it is never parsed.
        ("10.0.0.5", &["203.0.113.9"], &proxies, "203.0.113.9"),
        ("10.0.0.5", &["1.2.3.4, 203.0.113.9"], &proxies, "203.0.113.9"),
        ("10.0.0.5", &["junk, 203.0.113.9"], &proxies, "203.0.113.9"),
        ("10.0.0.5", &["junk,, ,203.0.113.9"], &proxies, "203.0.113.9"),
        ("10.0.0.5", &["203.0.113.9, 10.0.0.7"], &proxies, "203.0.113.9"),
        ("10.0.0.5", &["junk, 203.0.113.9, 192.0.2.4, 10.0.0.7"], &two_tiers, "203.0.113.9"),
        ("10.0.0.5", &["203.0.113.9, 192.0.2.4"], &proxies, "192.0.2.4"),
        // Several header lines are one list, in order.
        ("10.0.0.5", &["junk", "203.0.113.9"], &proxies, "203.0.113.9"),
        ("10.0.0.5", &["203.0.113.9", "10.0.0.7"], &proxies, "203.0.113.9"),
        ("10.0.0.5", &["203.0.113.9, 10.0.0.8", "10.0.0.7"], &proxies, "203.0.113.9"),
        // Every entry a proxy: the left-most entry.
        ("10.0.0.5", &["10.0.0.9, 10.0.0.7"], &proxies, "10.0.0.9"),
        // Ports and brackets; IPv6; IPv4-mapped addresses count as IPv4.
        ("10.0.0.5", &["203.0.113.9:4711"], &proxies, "203.0.113.9"),
        ("10.0.0.5", &["[2001:db8::1]:443"], &proxies, "2001:db8::1"),
        ("10.0.0.5", &["[2001:db8::1]"], &proxies, "2001:db8::1"),
        ("10.0.0.5", &[" 2001:db8::1 "], &proxies, "2001:db8::1"),
        ("10.0.0.5", &["::ffff:203.0.113.9"], &proxies, "203.0.113.9"),
        ("::ffff:10.0.0.5", &["203.0.113.9"], &proxies, "203.0.113.9"),
        ("::ffff:10.0.0.5", &["::ffff:10.0.0.7"], &proxies, "10.0.0.7"),
        ("2001:db8:ff:1::5", &["2001:db8:1::1, 2001:db8:ff::7"], &v6, "2001:db8:1::1"),
        // A malformed entry before the client is reached: refused, never the peer.
        ("10.0.0.5", &["203.0.113.9, junk"], &proxies, BAD),
        ("10.0.0.5", &["junk"], &proxies, BAD),
        ("10.0.0.5", &[""], &proxies, BAD),
        ("10.0.0.5", &["203.0.113.9,"], &proxies, BAD),
        ("10.0.0.5", &["203.0.113.9, 10.0.0.7, unknown"], &proxies, BAD),
        ("10.0.0.5", &["203.0.113.9", "junk"], &proxies, BAD),
        ("10.0.0.5", &["203.0.113.9, 10.0.0.7:99999"], &proxies, BAD),
        ("10.0.0.5", &["fe80::1%eth0"], &proxies, BAD),
        ("10.0.0.5", &["2001:db8::1:443"], &proxies, "2001:db8::1:443"),
        ("10.0.0.5", &["[203.0.113.9]"], &proxies, BAD),
    ];
    for (peer, lines, trusted, want) in cases {
        let mut h = axum::http::HeaderMap::new();
        for l in *lines {
            h.append("x-forwarded-for", l.parse().unwrap());
        }
        let trusted: Vec<ipnet::IpNet> = trusted.iter().map(|n| n.parse().unwrap()).collect();
        let got = match resolve_client(peer.parse().unwrap(), &h, &trusted) {
            Ok(ip) => ip.to_string(),
            Err(_) => BAD.to_owned(),
        };
        assert_eq!(&got, want, "peer {peer}, X-Forwarded-For {lines:?}");
    }
}

#[test]
fn forwarded_for_that_is_not_ascii_is_refused() {
    let proxy: IpAddr = "10.0.0.5".parse().unwrap();
    let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
    let mut h = axum::http::HeaderMap::new();
    h.append(
        "x-forwarded-for",
        HeaderValue::from_bytes(b"203.0.113.9, \xff").unwrap(),
    );
    assert_eq!(
        resolve_client(proxy, &h, &trusted),
        Err(ForwardedError::NotAscii)
    );
    // Even when the bad bytes sit left of the client: the header is not a list of entries.
    let mut h = axum::http::HeaderMap::new();
    h.append(
        "x-forwarded-for",
        HeaderValue::from_bytes(b"\xc3\xa9, 203.0.113.9").unwrap(),
    );
    assert_eq!(
        resolve_client(proxy, &h, &trusted),
        Err(ForwardedError::NotAscii)
    );
    // From an untrusted peer nothing is read.
    let stranger: IpAddr = "198.51.100.1".parse().unwrap();
    assert_eq!(resolve_client(stranger, &h, &trusted), Ok(stranger));
}

/// Every operation but the health checks documents its refusals as problem documents.
#[test]
fn every_operation_documents_its_refusals() {
    let (_, doc) = api_routes();
    let json = serde_json::to_value(&doc).unwrap();
    for (path, item) in json["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let refused = &op["responses"]["4XX"];
            assert!(
                refused["content"]["application/problem+json"]["schema"].is_object(),
                "{method} {path}: {refused}"
            );
        }
    }
}
