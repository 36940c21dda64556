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
}
