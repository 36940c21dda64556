//! A small writer for the Prometheus text exposition format (0.0.4): families grouped, HELP and
//! TYPE once per family, label values escaped.

use std::collections::BTreeMap;
use std::fmt::Write;

use inarray_runtime::engines::Usage;

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
        let mut line = name.to_owned();
        if !labels.is_empty() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(line, "{{{}}}", l.join(","));
        }
        let _ = write!(line, " {value}");
        if !self.families.contains_key(name) {
            self.order.push(name.to_owned());
        }
        self.families
            .entry(name.to_owned())
            .or_insert((kind, help, Vec::new()))
            .2
            .push(line);
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
}
