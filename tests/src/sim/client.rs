//! One simulated device on the wire, without an MQTT client library's event loop: a TCP
//! socket from its own loopback source address, rustls with the device's certificate, and
//! MQTT 3.1.1 packets encoded by `rumqttc::mqttbytes`. It behaves like the agent: CONNECT
//! (clean session, keep-alive, an Offline last will), SUBSCRIBE to its down topics, a
//! retained Online status, a hello, then QoS 1 telemetry; it answers signed commands, and
//! after any failure or lost session it retries with the agent's own backoff, forever.
//! With `Settings::resend` it also keeps what was not acknowledged and sends it again, like
//! the agent's spool: after a reconnect, and when no acknowledgement came for that long.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pifleet_agent::backoff::Backoff;
use pifleet_agent::config::AgentConfig;
use pifleet_shared::proto::v1;
use pifleet_shared::topic::Kind;
use pifleet_shared::{Topic, codec};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PubAck, Publish, Subscribe,
};
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::state::{AckMode, Shared, wall_us};
use crate::simkit::Responder;

/// Largest packet either side may send (a backlog drain of the agent stays far below).
const MAX_PACKET: usize = 256 * 1024;
/// Telemetry messages awaiting their acknowledgement, at most (older ones are forgotten).
const MAX_PENDING: usize = 256;
/// The same when they are sent again until acknowledged (forgetting one is counted).
const MAX_PENDING_RESEND: usize = 65_536;
/// Messages sent again at once, oldest first (like the agent's drain window): a slow
/// controller is not buried under copies of everything it has not acknowledged yet.
const RESEND_WINDOW: usize = 16;

/// A simulated device: its identity and topics.
#[allow(missing_debug_implementations)] // holds a private key: not printed
pub struct Device {
    /// Index of its measurement slot in this process: the worker makes one slot per device
    /// it holds, so it is always within `Shared::slots`.
    pub index: usize,
    source: std::net::Ipv4Addr,
    id: String,
    tls: TlsConnector,
    responder: Responder,
    telemetry: String,
    status: String,
    hello: String,
    ack: String,
    down: String,
}

impl Device {
    pub fn new(
        index: usize,
        source: std::net::Ipv4Addr,
        cfg: &AgentConfig,
    ) -> anyhow::Result<Self> {
        let tls: ClientConfig =
            crate::mqtt::client_tls(&cfg.tls.ca, Some((&cfg.tls.cert, &cfg.tls.key)))?;
        let id = cfg.device_id.clone();
        let topic = |k| Topic::new(id.clone(), k).to_string();
        Ok(Self {
            index,
            source,
            id: id.to_string(),
            tls: TlsConnector::from(Arc::new(tls)),
            responder: Responder::new(cfg)?,
            telemetry: topic(Kind::Telemetry),
            status: topic(Kind::Status),
            hello: topic(Kind::Hello),
            ack: topic(Kind::Ack),
            down: Topic::down_filter(&id),
        })
    }
}

/// Why a connect attempt failed or a session ended.
#[derive(Debug)]
struct Failure(String);

fn io_reason(stage: &str, e: &std::io::Error) -> Failure {
    use std::io::ErrorKind as K;
    let what = match e.kind() {
        K::ConnectionRefused => "refused",
        K::ConnectionReset => "reset",
        K::ConnectionAborted => "aborted",
        K::UnexpectedEof => "closed",
        K::TimedOut => "timeout",
        K::AddrNotAvailable | K::AddrInUse => "no local port",
        K::BrokenPipe => "broken pipe",
        K::InvalidData => "invalid data",
        _ => "error",
    };
    Failure(format!("{stage} {what}"))
}

/// Runs device `dev` until the process ends: connect, session, backoff, again.
pub async fn run(dev: Device, shared: Arc<Shared>) {
    let s = &shared.settings;
    let mut backoff = Backoff::new(Duration::from_millis(500), s.backoff_max);
    // Sequence numbers grow across runs (milliseconds of wall clock at the start), as an
    // agent's do across its life.
    let mut seq = wall_us() / 1000;
    let mut drop_rx = shared.drop.clone();
    drop_rx.mark_unchanged();
    // What is not acknowledged yet outlives a session (sent again on the next one).
    let mut pending = VecDeque::new();
    loop {
        match tokio::time::timeout(s.connect_timeout, connect(&dev, &shared)).await {
            Ok(Ok((stream, buf))) => {
                backoff.reset();
                let slot = &shared.slots[dev.index];
                let since = u64::try_from(shared.start.elapsed().as_micros()).unwrap_or(u64::MAX);
                let _ = slot.connected_us.compare_exchange(
                    0,
                    since.max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                shared.storm_mark(&slot.storm_connack);
                let why = session(
                    &dev,
                    &shared,
                    (stream, buf),
                    &mut pending,
                    &mut seq,
                    &mut drop_rx,
                )
                .await;
                shared.fail(&format!("lost: {}", why.0));
            }
            Ok(Err(f)) => shared.fail(&f.0),
            Err(_) => shared.fail("connect timeout"),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

type Stream = TlsStream<TcpStream>;

async fn connect(dev: &Device, shared: &Shared) -> Result<(Stream, BytesMut), Failure> {
    let s = &shared.settings;
    let sock = TcpSocket::new_v4().map_err(|e| io_reason("socket", &e))?;
    sock.bind(SocketAddr::new(dev.source.into(), 0))
        .map_err(|e| io_reason("bind", &e))?;
    let tcp = sock
        .connect(s.broker)
        .await
        .map_err(|e| io_reason("tcp", &e))?;
    shared.storm_mark(&shared.slots[dev.index].storm_tcp);
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").map_err(|_| Failure("server name".into()))?;
    let mut stream = dev
        .tls
        .connect(name, tcp)
        .await
        .map_err(|e| io_reason("tls", &e))?;
    let mut connect = Connect::new(dev.id.as_str());
    connect.keep_alive = u16::try_from(s.keep_alive.as_secs()).unwrap_or(u16::MAX);
    connect.clean_session = true;
    let offline = codec::encode(Kind::Status, &v1::Status::Offline)
        .map_err(|e| Failure(format!("encode: {e}")))?;
    connect.last_will = Some(LastWill::new(&dev.status, offline, QoS::AtLeastOnce, true));
    let mut out = BytesMut::with_capacity(256);
    write(&mut stream, &mut out, Packet::Connect(connect))
        .await
        .map_err(|e| io_reason("connect", &e))?;
    let mut buf = BytesMut::with_capacity(512);
    loop {
        match read_packet(&mut stream, &mut buf).await? {
            Packet::ConnAck(ConnAck {
                code: ConnectReturnCode::Success,
                ..
            }) => return Ok((stream, buf)),
            Packet::ConnAck(ConnAck { code, .. }) => {
                return Err(Failure(format!("connack refused ({code:?})")));
            }
            _ => {}
        }
    }
}

async fn write(stream: &mut Stream, out: &mut BytesMut, p: Packet) -> std::io::Result<()> {
    out.clear();
    p.write(out, MAX_PACKET)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e:?}")))?;
    stream.write_all(out).await?;
    stream.flush().await
}

/// Reads until one whole packet is buffered.
async fn read_packet(stream: &mut Stream, buf: &mut BytesMut) -> Result<Packet, Failure> {
    loop {
        if let Some(p) = parse(buf)? {
            return Ok(p);
        }
        fill(stream, buf).await?;
    }
}

fn parse(buf: &mut BytesMut) -> Result<Option<Packet>, Failure> {
    match Packet::read(buf, MAX_PACKET) {
        Ok(p) => Ok(Some(p)),
        Err(MqttError::InsufficientBytes(_)) => Ok(None),
        Err(e) => Err(Failure(format!("bad packet ({e:?})"))),
    }
}

async fn fill(stream: &mut Stream, buf: &mut BytesMut) -> Result<(), Failure> {
    buf.reserve(512);
    match stream.read_buf(buf).await {
        Ok(0) => Err(Failure("closed".into())),
        Ok(_) => Ok(()),
        Err(e) => Err(io_reason("read", &e)),
    }
}

/// A telemetry message on its way: its key (first sample's seq, or the packet id when the
/// PUBACK is the acknowledgement), when it first and last left, how many samples it carries,
/// and its payload when it may be sent again.
struct Sent {
    key: u64,
    at: Instant,
    last: Instant,
    samples: u64,
    payload: Option<Vec<u8>>,
}

struct Session<'a> {
    dev: &'a Device,
    shared: &'a Shared,
    stream: Stream,
    out: BytesMut,
    pkid: u16,
    pending: VecDeque<Sent>,
    /// When an acknowledgement last removed the oldest of `pending`.
    progress: Instant,
    /// The first telemetry seq sent on this connection (its ack ends a storm for us).
    first_seq: Option<u64>,
}

impl Session<'_> {
    fn next_pkid(&mut self) -> u16 {
        self.pkid = self.pkid.checked_add(1).unwrap_or(1);
        self.pkid
    }

    async fn send(&mut self, p: Packet) -> Result<(), Failure> {
        write(&mut self.stream, &mut self.out, p)
            .await
            .map_err(|e| io_reason("write", &e))
    }

    async fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<u16, Failure> {
        let pkid = self.next_pkid();
        self.publish_as(pkid, topic, payload, retain).await?;
        Ok(pkid)
    }

    async fn publish_as(
        &mut self,
        pkid: u16,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<(), Failure> {
        let mut p = Publish::new(topic, QoS::AtLeastOnce, payload);
        p.retain = retain;
        p.pkid = pkid;
        self.send(Packet::Publish(p)).await
    }

    async fn telemetry(&mut self, seq: &mut u64) -> Result<(), Failure> {
        let settings = &self.shared.settings;
        let batch = settings.batch.max(1);
        let first = *seq + 1;
        let samples = (0..batch)
            .map(|_| {
                *seq += 1;
                sample(*seq)
            })
            .collect();
        let payload = codec::encode(Kind::Telemetry, &v1::Telemetry { samples })
            .map_err(|e| Failure(format!("encode: {e}")))?;
        let pkid = self.next_pkid();
        let key = match settings.ack {
            AckMode::App => first,
            AckMode::PubAck => u64::from(pkid),
        };
        let resend = settings.resend.is_some();
        let cap = if resend {
            MAX_PENDING_RESEND
        } else {
            MAX_PENDING
        };
        if self.pending.len() >= cap
            && let Some(old) = self.pending.pop_front()
        {
            self.forget(&old);
        }
        // Kept before it leaves: a sample whose write fails is sent again, not lost.
        let at = Instant::now();
        self.pending.push_back(Sent {
            key,
            at,
            last: at,
            samples: batch as u64,
            payload: resend.then(|| payload.clone()),
        });
        self.shared
            .published
            .fetch_add(batch as u64, Ordering::Relaxed);
        self.shared
            .unacked
            .fetch_add(batch as u64, Ordering::Relaxed);
        self.first_seq.get_or_insert(first);
        let topic = self.dev.telemetry.clone();
        self.publish_as(pkid, &topic, payload, false).await
    }

    /// A message dropped from `pending` without its acknowledgement.
    fn forget(&self, old: &Sent) {
        self.shared
            .unacked
            .fetch_sub(old.samples, Ordering::Relaxed);
        if old.payload.is_some() {
            self.shared.fail("forgot an unacknowledged message");
        }
    }

    /// Sends again the oldest kept messages (at most `RESEND_WINDOW`) last sent before
    /// `before` (whenever: `None`).
    async fn resend(&mut self, before: Option<Instant>) -> Result<(), Failure> {
        let topic = self.dev.telemetry.clone();
        let now = Instant::now();
        for i in 0..self.pending.len().min(RESEND_WINDOW) {
            let Some(payload) = self.pending.get(i).and_then(|s| {
                let due = before.is_none_or(|b| s.last <= b);
                due.then(|| s.payload.clone()).flatten()
            }) else {
                continue;
            };
            if let Some(s) = self.pending.get_mut(i) {
                s.last = now;
            }
            let pkid = self.next_pkid();
            self.publish_as(pkid, &topic, payload, false).await?;
        }
        Ok(())
    }

    /// Acknowledged messages: those whose key `acked` says yes to.
    fn acked(&mut self, acked: impl Fn(u64) -> bool, storm_done: bool) {
        let now = Instant::now();
        let mut lat = Vec::new();
        let mut samples = 0;
        let oldest = self.pending.front().map(|s| s.key);
        // A message sent again is acknowledged again: only its first ack counts.
        self.pending.retain(|s| {
            if acked(s.key) {
                lat.push(u64::try_from(now.duration_since(s.at).as_micros()).unwrap_or(u64::MAX));
                samples += s.samples;
                false
            } else {
                true
            }
        });
        // Progress, as the agent's spool sees it: the oldest unacknowledged one moved.
        if self.pending.front().map(|s| s.key) != oldest {
            self.progress = now;
        }
        if !lat.is_empty() {
            self.shared.unacked.fetch_sub(samples, Ordering::Relaxed);
            self.shared.record_latency(&lat, samples);
        }
        if storm_done {
            self.shared
                .storm_mark(&self.shared.slots[self.dev.index].storm_ack);
        }
    }

    async fn incoming(&mut self, p: Packet) -> Result<(), Failure> {
        match p {
            Packet::Publish(p) => {
                if p.qos == QoS::AtLeastOnce {
                    self.send(Packet::PubAck(PubAck::new(p.pkid))).await?;
                }
                if p.topic == self.dev.ack {
                    if self.shared.settings.ack == AckMode::App
                        && let Ok(ack) = codec::decode::<v1::Ack>(Kind::Ack, &p.payload)
                    {
                        let first = self.first_seq;
                        let covers =
                            |k: u64| ack.ranges.iter().any(|r| r.first <= k && k <= r.last);
                        let done = first.is_some_and(covers);
                        self.acked(covers, done);
                    }
                } else if let Some((topic, payload)) = self.dev.responder.answer(&p.payload) {
                    self.publish(&topic, payload, false).await?;
                }
            }
            Packet::PubAck(a) if self.shared.settings.ack == AckMode::PubAck => {
                let key = u64::from(a.pkid);
                let first = self.pending.iter().any(|s| s.key == key) && self.first_seq.is_some();
                self.acked(|k| k == key, first);
            }
            _ => {}
        }
        Ok(())
    }
}

async fn session(
    dev: &Device,
    shared: &Shared,
    (stream, mut buf): (Stream, BytesMut),
    pending: &mut VecDeque<Sent>,
    seq: &mut u64,
    drop_rx: &mut tokio::sync::watch::Receiver<u64>,
) -> Failure {
    let mut s = Session {
        dev,
        shared,
        stream,
        out: BytesMut::with_capacity(512),
        pkid: 0,
        pending: std::mem::take(pending),
        progress: Instant::now(),
        first_seq: None,
    };
    let why = match run_session(&mut s, &mut buf, seq, drop_rx).await {
        Ok(()) => Failure("dropped".into()),
        Err(f) => f,
    };
    *pending = std::mem::take(&mut s.pending);
    if shared.settings.resend.is_none() {
        // Without resending, nothing outlives its connection.
        for old in pending.drain(..) {
            shared.unacked.fetch_sub(old.samples, Ordering::Relaxed);
        }
    }
    why
}

async fn run_session(
    s: &mut Session<'_>,
    buf: &mut BytesMut,
    seq: &mut u64,
    drop_rx: &mut tokio::sync::watch::Receiver<u64>,
) -> Result<(), Failure> {
    let dev = s.dev;
    let settings = &s.shared.settings;
    let sub = Subscribe::new(dev.down.as_str(), QoS::AtLeastOnce);
    let mut sub = sub;
    sub.pkid = s.next_pkid();
    s.send(Packet::Subscribe(sub)).await?;
    let online = codec::encode(Kind::Status, &v1::Status::Online)
        .map_err(|e| Failure(format!("encode: {e}")))?;
    s.publish(&dev.status, online, true).await?;
    let hello = codec::encode(Kind::Hello, &hello(settings))
        .map_err(|e| Failure(format!("encode: {e}")))?;
    s.publish(&dev.hello, hello, false).await?;
    // Like the agent's spool drain: what was not acknowledged goes first.
    s.resend(None).await?;
    let mut load = s.shared.load.clone();
    // Like the agent's spool drain: a device with telemetry running sends at once.
    if *load.borrow_and_update() {
        s.telemetry(seq).await?;
    }
    let period = if settings.rate > 0.0 {
        Duration::from_secs_f64(settings.batch.max(1) as f64 / settings.rate)
    } else {
        Duration::from_secs(86_400)
    };
    // Devices spread over the period so the load is smooth.
    let offset = period.mul_f64(rand::random::<f64>());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval(settings.keep_alive.max(Duration::from_secs(1)));
    ping.tick().await;
    let resend_after = settings.resend.unwrap_or(Duration::from_secs(86_400));
    let mut resend = tokio::time::interval(resend_after.max(Duration::from_millis(200)) / 2);
    resend.tick().await;
    loop {
        while let Some(p) = parse(buf)? {
            s.incoming(p).await?;
        }
        tokio::select! {
            r = fill_session(&mut s.stream, buf) => r?,
            _ = tick.tick() => {
                if settings.rate > 0.0 && *load.borrow() {
                    s.telemetry(seq).await?;
                }
            }
            _ = ping.tick() => s.send(Packet::PingReq).await?,
            // Like the agent: no acknowledgement progress for a while, send the rest again.
            _ = resend.tick() => {
                if settings.resend.is_some() && s.progress.elapsed() >= resend_after {
                    s.resend(Instant::now().checked_sub(resend_after)).await?;
                    s.progress = Instant::now();
                }
            }
            Ok(()) = load.changed() => {}
            _ = drop_rx.changed() => return Ok(()),
        }
    }
}

async fn fill_session(stream: &mut Stream, buf: &mut BytesMut) -> Result<(), Failure> {
    fill(stream, buf).await
}

fn hello(s: &super::state::Settings) -> v1::Hello {
    v1::Hello {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        hostname: "sim".into(),
        os: "Debian GNU/Linux 12 (bookworm)".into(),
        kernel: "6.1.0-sim".into(),
        arch: "aarch64".into(),
        model: Some("Raspberry Pi 4 Model B Rev 1.4".into()),
        uptime_s: 86_400,
        interval_s: if s.rate > 0.0 {
            (1.0 / s.rate).round().clamp(1.0, 86_400.0) as u32
        } else {
            10
        },
    }
}

/// A sample like a Pi's (sizes matter for the payload, values do not).
pub fn sample(seq: u64) -> v1::Sample {
    v1::Sample {
        seq,
        ts_ms: i64::try_from(wall_us() / 1000).unwrap_or(0),
        cpu_pct: 12.5,
        load1: 0.4,
        load5: 0.3,
        load15: 0.2,
        mem_total_bytes: 4 << 30,
        mem_used_bytes: 1 << 30,
        swap_total_bytes: 0,
        swap_used_bytes: 0,
        disks: vec![v1::Disk {
            mount: "/".into(),
            fs: "ext4".into(),
            total_bytes: 32 << 30,
            used_bytes: 9 << 30,
        }],
        nets: vec![v1::Net {
            iface: "eth0".into(),
            rx_bytes: 123_456_789,
            tx_bytes: 98_765_432,
        }],
        temp_c: Some(51.2),
        throttled: Some(0),
        uptime_s: 86_400,
        spool_dropped: 0,
        spool_backlog: 0,
    }
}
