//! `GET /metrics`: Prometheus text exposition (format 0.0.4) for the daemon, the API, the I/O
//! guard, engines, running containers and the NFS gateway; and the small writer of that format
//! (families grouped, HELP and TYPE once per family, label values escaped) with the API's
//! latency histograms.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use inarray_runtime::engines::Usage;
use inarray_runtime::Manager;

use crate::access::Access;
use crate::error::ApiError;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Prometheus text exposition (format 0.0.4) for the daemon, engines and running containers.
async fn metrics(
    State(m): State<Manager>,
    State(access): State<Access>,
    State(nfs): State<Option<inarray_nfs::Metrics>>,
) -> Result<Response, ApiError> {
    let mut out = Exposition::default();
    out.gauge("inarray_up", "1 while the daemon serves", &[], 1.0);
    access.write_metrics(&mut out);
    if let Some(rss) = self_rss_bytes() {
        out.gauge(
            "inarray_daemon_resident_memory_bytes",
            "resident memory of the daemon process",
            &[],
            rss as f64,
        );
    }
    let g = m.io_guard_status();
    if g.running {
        out.gauge(
            "inarray_io_guard_holding",
            "1 while the I/O guard holds the containers to their share of the array disk",
            &[],
            if g.holding { 1.0 } else { 0.0 },
        );
        out.gauge(
            "inarray_io_guard_budget_bytes_per_second",
            "what the containers may move on the array disk together while the guard holds",
            &[],
            g.budget_bps as f64,
        );
        out.gauge(
            "inarray_io_guard_disk_peak_bytes_per_second",
            "the array disk's peak rate as the guard estimates it",
            &[],
            g.peak_bps as f64,
        );
        out.counter(
            "inarray_io_guard_engagements_total",
            "how often the I/O guard took hold",
            &[],
            g.engagements as f64,
        );
    }
    let containers = m.list(true).await?;
    for state in ["created", "running", "restarting", "exited", "dead"] {
        let n = containers
            .iter()
            .filter(|c| c.state.as_str() == state)
            .count();
        out.gauge(
            "inarray_containers",
            "containers by state",
            &[("state", state)],
            n as f64,
        );
    }
    for e in m.engines().await? {
        if let Ok(u) = m.engine_usage(&e.name).await {
            out.usage("engine", &[("engine", &e.name)], &u);
        }
    }
    for c in containers.iter().filter(|c| c.state.as_str() == "running") {
        if let Some(h) = m.health(&c.id) {
            for status in ["starting", "healthy", "unhealthy"] {
                out.gauge(
                    "inarray_container_health",
                    "1 for the health status of a running container with a check",
                    &[("container", &c.name), ("id", &c.id), ("status", status)],
                    f64::from(u8::from(h.status.as_str() == status)),
                );
            }
        }
        if let Ok(u) = m.container_usage(&c.id).await {
            out.usage(
                "container",
                &[("container", &c.name), ("id", &c.id), ("engine", &c.engine)],
                &u,
            );
        }
    }
    // No gateway serves without `nfs_listen`: then there are no nfs families.
    if let Some(nfs) = nfs {
        out.nfs(&nfs.snapshot());
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.finish(),
    )
        .into_response())
}

fn self_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[derive(Default)]
pub struct Exposition {
    /// name → (type, help, sample lines), in first-seen order of names.
    families: BTreeMap<String, (&'static str, &'static str, Vec<String>)>,
    order: Vec<String>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Exposition {
    fn sample(
        &mut self,
        kind: &'static str,
        name: &str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        self.line(kind, name, name, help, labels, value);
    }

    /// A sample line `sample{labels} value` in family `family` (they differ for histograms).
    fn line(
        &mut self,
        kind: &'static str,
        family: &str,
        sample: &str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let mut line = sample.to_owned();
        if !labels.is_empty() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(line, "{{{}}}", l.join(","));
        }
        let _ = write!(line, " {value}");
        if !self.families.contains_key(family) {
            self.order.push(family.to_owned());
        }
        self.families
            .entry(family.to_owned())
            .or_insert((kind, help, Vec::new()))
            .2
            .push(line);
    }

    /// A histogram: `bounds[i]` with the cumulative count `cumulative[i]`, then `+Inf` with the
    /// last count (which is also `_count`).
    pub fn histogram_cumulative(
        &mut self,
        name: &str,
        help: &'static str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        cumulative: &[u64],
        sum: f64,
    ) {
        let bucket = format!("{name}_bucket");
        for (i, count) in cumulative.iter().enumerate() {
            let le = bounds.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.line("histogram", name, &bucket, help, &l, *count as f64);
        }
        let total = cumulative.last().copied().unwrap_or(0);
        self.line("histogram", name, &format!("{name}_sum"), help, labels, sum);
        self.line(
            "histogram",
            name,
            &format!("{name}_count"),
            help,
            labels,
            total as f64,
        );
    }

    /// The NFS gateway's per-export figures as `inarray_nfs_…` families.
    pub fn nfs(&mut self, exports: &[inarray_nfs::ExportMetrics]) {
        let bounds: Vec<f64> = inarray_nfs::LATENCY_BOUNDS_US
            .iter()
            .map(|us| *us as f64 / 1e6)
            .collect();
        for e in exports {
            let l = [("export", e.export.as_str())];
            self.counter(
                "inarray_nfs_read_bytes_total",
                "bytes read by nfs clients",
                &l,
                e.bytes_read as f64,
            );
            self.counter(
                "inarray_nfs_written_bytes_total",
                "bytes written by nfs clients",
                &l,
                e.bytes_written as f64,
            );
            for p in &e.procedures {
                let l = [("export", e.export.as_str()), ("procedure", p.procedure)];
                self.counter(
                    "inarray_nfs_operations_total",
                    "nfs calls answered, errors included",
                    &l,
                    p.count as f64,
                );
                self.counter(
                    "inarray_nfs_errors_total",
                    "nfs calls answered with an error",
                    &l,
                    p.errors as f64,
                );
                self.histogram_cumulative(
                    "inarray_nfs_operation_duration_seconds",
                    "time to serve an nfs call, from the decoded call to the encoded reply",
                    &l,
                    &bounds,
                    &p.latency_buckets,
                    p.latency_seconds_sum,
                );
            }
        }
    }

    pub fn gauge(&mut self, name: &str, help: &'static str, labels: &[(&str, &str)], value: f64) {
        self.sample("gauge", name, help, labels, value);
    }

    pub fn counter(&mut self, name: &str, help: &'static str, labels: &[(&str, &str)], value: f64) {
        self.sample("counter", name, help, labels, value);
    }

    /// The usage figures of an engine or container as `inarray_<scope>_…` families.
    pub fn usage(&mut self, scope: &str, labels: &[(&str, &str)], u: &Usage) {
        let n = |s: &str| format!("inarray_{scope}_{s}");
        if let Some(net) = &u.network {
            for (name, help, v) in [
                (
                    "network_rx_bytes_total",
                    "bytes received on its network interfaces",
                    net.rx_bytes,
                ),
                (
                    "network_rx_packets_total",
                    "packets received on its network interfaces",
                    net.rx_packets,
                ),
                (
                    "network_tx_bytes_total",
                    "bytes sent on its network interfaces",
                    net.tx_bytes,
                ),
                (
                    "network_tx_packets_total",
                    "packets sent on its network interfaces",
                    net.tx_packets,
                ),
            ] {
                self.counter(&n(name), help, labels, v as f64);
            }
        }
        self.counter(
            &n("cpu_seconds_total"),
            "cpu time used",
            labels,
            u.cpu.usage_ns as f64 / 1e9,
        );
        self.counter(
            &n("cpu_throttled_seconds_total"),
            "time throttled by the cpu quota",
            labels,
            u.cpu.throttled_ns as f64 / 1e9,
        );
        self.gauge(
            &n("memory_bytes"),
            "memory in use",
            labels,
            u.memory.current as f64,
        );
        self.gauge(
            &n("memory_peak_bytes"),
            "highest memory use seen",
            labels,
            u.memory.peak as f64,
        );
        if let Some(l) = u.memory.limit {
            self.gauge(&n("memory_limit_bytes"), "memory limit", labels, l as f64);
        }
        self.counter(
            &n("memory_failcnt_total"),
            "times the memory limit was hit",
            labels,
            u.memory.failcnt as f64,
        );
        self.counter(
            &n("oom_kills_total"),
            "processes killed by the memory limit",
            labels,
            u.memory.oom_kills as f64,
        );
        self.counter(
            &n("io_read_bytes_total"),
            "bytes read from block devices",
            labels,
            u.io.read_bytes as f64,
        );
        self.counter(
            &n("io_write_bytes_total"),
            "bytes written to block devices",
            labels,
            u.io.write_bytes as f64,
        );
        self.counter(
            &n("io_read_ops_total"),
            "read operations",
            labels,
            u.io.read_ops as f64,
        );
        self.counter(
            &n("io_write_ops_total"),
            "write operations",
            labels,
            u.io.write_ops as f64,
        );
        self.gauge(
            &n("pids"),
            "processes and threads",
            labels,
            u.pids.current as f64,
        );
    }

    /// One histogram series: `_bucket` lines (cumulative, `le` last), `_sum` and `_count`.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &'static str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) {
        let base: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let with = |extra: Option<String>| {
            let mut l = base.clone();
            l.extend(extra);
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", l.join(","))
            }
        };
        if !self.families.contains_key(name) {
            self.order.push(name.to_owned());
        }
        let lines = &mut self
            .families
            .entry(name.to_owned())
            .or_insert(("histogram", help, Vec::new()))
            .2;
        let mut cumulative = 0;
        for (i, b) in bounds.iter().enumerate() {
            cumulative += counts.get(i).copied().unwrap_or(0);
            lines.push(format!(
                "{name}_bucket{} {cumulative}",
                with(Some(format!("le=\"{b}\"")))
            ));
        }
        let total: u64 = counts.iter().sum();
        lines.push(format!(
            "{name}_bucket{} {total}",
            with(Some("le=\"+Inf\"".into()))
        ));
        lines.push(format!("{name}_sum{} {sum}", with(None)));
        lines.push(format!("{name}_count{} {total}", with(None)));
    }

    pub fn finish(self) -> String {
        let mut out = String::new();
        for name in &self.order {
            let (kind, help, lines) = &self.families[name];
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }
}

/// Upper bounds (seconds) of the API latency buckets.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// API latency histograms by method, route template and status (bounded cardinality: routes
/// are templates, unknown paths are all `unmatched`).
#[derive(Default)]
pub struct Histograms {
    series: BTreeMap<(String, String, u16), Series>,
}

struct Series {
    /// One count per bound, and one more for "above the last".
    counts: [u64; LATENCY_BOUNDS.len() + 1],
    sum: f64,
}

impl Histograms {
    pub fn observe(&mut self, method: &str, route: &str, status: u16, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let s = self
            .series
            .entry((method.to_owned(), route.to_owned(), status))
            .or_insert(Series {
                counts: [0; LATENCY_BOUNDS.len() + 1],
                sum: 0.0,
            });
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        s.counts[i] += 1;
        s.sum += secs;
    }

    pub fn write(&self, out: &mut Exposition) {
        for ((method, route, status), s) in &self.series {
            let status = status.to_string();
            out.histogram(
                "inarray_api_request_duration_seconds",
                "API request latency until the reply's headers, by route and status",
                &[("method", method), ("route", route), ("status", &status)],
                &LATENCY_BOUNDS,
                &s.counts,
                s.sum,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_grouped_and_labels_escaped() {
        let mut e = Exposition::default();
        e.gauge("a", "help a", &[("x", "q\"uote")], 1.0);
        e.gauge("b", "help b", &[], 2.5);
        e.gauge("a", "help a", &[("x", "two")], 3.0);
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP a help a\n# TYPE a gauge\na{x=\"q\\\"uote\"} 1\na{x=\"two\"} 3\n# HELP b help b\n# TYPE b gauge\nb 2.5\n"
        );
    }

    #[test]
    fn latency_histogram_is_cumulative() {
        let mut h = Histograms::default();
        let ms = std::time::Duration::from_millis;
        h.observe("GET", "/v1/info", 200, ms(2));
        h.observe("GET", "/v1/info", 200, ms(40));
        h.observe("GET", "/v1/info", 200, ms(60_000));
        let mut e = Exposition::default();
        h.write(&mut e);
        let text = e.finish();
        let l = |le: &str| {
            format!("inarray_api_request_duration_seconds_bucket{{method=\"GET\",route=\"/v1/info\",status=\"200\",le=\"{le}\"}}")
        };
        assert!(
            text.contains("# TYPE inarray_api_request_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(text.contains(&format!("{} 0\n", l("0.001"))), "{text}");
        assert!(text.contains(&format!("{} 1\n", l("0.0025"))), "{text}");
        assert!(text.contains(&format!("{} 2\n", l("0.05"))), "{text}");
        assert!(text.contains(&format!("{} 2\n", l("30"))), "{text}");
        assert!(text.contains(&format!("{} 3\n", l("+Inf"))), "{text}");
        assert!(
            text.contains("_count{method=\"GET\",route=\"/v1/info\",status=\"200\"} 3\n"),
            "{text}"
        );
    }

    #[test]
    fn histograms_have_buckets_sum_and_count() {
        let mut e = Exposition::default();
        e.histogram_cumulative(
            "h",
            "help h",
            &[("p", "read")],
            &[0.001, 0.5],
            &[1, 3, 4],
            0.75,
        );
        assert_eq!(
            e.finish(),
            "# HELP h help h\n# TYPE h histogram\nh_bucket{p=\"read\",le=\"0.001\"} 1\nh_bucket{p=\"read\",le=\"0.5\"} 3\nh_bucket{p=\"read\",le=\"+Inf\"} 4\nh_sum{p=\"read\"} 0.75\nh_count{p=\"read\"} 4\n"
        );
    }
}
