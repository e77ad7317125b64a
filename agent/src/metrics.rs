//! The optional local Prometheus listener (`[metrics] listen` in agent.toml), for people who
//! scrape devices directly on their LAN. Off unless configured.
//!
//! It serves the newest sample the telemetry loop took, under the same metric names and units
//! as the controller's `/metrics/devices/{id}`, and never collects on request: a scrape costs
//! the device one small string. The responder is a few dozen lines on a tokio `TcpListener`
//! rather than an HTTP server crate, and is bounded so a LAN client cannot exhaust a Pi:
//! `GET /metrics` only, one request per connection, a read timeout, a cap on the request head
//! and on concurrent connections (excess ones are closed at once).

#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pifleet_shared::proto::v1::Sample;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// The Prometheus text format content type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Pause after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// After answering, unread request bytes are discarded for at most this long and this many
/// bytes, so closing does not reset the connection before the client reads the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// Why the listener did not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Bounds on what one client can cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to send the request head, and again to take the answer.
    pub io_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_head_bytes: usize,
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            io_timeout: Duration::from_secs(5),
            max_head_bytes: 8 * 1024,
            max_connections: 16,
        }
    }
}

/// Who is speaking, for `pifleet_agent_info`.
#[derive(Debug, Clone)]
pub struct Info {
    pub device: String,
    pub version: String,
}

/// A running listener: the telemetry loop hands it each new sample with [`Exporter::publish`].
#[derive(Debug)]
pub struct Exporter {
    latest: watch::Sender<Option<Arc<Sample>>>,
    local_addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Exporter {
    /// Binds `addr` and serves until `shutdown` (or [`Exporter::stop`]).
    pub async fn start(
        addr: SocketAddr,
        info: Info,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Result<Self, MetricsError> {
        let bind_err = |source| MetricsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let (latest, rx) = watch::channel(None);
        let stop = shutdown.child_token();
        let task = tokio::spawn(serve(
            listener,
            Arc::new(Page { info, latest: rx }),
            limits,
            stop.clone(),
        ));
        Ok(Self {
            latest,
            local_addr,
            stop,
            task,
        })
    }

    /// The address actually bound (differs from the configured one for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Makes `sample` the one served from now on.
    pub fn publish(&self, sample: &Sample) {
        self.latest.send_replace(Some(Arc::new(sample.clone())));
    }

    /// Stops accepting, drops open connections and waits for the listener task.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Exporter {
    /// An agent leaving on an error still closes the port.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What a scrape returns: fixed identity plus the newest sample, if any yet.
#[derive(Debug)]
struct Page {
    info: Info,
    latest: watch::Receiver<Option<Arc<Sample>>>,
}

impl Page {
    fn render(&self) -> String {
        // Clone the Arc and let go of the channel at once; render outside its lock.
        let sample = self.latest.borrow().clone();
        render(&self.info, sample.as_deref())
    }
}

/// The accept loop: one task per connection, at most `max_connections` of them.
async fn serve(listener: TcpListener, page: Arc<Page>, limits: Limits, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "metrics listener: too many connections; closed");
            drop(stream);
            continue;
        };
        let page = Arc::clone(&page);
        conns.spawn(async move {
            serve_connection(stream, &page, limits).await;
            drop(slot);
        });
    }
    conns.shutdown().await;
}

/// Reads one request, answers it and closes. Every step is bounded in time and bytes.
async fn serve_connection<S>(mut stream: S, page: &Page, limits: Limits)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = tokio::time::timeout(
        limits.io_timeout,
        read_head(&mut stream, limits.max_head_bytes),
    )
    .await;
    let reply = match head {
        Ok(Ok(head)) => match route(&head) {
            Route::Metrics => response(200, "OK", TEXT_FORMAT, "", &page.render()),
            Route::NotFound => error_response(404, "Not Found"),
            Route::MethodNotAllowed => error_response(405, "Method Not Allowed"),
            Route::BadRequest => error_response(400, "Bad Request"),
        },
        Ok(Err(HeadError::TooLarge)) => error_response(431, "Request Header Fields Too Large"),
        Ok(Err(HeadError::Closed)) => return,
        Ok(Err(HeadError::Io(e))) => {
            tracing::debug!(error = %e, "metrics listener: reading a request failed");
            return;
        }
        Err(_elapsed) => error_response(408, "Request Timeout"),
    };
    let answered = tokio::time::timeout(limits.io_timeout, async {
        stream.write_all(&reply).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(answered, Ok(Ok(()))) {
        let _ = tokio::time::timeout(LINGER, discard(&mut stream, LINGER_BYTES)).await;
    }
}

/// Why no request head was read.
#[derive(Debug)]
enum HeadError {
    /// The head did not end within the size cap.
    TooLarge,
    /// The client closed before the head ended.
    Closed,
    Io(io::Error),
}

/// Reads up to the blank line that ends the request head, at most `max` bytes. Bytes after
/// it (a body, a pipelined request) are ignored: every answer closes the connection.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, max: usize) -> Result<Vec<u8>, HeadError> {
    let mut buf = vec![0; max];
    let mut len = 0;
    loop {
        let Some(free) = buf.get_mut(len..).filter(|f| !f.is_empty()) else {
            return Err(HeadError::TooLarge);
        };
        let n = stream.read(free).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        // The end marker may straddle the previous read.
        let from = len.saturating_sub(3);
        len += n;
        if let Some(end) = head_end(&buf[from..len]) {
            buf.truncate(from + end);
            return Ok(buf);
        }
    }
}

/// Length of the head in `buf` up to and including its blank line (`\n\n`, `\n\r\n`).
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).enumerate().find_map(|(i, w)| match w {
        [b'\n', b'\n'] => Some(i + 2),
        [b'\n', b'\r'] if buf.get(i + 2) == Some(&b'\n') => Some(i + 3),
        _ => None,
    })
}

/// Reads and drops what the client still sends, until it closes or `max` bytes.
async fn discard<S: AsyncRead + Unpin>(stream: &mut S, max: usize) {
    let mut sink = [0u8; 1024];
    let mut seen = 0;
    while seen < max {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen += n,
        }
    }
}

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Decides from the request line alone; headers are not needed to answer.
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != "/metrics" {
        Route::NotFound
    } else if method != "GET" {
        Route::MethodNotAllowed
    } else {
        Route::Metrics
    }
}

fn error_response(status: u16, reason: &str) -> Vec<u8> {
    let body = format!("{}\n", reason.to_ascii_lowercase());
    let allow = if status == 405 { "Allow: GET\r\n" } else { "" };
    response(status, reason, "text/plain; charset=utf-8", allow, &body)
}

/// A whole HTTP/1.1 answer; `extra` is further header lines, each ending in CRLF.
fn response(status: u16, reason: &str, content_type: &str, extra: &str, body: &str) -> Vec<u8> {
    let mut out = String::with_capacity(160 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    );
    out.push_str(body);
    out.into_bytes()
}

/// The exposition: `pifleet_device_up`, the agent's identity and, once there is a sample,
/// every gauge the controller serves for a fresh device, with the same names and units.
fn render(info: &Info, s: Option<&Sample>) -> String {
    let mut out = Exposition::default();
    out.gauge(
        "pifleet_device_up",
        "1 once the agent has taken a sample, 0 before its first",
        &[],
        Value::Int(u64::from(s.is_some())),
    );
    out.gauge(
        "pifleet_agent_info",
        "The agent's version and device id",
        &[("version", &info.version), ("device", &info.device)],
        Value::Int(1),
    );
    let Some(s) = s else {
        return out.finish();
    };
    let f = Value::Float;
    let n = Value::Int;
    out.gauge(
        "pifleet_device_cpu_ratio",
        "CPU busy ratio (0-1)",
        &[],
        f((s.cpu_pct / 100.0).clamp(0.0, 1.0)),
    );
    out.gauge(
        "pifleet_device_load1",
        "1-minute load average",
        &[],
        f(s.load1),
    );
    out.gauge(
        "pifleet_device_load5",
        "5-minute load average",
        &[],
        f(s.load5),
    );
    out.gauge(
        "pifleet_device_load15",
        "15-minute load average",
        &[],
        f(s.load15),
    );
    out.gauge(
        "pifleet_device_memory_total_bytes",
        "Physical memory",
        &[],
        n(s.mem_total_bytes),
    );
    out.gauge(
        "pifleet_device_memory_used_bytes",
        "Memory in use (total minus available)",
        &[],
        n(s.mem_used_bytes),
    );
    out.gauge(
        "pifleet_device_swap_total_bytes",
        "Swap space",
        &[],
        n(s.swap_total_bytes),
    );
    out.gauge(
        "pifleet_device_swap_used_bytes",
        "Swap in use",
        &[],
        n(s.swap_used_bytes),
    );
    if let Some(t) = s.temp_c {
        out.gauge(
            "pifleet_device_temperature_celsius",
            "SoC temperature",
            &[],
            f(t),
        );
    }
    if let Some(bits) = s.throttled {
        out.gauge(
            "pifleet_device_throttled",
            "Raspberry Pi get_throttled bits",
            &[],
            n(u64::from(bits)),
        );
        out.gauge(
            "pifleet_device_under_voltage",
            "1 while the supply voltage is too low",
            &[],
            n(u64::from(bits & 0x1 != 0)),
        );
        out.gauge(
            "pifleet_device_throttling",
            "1 while the CPU is frequency-capped, throttled or at the soft temperature limit",
            &[],
            n(u64::from(bits & 0xe != 0)),
        );
    }
    // One family at a time: the text format wants each family's samples together.
    for d in &s.disks {
        out.gauge(
            "pifleet_device_disk_total_bytes",
            "Size of the filesystem",
            &[("mount", &d.mount)],
            n(d.total_bytes),
        );
    }
    for d in &s.disks {
        out.gauge(
            "pifleet_device_disk_used_bytes",
            "Space used on the filesystem",
            &[("mount", &d.mount)],
            n(d.used_bytes),
        );
    }
    for i in &s.nets {
        out.counter(
            "pifleet_device_network_receive_bytes_total",
            "Bytes received since boot",
            &[("interface", &i.iface)],
            n(i.rx_bytes),
        );
    }
    for i in &s.nets {
        out.counter(
            "pifleet_device_network_transmit_bytes_total",
            "Bytes sent since boot",
            &[("interface", &i.iface)],
            n(i.tx_bytes),
        );
    }
    out.gauge(
        "pifleet_device_uptime_seconds",
        "Time since boot",
        &[],
        n(s.uptime_s),
    );
    out.gauge(
        "pifleet_device_spool_backlog_samples",
        "Samples waiting on the device for the controller's acknowledgement",
        &[],
        n(s.spool_backlog),
    );
    out.gauge(
        "pifleet_device_spool_dropped",
        "Samples the device's full spool dropped before its newest sample",
        &[],
        n(s.spool_dropped),
    );
    out.finish()
}

/// A sample value: integers stay exact, floats print in their shortest form.
#[derive(Debug, Clone, Copy)]
enum Value {
    Int(u64),
    Float(f32),
}

/// Builds Prometheus text exposition: HELP and TYPE once per metric family.
#[derive(Debug, Default)]
struct Exposition {
    out: String,
    last: &'static str,
}

impl Exposition {
    fn gauge(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], v: Value) {
        self.sample(name, "gauge", help, labels, v);
    }

    fn counter(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], v: Value) {
        self.sample(name, "counter", help, labels, v);
    }

    fn sample(
        &mut self,
        name: &'static str,
        kind: &str,
        help: &str,
        labels: &[(&str, &str)],
        v: Value,
    ) {
        if self.last != name {
            let _ = writeln!(self.out, "# HELP {name} {help}");
            let _ = writeln!(self.out, "# TYPE {name} {kind}");
            self.last = name;
        }
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"");
                escape_into(&mut self.out, val);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = match v {
            Value::Int(i) => writeln!(self.out, " {i}"),
            Value::Float(x) if x.is_nan() => writeln!(self.out, " NaN"),
            Value::Float(x) if x.is_infinite() && x > 0.0 => writeln!(self.out, " +Inf"),
            Value::Float(x) if x.is_infinite() => writeln!(self.out, " -Inf"),
            Value::Float(x) => writeln!(self.out, " {x}"),
        };
    }

    fn finish(self) -> String {
        self.out
    }
}

/// Appends a label value escaped for the text format (backslash, quote, newline).
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}
