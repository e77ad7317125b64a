//! Rendering, request routing and the bounded responder (in memory and on real sockets).

use std::time::{Duration, Instant};

use pifleet_shared::proto::v1::{Disk, Net, Sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

fn info() -> Info {
    Info {
        device: "pi-01".to_owned(),
        version: "1.2.3".to_owned(),
    }
}

fn sample() -> Sample {
    let disk = |mount: &str, total, used| Disk {
        mount: mount.to_owned(),
        fs: "ext4".to_owned(),
        total_bytes: total,
        used_bytes: used,
    };
    let net = |iface: &str, rx, tx| Net {
        iface: iface.to_owned(),
        rx_bytes: rx,
        tx_bytes: tx,
    };
    Sample {
        seq: 7,
        ts_ms: 1_700_000_000_000,
        cpu_pct: 25.0,
        load1: 0.5,
        load5: 0.25,
        load15: 1.5,
        mem_total_bytes: 4_000_000_000,
        mem_used_bytes: 1_000_000_000,
        swap_total_bytes: 100,
        swap_used_bytes: 0,
        disks: vec![
            disk("/", 32_000_000_000, 9_000_000_000),
            disk("/mnt/a \"b\"\\c\nd", 10, 5),
        ],
        nets: vec![net("eth0", 123, 456), net("wlan0", 7, 8)],
        temp_c: Some(48.5),
        throttled: Some(0x50001),
        uptime_s: 3600,
        spool_dropped: 2,
        spool_backlog: 11,
    }
}

/// The value of the sample line for `series` (name plus labels, exactly).
fn value<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
}

/// Every family appears once, as one block: its HELP, its TYPE, then all its samples.
fn assert_grouped(text: &str) {
    let mut families: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            assert!(!families.contains(&name), "{name} twice:\n{text}");
            families.push(name);
            continue;
        }
        let current = *families.last().expect("a HELP line first");
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            assert!(rest.starts_with(&format!("{current} ")), "{line}:\n{text}");
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        assert_eq!(name, current, "sample outside its family:\n{text}");
    }
}

#[test]
fn before_the_first_sample_only_up_0_and_info() {
    assert_eq!(
        render(&info(), None),
        "# HELP pifleet_device_up 1 once the agent has taken a sample, 0 before its first\n\
         # TYPE pifleet_device_up gauge\npifleet_device_up 0\n\
         # HELP pifleet_agent_info The agent's version and device id\n\
         # TYPE pifleet_agent_info gauge\n\
         pifleet_agent_info{version=\"1.2.3\",device=\"pi-01\"} 1\n"
    );
}

#[test]
fn renders_every_family_once_with_values_and_escaped_labels() {
    let t = render(&info(), Some(&sample()));
    assert_grouped(&t);
    let expect = [
        ("pifleet_device_up", "1"),
        (
            "pifleet_agent_info{version=\"1.2.3\",device=\"pi-01\"}",
            "1",
        ),
        ("pifleet_device_cpu_ratio", "0.25"),
        ("pifleet_device_load1", "0.5"),
        ("pifleet_device_load5", "0.25"),
        ("pifleet_device_load15", "1.5"),
        ("pifleet_device_memory_total_bytes", "4000000000"),
        ("pifleet_device_memory_used_bytes", "1000000000"),
        ("pifleet_device_swap_total_bytes", "100"),
        ("pifleet_device_swap_used_bytes", "0"),
        ("pifleet_device_temperature_celsius", "48.5"),
        ("pifleet_device_throttled", "327681"),
        ("pifleet_device_under_voltage", "1"),
        ("pifleet_device_throttling", "0"),
        (
            "pifleet_device_disk_total_bytes{mount=\"/\"}",
            "32000000000",
        ),
        ("pifleet_device_disk_used_bytes{mount=\"/\"}", "9000000000"),
        (
            "pifleet_device_disk_used_bytes{mount=\"/mnt/a \\\"b\\\"\\\\c\\nd\"}",
            "5",
        ),
        (
            "pifleet_device_network_receive_bytes_total{interface=\"eth0\"}",
            "123",
        ),
        (
            "pifleet_device_network_transmit_bytes_total{interface=\"wlan0\"}",
            "8",
        ),
        ("pifleet_device_uptime_seconds", "3600"),
        ("pifleet_device_spool_backlog_samples", "11"),
        ("pifleet_device_spool_dropped", "2"),
    ];
    for (series, v) in expect {
        assert_eq!(value(&t, series), Some(v), "{series}:\n{t}");
    }
    assert!(t.contains("# TYPE pifleet_device_network_receive_bytes_total counter\n"));
    assert!(t.contains("# TYPE pifleet_device_disk_used_bytes gauge\n"));
    // 21 families, each with one HELP and one TYPE line; 2 disks and 2 interfaces.
    assert_eq!(t.matches("# HELP ").count(), 21, "{t}");
    assert_eq!(t.lines().filter(|l| !l.starts_with('#')).count(), 25, "{t}");
}

#[test]
fn optional_readings_are_left_out_and_bits_decoded() {
    let s = Sample {
        temp_c: None,
        throttled: None,
        disks: Vec::new(),
        nets: Vec::new(),
        ..sample()
    };
    let t = render(&info(), Some(&s));
    assert_grouped(&t);
    for absent in ["temperature", "throttl", "under_voltage", "disk", "network"] {
        assert!(!t.contains(absent), "{absent}:\n{t}");
    }
    let t = render(
        &info(),
        Some(&Sample {
            throttled: Some(0x4),
            ..sample()
        }),
    );
    assert_eq!(value(&t, "pifleet_device_under_voltage"), Some("0"));
    assert_eq!(value(&t, "pifleet_device_throttling"), Some("1"));
    // A CPU share outside 0..=100 never gives a ratio outside 0..=1.
    let t = render(
        &info(),
        Some(&Sample {
            cpu_pct: 150.0,
            ..sample()
        }),
    );
    assert_eq!(value(&t, "pifleet_device_cpu_ratio"), Some("1"));
}

#[test]
fn floats_use_the_text_format_spellings() {
    let mut e = Exposition::default();
    for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.1, -2.0] {
        e.gauge("x", "X.", &[], Value::Float(v));
    }
    e.gauge("y", "Y.", &[("k", "v")], Value::Int(u64::MAX));
    assert_eq!(
        e.finish(),
        "# HELP x X.\n# TYPE x gauge\nx NaN\nx +Inf\nx -Inf\nx 0.1\nx -2\n\
         # HELP y Y.\n# TYPE y gauge\ny{k=\"v\"} 18446744073709551615\n"
    );
}

#[test]
fn routes_by_request_line() {
    let cases: &[(&str, Route)] = &[
        ("GET /metrics HTTP/1.1\r\nHost: pi\r\n\r\n", Route::Metrics),
        ("GET /metrics HTTP/1.0\r\n\r\n", Route::Metrics),
        ("GET /metrics?name[]=x HTTP/1.1\r\n\r\n", Route::Metrics),
        ("GET /metrics HTTP/1.1\n\n", Route::Metrics),
        ("GET / HTTP/1.1\r\n\r\n", Route::NotFound),
        ("GET /metrics/ HTTP/1.1\r\n\r\n", Route::NotFound),
        ("GET /metricsx HTTP/1.1\r\n\r\n", Route::NotFound),
        ("POST /other HTTP/1.1\r\n\r\n", Route::NotFound),
        ("POST /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
        ("HEAD /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
        ("get /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
        ("GET /metrics\r\n\r\n", Route::BadRequest),
        ("GET  /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
        ("GET /metrics HTTP/2\r\n\r\n", Route::BadRequest),
        ("GET metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
        ("G-T /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
        ("\r\n\r\n", Route::BadRequest),
    ];
    for (head, want) in cases {
        assert_eq!(route(head.as_bytes()), *want, "{head:?}");
    }
    assert_eq!(route(b"GET /\xff HTTP/1.1\r\n\r\n"), Route::BadRequest);
}

#[test]
fn finds_the_end_of_the_head() {
    assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
    assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    assert_eq!(head_end(b"\n\r"), None);
}

fn fast() -> Limits {
    Limits {
        io_timeout: Duration::from_millis(300),
        max_head_bytes: 8 * 1024,
        max_connections: 2,
    }
}

fn page(sample: Option<Sample>) -> Page {
    // A receiver keeps the last value after the sender is gone.
    let (_, latest) = watch::channel(sample.map(Arc::new));
    Page {
        info: info(),
        latest,
    }
}

/// Serves one in-memory connection: writes `request` (then keeps its side open) and returns
/// everything the server answered before closing.
async fn exchange(request: &[u8], limits: Limits) -> String {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let page = page(Some(sample()));
    let serving = serve_connection(server, &page, limits);
    let talking = async move {
        client.write_all(request).await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        // Closing ends the server's lingering read at once, as a real scraper does.
        drop(client);
        String::from_utf8(out).unwrap()
    };
    tokio::join!(serving, talking).1
}

fn status(reply: &str) -> &str {
    reply.split(' ').nth(1).unwrap_or_default()
}

fn header<'a>(reply: &'a str, name: &str) -> Option<&'a str> {
    let head = reply.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn get_metrics_is_served_and_the_connection_closed() {
    let reply = exchange(b"GET /metrics HTTP/1.1\r\nHost: pi\r\n\r\n", fast()).await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert_eq!(header(&reply, "content-type"), Some(TEXT_FORMAT));
    assert_eq!(header(&reply, "connection"), Some("close"));
    let (_, body) = reply.split_once("\r\n\r\n").unwrap();
    assert_eq!(
        header(&reply, "content-length"),
        Some(&*body.len().to_string())
    );
    assert_eq!(body, render(&info(), Some(&sample())));
}

#[tokio::test]
async fn other_paths_methods_and_garbage_are_refused() {
    for (req, code) in [
        (&b"GET /other HTTP/1.1\r\n\r\n"[..], "404"),
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "405",
        ),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n", "400"),
    ] {
        let reply = exchange(req, fast()).await;
        assert_eq!(status(&reply), code, "{reply}");
        assert_eq!(header(&reply, "connection"), Some("close"));
        assert!(!reply.contains("pifleet_"), "{reply}");
    }
    let reply = exchange(b"DELETE /metrics HTTP/1.1\r\n\r\n", fast()).await;
    assert_eq!(header(&reply, "allow"), Some("GET"), "{reply}");
}

#[tokio::test]
async fn oversized_heads_are_refused() {
    let mut req = b"GET /metrics HTTP/1.1\r\n".to_vec();
    while req.len() <= 8 * 1024 {
        req.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    req.extend_from_slice(b"\r\n");
    let reply = exchange(&req, fast()).await;
    assert_eq!(status(&reply), "431", "{reply}");
    // Just under the cap is fine.
    let mut req = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    req.resize(8 * 1024 - 4, b'a');
    req.extend_from_slice(b"\r\n\r\n");
    assert_eq!(status(&exchange(&req, fast()).await), "200");
}

#[tokio::test]
async fn slow_clients_time_out() {
    let start = Instant::now();
    let reply = exchange(b"GET /metr", fast()).await;
    assert_eq!(status(&reply), "408", "{reply}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    // A client that sends nothing and goes away gets nothing.
    let (client, server) = tokio::io::duplex(1024);
    drop(client);
    serve_connection(server, &page(None), fast()).await;
}

async fn get(addr: SocketAddr, request: &[u8]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn serves_the_newest_sample_over_tcp_and_caps_connections() {
    let stop = CancellationToken::new();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let exporter = Exporter::start(addr, info(), fast(), stop.clone())
        .await
        .unwrap();
    let addr = exporter.local_addr();
    let req = b"GET /metrics HTTP/1.1\r\nHost: pi\r\n\r\n";

    let reply = get(addr, req).await.unwrap();
    assert_eq!(value(&reply, "pifleet_device_up"), Some("0"), "{reply}");
    assert!(!reply.contains("cpu_ratio"), "{reply}");
    exporter.publish(&sample());
    let newer = Sample {
        seq: 8,
        uptime_s: 3610,
        ..sample()
    };
    exporter.publish(&newer);
    let reply = get(addr, req).await.unwrap();
    assert_eq!(value(&reply, "pifleet_device_up"), Some("1"), "{reply}");
    assert_eq!(value(&reply, "pifleet_device_uptime_seconds"), Some("3610"));

    // Two idle clients hold both slots; a third is closed at once, without an answer.
    let idle1 = TcpStream::connect(addr).await.unwrap();
    let idle2 = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    let third = get(addr, req).await;
    assert!(third.as_ref().map_or(true, String::is_empty), "{third:?}");
    assert!(
        start.elapsed() < Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    // Once they go away, the slots are free again.
    drop((idle1, idle2));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = get(addr, req).await.unwrap_or_default();
        if reply.starts_with("HTTP/1.1 200 OK") {
            break;
        }
        assert!(Instant::now() < deadline, "slots never freed: {reply:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    exporter.stop().await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let e = Exporter::start(addr, info(), Limits::default(), CancellationToken::new())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("cannot listen"),
        "{msg}"
    );
}
