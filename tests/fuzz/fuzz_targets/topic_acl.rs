//! The topic ACL and the gateway's per-packet decision. The input is a device id, a zero
//! byte, then topics or filters, one per line (any bytes). Properties: a device may publish
//! on exactly its own `up/<kind>` topics and subscribe to exactly its own `down/#`,
//! `down/+` and `down/<kind>` filters; the gateway accepts a PUBLISH exactly when the ACL
//! does and the payload fits the kind; a SUBSCRIBE exactly when every filter is allowed;
//! a parsed topic prints back as the same string.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pifleet_shared::DeviceId;
use pifleet_shared::acl::{Refused, check_publish, check_subscribe};
use pifleet_shared::topic::{Direction, Kind, Topic, may_publish, may_subscribe};

fn allowed_publish(device: &DeviceId, topic: &str) -> Option<Kind> {
    Kind::ALL
        .into_iter()
        .filter(|k| k.direction() == Direction::Up)
        .find(|k| Topic::new(device.clone(), *k).to_string() == topic)
}

fn allowed_subscribe(device: &DeviceId, filter: &str) -> bool {
    let down = Kind::ALL
        .into_iter()
        .filter(|k| k.direction() == Direction::Down)
        .map(|k| k.as_str());
    ["#", "+"]
        .into_iter()
        .chain(down)
        .any(|last| format!("fleet/{device}/down/{last}") == filter)
}

fuzz_target!(|data: &[u8]| {
    let Some((&size, data)) = data.split_first() else {
        return;
    };
    let (id, rest) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let device = std::str::from_utf8(id)
        .ok()
        .and_then(|s| DeviceId::parse(s).ok())
        .unwrap_or_else(|| DeviceId::parse("pi-01").expect("a valid id"));
    let lines: Vec<&[u8]> = rest.split(|b| *b == b'\n').collect();
    // Payload sizes around the kinds' limits.
    let payload_len = usize::from(size) * 257;
    for line in &lines {
        let published = check_publish(&device, line, payload_len);
        let Ok(topic) = std::str::from_utf8(line) else {
            assert_eq!(published, Err(Refused::TopicNotUtf8));
            continue;
        };
        if let Ok(t) = Topic::parse(topic) {
            assert_eq!(t.to_string(), topic, "a parsed topic prints differently");
        }
        let acl = may_publish(&device, topic);
        assert_eq!(
            acl.as_ref().ok().copied(),
            allowed_publish(&device, topic),
            "publish {topic:?}"
        );
        match (acl, published) {
            (Ok(k), Ok(g)) => assert!(k == g && payload_len <= k.max_payload()),
            (Ok(k), Err(Refused::Oversize { kind, len })) => {
                assert!(k == kind && len == payload_len && len > k.max_payload());
            }
            (Err(a), Err(Refused::Publish { denied, .. })) => assert_eq!(a, denied),
            (a, g) => panic!("ACL {a:?} but gateway {g:?} for {topic:?}"),
        }
        let sub = may_subscribe(&device, topic);
        assert_eq!(
            sub.is_ok(),
            allowed_subscribe(&device, topic),
            "subscribe {topic:?}"
        );
    }
    let filters: Vec<&str> = lines
        .iter()
        .filter_map(|l| std::str::from_utf8(l).ok())
        .collect();
    let all = filters.iter().all(|f| allowed_subscribe(&device, f));
    assert_eq!(
        check_subscribe(&device, filters.iter().copied()).is_ok(),
        all
    );
});
