//! What connections that have not sent a request yet may hold on the HTTPS listener: each
//! source (here loopback addresses other than 127.0.0.1; Linux routes all of 127/8 to lo)
//! gets a share of the pre-authentication budget and is closed at once past it, all
//! connections together are bounded by `https.max_connections`, and a connection that sends
//! no request head within `https.header_timeout_ms` (first or next) is closed. Others keep
//! being served throughout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use pifleet_tests::api::Api;
use pifleet_tests::harness::{Controller, wait_for};
use pifleet_tests::logs::log_entries;
use pifleet_tests::mqtt::client_tls;
use pifleet_tests::promkit::value;
use rustls_pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// A TCP connection to `to` from the local address `from` that sends nothing.
async fn idle_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    s.connect(to).await.unwrap()
}

/// Whether the controller has closed `s` (end of stream or reset); never waits long.
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(5), s.read(&mut b)).await {
        Err(_) => false,
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) => panic!("the controller sent data to a client that sent nothing"),
    }
}

/// How many of `socks` the controller has closed by now (a closed one stays closed).
async fn count_closed(socks: &mut [TcpStream], seen: &mut [bool]) -> usize {
    for (s, c) in socks.iter_mut().zip(seen.iter_mut()) {
        if !*c {
            *c = closed(s).await;
        }
    }
    seen.iter().filter(|c| **c).count()
}

/// An admin API client whose connections come from the local address `from`. It keeps no idle
/// connection (a pooled one, connected but without a request yet, would count as
/// pre-authentication at the controller and make its gauge depend on the client's pool).
fn api_from(ctl: &Controller, from: &str) -> Api {
    let mut tls = client_tls(&ctl.ca_path(), None).unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve("localhost", ctl.https)
        .local_address(from.parse::<IpAddr>().unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    Api {
        client,
        base: format!("https://localhost:{}", ctl.https.port()),
    }
}

/// The controller's metrics, scraped from 127.0.0.1 (in `metrics.scrape_allow`).
async fn metrics(api: &Api) -> String {
    let r = api.get("/metrics", None).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    r.text
}

/// "https connection refused" log lines: (source, reason).
fn refusals(ctl: &Controller) -> Vec<(String, String)> {
    log_entries(ctl)
        .into_iter()
        .filter(|e| e["message"] == "https connection refused")
        .map(|e| {
            (
                e["source"].as_str().unwrap_or("").to_owned(),
                e["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_past_a_sources_share_are_closed_at_once() {
    const IDLE: usize = 20;
    const SHARE: usize = 4;
    let ctl = Controller::start_with(&format!(
        "[https]\npreauth_per_source = {SHARE}\nhandshake_timeout_ms = 30000\n\
         [metrics]\nscrape_allow = [\"127.0.0.1/32\"]"
    ))
    .await
    .unwrap();
    let api = api_from(&ctl, "127.0.0.1");

    let started = Instant::now();
    let mut socks = Vec::new();
    for _ in 0..IDLE {
        socks.push(idle_from("127.0.0.2", ctl.https).await);
    }
    let state = Arc::new(tokio::sync::Mutex::new((socks, vec![false; IDLE])));
    let excess_closed = wait_for(
        Duration::from_secs(5),
        "the excess connections closed",
        || {
            let state = state.clone();
            async move {
                let mut g = state.lock().await;
                let (socks, seen) = &mut *g;
                (count_closed(socks, seen).await >= IDLE - SHARE).then_some(())
            }
        },
    )
    .await;
    if let Err(e) = excess_closed {
        panic!("{e}: long before the 30 s handshake timeout\n{}", ctl.log());
    }
    let (mut socks, mut seen) = Arc::try_unwrap(state).unwrap().into_inner();
    assert_eq!(
        count_closed(&mut socks, &mut seen).await,
        IDLE - SHARE,
        "after {:?}",
        started.elapsed()
    );

    // The admitted ones stay open (their handshake may take 30 s) ...
    let mut open: Vec<TcpStream> = socks
        .into_iter()
        .zip(&seen)
        .filter(|(_, c)| !**c)
        .map(|(s, _)| s)
        .collect();
    for s in &mut open {
        assert!(!closed(s).await, "an admitted connection was closed");
    }
    // ... and other sources are served meanwhile.
    let r = api.get("/healthz", None).await.unwrap();
    assert_eq!((r.status, r.text.as_str()), (200, "ok"));
    let text = metrics(&api).await;
    let per_source = "pifleet_https_refused_total{reason=\"per_source\"}";
    assert_eq!(
        value(&text, per_source),
        Some((IDLE - SHARE) as f64),
        "{text}"
    );
    // Only the admitted idle connections stay pre-authentication; the scrapes' own connections
    // (one per request) leave the gauge once the server has seen them go, which on a loaded
    // machine can come after the next scrape.
    let preauth = wait_for(
        Duration::from_secs(10),
        "only the admitted idle connections pre-auth",
        || {
            let api = &api;
            async move {
                let text = metrics(api).await;
                (value(&text, "pifleet_https_preauth_connections") == Some(SHARE as f64))
                    .then_some(())
            }
        },
    )
    .await;
    if let Err(e) = preauth {
        panic!("{e}\n{}", metrics(&api).await);
    }
    let logged = refusals(&ctl);
    assert_eq!(logged.len(), IDLE - SHARE, "{logged:?}");
    assert!(
        logged
            .iter()
            .all(|(s, r)| s == "127.0.0.2" && r == "per_source"),
        "{logged:?}"
    );

    // Once its idle connections are gone, the source is welcome again.
    drop(open);
    let again = api_from(&ctl, "127.0.0.2");
    wait_for(Duration::from_secs(10), "127.0.0.2 served again", || {
        let again = again.clone();
        async move {
            let r = again.get("/healthz", None).await.ok()?;
            (r.status == 200).then_some(())
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_at_accept() {
    let ctl = Controller::start_with(
        "[https]\nmax_connections = 2\npreauth_max = 2\npreauth_per_source = 2\n\
         header_timeout_ms = 60000\n\
         [metrics]\nscrape_allow = [\"127.0.0.1/32\"]",
    )
    .await
    .unwrap();
    // One connection that has sent a request and stays open (keep-alive) ...
    let api = Api::new(&ctl).unwrap();
    assert_eq!(api.get("/healthz", None).await.unwrap().status, 200);
    // ... and one that has sent nothing: the total is reached, though the pre-auth budget
    // has room.
    let idle = idle_from("127.0.0.2", ctl.https).await;
    let mut third = idle_from("127.0.0.3", ctl.https).await;
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut b))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "a connection past max_connections stayed open\n{}",
                ctl.log()
            )
        });
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // The connection already open still works, on the same keep-alive connection.
    let text = metrics(&api).await;
    assert_eq!(
        value(
            &text,
            "pifleet_https_refused_total{reason=\"max_connections\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "pifleet_https_connections"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        refusals(&ctl),
        [("127.0.0.3".to_owned(), "max_connections".to_owned())]
    );

    drop(idle);
    let other = api_from(&ctl, "127.0.0.3");
    wait_for(Duration::from_secs(10), "a new connection served", || {
        let other = other.clone();
        async move {
            let r = other.get("/healthz", None).await.ok()?;
            (r.status == 200).then_some(())
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_request_head_are_closed_after_header_timeout_ms() {
    let ctl = Controller::start_with("[https]\nheader_timeout_ms = 300")
        .await
        .unwrap();
    let tls = Arc::new(client_tls(&ctl.ca_path(), None).unwrap());
    let connect = || async {
        let tcp = TcpStream::connect(ctl.https).await.unwrap();
        TlsConnector::from(tls.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    };

    // A handshake, then nothing: closed after the header timeout, not kept.
    let mut silent = connect().await;
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut b))
        .await
        .expect("a silent connection outlived the 300 ms header timeout by seconds");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

    // One request, answered; then the idle keep-alive connection is closed the same way.
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(connect().await))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get("/healthz")
        .header("host", format!("localhost:{}", ctl.https.port()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("an idle keep-alive connection outlived the 300 ms header timeout by seconds")
        .unwrap()
        .ok();
}
