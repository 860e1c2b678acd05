//! Prometheus text metrics: the exposition format, fixed-bucket histograms, process figures
//! and a minimal HTTP endpoint, shared by replicas and the FUSE client.
//!
//! Why not a metrics crate: what both processes need is a few dozen figures rendered on
//! demand from state they already hold (the replica renders on its core task, so nothing
//! is shared between threads), and a plain-text answer to `GET /metrics`. That is about
//! two hundred lines; a registry with global state and an HTTP stack would be most of a
//! dependency tree for it.
//!
//! The endpoint speaks just enough HTTP/1.1 for Prometheus, `curl` and `wget`: one request
//! per connection, `GET /metrics` (or `/`) answered with `text/plain; version=0.0.4`,
//! anything else 404 or 405. It cannot be used to starve its process: at most
//! [`CONNECTIONS_MAX`] connections are served at once (more are closed at once), and a
//! connection that has not sent its request head (8 KiB at most) within 2 s, or not taken
//! its answer within 10 s, is dropped. It has no authentication: bind it to loopback (the
//! default everywhere) or a private network.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Latency buckets in seconds: 50 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Count buckets (batch sizes).
pub const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A histogram with fixed upper bounds (cumulative only when rendered).
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last counts those above every bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    #[must_use]
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one observation.
    pub fn observe(&mut self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += value;
        self.count += 1;
    }

    /// Observations so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// A metric's kind, for its `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

/// Text in the Prometheus exposition format (version 0.0.4), written one sample at a time.
/// `# HELP` and `# TYPE` are written before a family's first sample.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    declared: BTreeSet<&'static str>,
}

impl Exposition {
    /// An empty page.
    #[must_use]
    pub fn new() -> Exposition {
        Exposition::default()
    }

    fn declare(&mut self, name: &'static str, kind: Kind, help: &str) {
        if self.declared.insert(name) {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(self.out, "# HELP {name} {help}");
            let _ = writeln!(self.out, "# TYPE {name} {kind}");
        }
    }

    fn sample(&mut self, name: &str, suffix: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.out.push_str(suffix);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// A counter sample.
    pub fn counter(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], v: u64) {
        self.declare(name, Kind::Counter, help);
        self.sample(name, "", labels, v as f64);
    }

    /// A counter sample in fractional units (seconds).
    pub fn counter_f(&mut self, name: &'static str, help: &str, v: f64) {
        self.declare(name, Kind::Counter, help);
        self.sample(name, "", &[], v);
    }

    /// A gauge sample.
    pub fn gauge(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.declare(name, Kind::Gauge, help);
        self.sample(name, "", labels, v);
    }

    /// A histogram: cumulative `_bucket` samples with `le`, then `_sum` and `_count`.
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &str,
        labels: &[(&str, &str)],
        h: &Histogram,
    ) {
        self.declare(name, Kind::Histogram, help);
        let mut cumulative = 0;
        for (i, n) in h.counts.iter().enumerate() {
            cumulative += n;
            let le = h
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| number(*b));
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(name, "_bucket", &with_le, cumulative as f64);
        }
        self.sample(name, "_sum", labels, h.sum);
        self.sample(name, "_count", labels, h.count as f64);
    }

    /// The standard `process_*` figures of this process, from `/proc/self` (Linux; nothing
    /// elsewhere): resident memory, CPU seconds, open descriptors, start time.
    pub fn process(&mut self) {
        if let Some(rss) = proc_status_kib("VmRSS:") {
            self.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                &[],
                (rss * 1024) as f64,
            );
        }
        if let Some(cpu) = proc_cpu_seconds() {
            self.counter_f(
                "process_cpu_seconds_total",
                "User and system CPU time spent in seconds.",
                cpu,
            );
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.gauge(
                "process_open_fds",
                "Number of open file descriptors.",
                &[],
                fds.count() as f64,
            );
        }
    }

    /// The page.
    #[must_use]
    pub fn finish(self) -> String {
        self.out
    }
}

fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// utime + stime of this process in seconds. `/proc/self/stat` counts clock ticks of
/// USER_HZ, which Linux fixes at 100 on every architecture it exposes to user space.
fn proc_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after its ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

const HEAD_BYTES_MAX: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; a scraper needs one.
pub const CONNECTIONS_MAX: usize = 16;

/// Serves `GET /metrics` on `listener` until the task is dropped; `render` produces the page
/// for each request (`None`: the process is shutting down, answered 503).
pub async fn serve<F, Fut>(listener: TcpListener, render: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<String>> + Send,
{
    let render = std::sync::Arc::new(render);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors or similar: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Over the limit: closed at once (dropping the stream), costing nothing more.
        let Ok(slot) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let render = std::sync::Arc::clone(&render);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, answer(stream, render.as_ref())).await;
            drop(slot);
        });
    }
}

async fn answer<F, Fut>(mut stream: TcpStream, render: &F) -> std::io::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<String>>,
{
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        _ => return Ok(()),
    };
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = if method != "GET" && method != "HEAD" {
        ("405 Method Not Allowed", "only GET\n".to_owned())
    } else if path != "/metrics" && path != "/" {
        ("404 Not Found", "metrics are at /metrics\n".to_owned())
    } else {
        match render().await {
            Some(page) => ("200 OK", page),
            None => ("503 Service Unavailable", "shutting down\n".to_owned()),
        }
    };
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if method == "GET" {
        reply.push_str(&body);
    }
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

/// The request line of a head that ends within [`HEAD_BYTES_MAX`], or `None`.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            let text = String::from_utf8_lossy(&buf);
            return Ok(text.lines().next().map(str::to_owned));
        }
        if buf.len() > HEAD_BYTES_MAX {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets_sum_and_count() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.5, 7.0] {
            h.observe(v);
        }
        let mut e = Exposition::new();
        e.histogram("x_seconds", "X.", &[("op", "a")], &h);
        let text = e.finish();
        assert!(text.contains("# TYPE x_seconds histogram"), "{text}");
        assert!(
            text.contains("x_seconds_bucket{op=\"a\",le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{op=\"a\",le=\"2\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{op=\"a\",le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_sum{op=\"a\"} 10.5\n"), "{text}");
        assert!(text.contains("x_seconds_count{op=\"a\"} 4\n"), "{text}");
    }

    #[test]
    fn help_and_type_once_per_family_and_labels_escaped() {
        let mut e = Exposition::new();
        e.counter("c_total", "C.", &[("k", "a\"b")], 1);
        e.counter("c_total", "C.", &[("k", "z")], 2);
        let text = e.finish();
        assert_eq!(text.matches("# TYPE c_total counter").count(), 1, "{text}");
        assert!(text.contains("c_total{k=\"a\\\"b\"} 1\n"), "{text}");
        assert!(text.contains("c_total{k=\"z\"} 2\n"), "{text}");
    }

    #[test]
    fn process_figures_are_read_from_proc() {
        let mut e = Exposition::new();
        e.process();
        let text = e.finish();
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("rss sample");
        assert!(
            rss > 1_000_000.0,
            "a test process uses more than 1 MB: {rss}"
        );
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
    }

    #[tokio::test]
    async fn endpoint_answers_metrics_404_and_405() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(serve(listener, || async { Some("up 1\n".to_owned()) }));
        let ask = |req: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(req.as_bytes()).await.expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let ok = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("version=0.0.4"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nup 1\n"), "{ok}");
        let missing = ask("GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = ask("POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        task.abort();
    }

    #[tokio::test]
    async fn idle_connections_cannot_exhaust_the_endpoint() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(serve(listener, || async { Some("up 1\n".to_owned()) }));
        // CONNECTIONS_MAX clients that never send a request hold every slot...
        let mut idle = Vec::new();
        for _ in 0..CONNECTIONS_MAX {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // ...so one more is closed at once, without an answer.
        let mut extra = TcpStream::connect(addr).await.expect("connect");
        let mut out = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut out))
            .await
            .expect("closed, not left hanging")
            .expect("read");
        assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&out));
        // The idle ones are dropped after the head timeout; then scrapes work again.
        for mut s in idle {
            let mut buf = Vec::new();
            let n = s.read_to_end(&mut buf).await.expect("read");
            assert_eq!(n, 0, "an idle connection gets no answer");
        }
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut page = String::new();
        s.read_to_string(&mut page).await.expect("read");
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        task.abort();
    }
}
