//! The report's sections 4–6 (inside vs NFS, the seed's load, file events), its plots
//! (docs/bench/*.png) and the README's headline block, all from the figures of the same run.

use std::fmt::Write;
use std::path::Path;

use crate::load::Load;
use crate::scan::Scan;
use crate::RunToExit;

/// Draws the plots into `docs/bench/`; returns (scan, run-to-exit, load start) links relative
/// to docs/, for those drawn. A plot that fails is reported on stderr and left out.
pub fn plots(docs: &Path, b1: &RunToExit, s: &Scan, l: &Load) -> [Option<String>; 3] {
    let dir = docs.join("bench");
    let mut out = [None, None, None];
    let groups: Vec<String> = s
        .jobs
        .iter()
        .map(|j| {
            format!(
                "{} ({}k files)",
                j.name.split(' ').next().unwrap_or(j.name),
                j.files / 1000
            )
        })
        .collect();
    let values: Vec<Vec<f64>> = s
        .jobs
        .iter()
        .map(|j| j.secs.iter().chain([&j.shell]).map(|x| x.p50()).collect())
        .collect();
    if !s.jobs.is_empty() {
        match crate::plot::bars_log(
            &dir.join("scan.png"),
            "Same job: container inside the array vs NFS client (median, log scale)",
            "seconds",
            &groups,
            &crate::scan::PLOT_SERIES,
            &values,
        ) {
            Ok(()) => out[0] = Some("bench/scan.png".into()),
            Err(e) => eprintln!("plot scan.png: {e:#}"),
        }
    }
    match crate::plot::cdf(
        &dir.join("run-to-exit.png"),
        "Run-to-exit of /bin/true: distribution",
        "ms per run (log scale)",
        &[
            ("inarray REST", &b1.rest),
            ("runc run", &b1.runc),
            ("podman run --rm", &b1.podman),
        ],
    ) {
        Ok(()) => out[1] = Some("bench/run-to-exit.png".into()),
        Err(e) => eprintln!("plot run-to-exit.png: {e:#}"),
    }
    if l.start.n() > 0 {
        match crate::plot::cdf(
            &dir.join("load-start.png"),
            "Start latency under the seed's load",
            "ms for POST /v1/containers (log scale)",
            &[("create + start", &l.start)],
        ) {
            Ok(()) => out[2] = Some("bench/load-start.png".into()),
            Err(e) => eprintln!("plot load-start.png: {e:#}"),
        }
    }
    out
}

/// Section 6: file events are measured by their own benchmark when the feature exists.
pub fn render_events(l: &Load) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "## 6. File events\n");
    match &l.events {
        Ok(n) => {
            let _ = writeln!(o, "{n} events delivered during the load (section 5).\n");
        }
        Err(why) => {
            let _ = writeln!(
                o,
                "Not measured: {why}. `bench/run` runs `bench/events/run` when it exists and the \
                 daemon answers `GET /v1/watches`; its section then follows.\n"
            );
        }
    }
    o
}

/// The README's headline block (between its markers), with the command and date.
pub fn headline(
    command: &str,
    date: &str,
    load: &str,
    b1: &RunToExit,
    s: &Scan,
    l: &Load,
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<!-- headline:begin (written by bench/run from its own figures; do not edit) -->"
    );
    let _ = write!(
        o,
        "Headline figures (`{command}`, {date}, load average {load}, 2 shared CPUs; \
         [docs/benchmarks.md](docs/benchmarks.md)):"
    );
    if let Some(j) = s.jobs.first() {
        let _ = write!(
            o,
            " a backup-style scan of {} small files takes {:.2} s in a container inside the \
             array (`inarray-walk`, the NFS client's per-file work through the bind mount; \
             {:.2} s with busybox `find … -exec cat`), {:.1} s over the NFS gateway on loopback \
             (**{:.0}×**) and {:.0} s with a simulated 1 ms round trip (**{:.0}×**)",
            j.files,
            j.secs[0].p50(),
            j.shell.p50(),
            j.secs[1].p50(),
            j.ratio(1),
            j.secs[2].p50(),
            j.ratio(2)
        );
        for j in &s.jobs[1..] {
            let _ = write!(
                o,
                "; {} of {} files {:.0}× / {:.0}×",
                j.name.split(" (").next().unwrap_or(j.name),
                j.files,
                j.ratio(1),
                j.ratio(2)
            );
        }
        let _ = write!(o, " ([plot](docs/bench/scan.png)).");
    }
    let _ = write!(
        o,
        " Run-to-exit of `/bin/true` through the REST API p50 {:.1} ms (runc {:.1} ms, podman \
         {:.0} ms), {} errors in {} runs.",
        b1.rest.p50(),
        b1.runc.p50(),
        b1.podman.p50(),
        b1.rest.errors,
        b1.rest.n() + b1.rest.errors
    );
    if l.started > 0 {
        let _ = write!(
            o,
            " The seed's load: {} containers ({} at a time) at {:.1} containers/s, start p50 / \
             p99 {:.0} / {:.0} ms, {} failed.",
            l.started,
            l.plan.map_or(0, |p| p.concurrency),
            l.started as f64 / l.wall.as_secs_f64().max(1e-9),
            l.start.p50(),
            l.start.p99(),
            l.failed
        );
    }
    let _ = writeln!(o);
    let _ = write!(o, "<!-- headline:end -->");
    o
}

/// Replaces the headline block of the README at `path`, if it has the markers.
pub fn update_readme(path: &Path, block: &str) -> std::io::Result<bool> {
    let text = std::fs::read_to_string(path)?;
    let (Some(b), Some(e)) = (
        text.find("<!-- headline:begin"),
        text.find("<!-- headline:end -->"),
    ) else {
        return Ok(false);
    };
    if e < b {
        return Ok(false);
    }
    let end = e + "<!-- headline:end -->".len();
    let new = format!("{}{}{}", &text[..b], block, &text[end..]);
    std::fs::write(path, new)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_block_is_replaced_between_its_markers_only() {
        let dir = std::env::temp_dir().join(format!("inarray-bench-readme-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("README.md");
        std::fs::write(
            &p,
            "a\n<!-- headline:begin x -->\nold\n<!-- headline:end -->\nb\n",
        )
        .unwrap();
        assert!(update_readme(&p, "<!-- headline:begin -->\nnew\n<!-- headline:end -->").unwrap());
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "a\n<!-- headline:begin -->\nnew\n<!-- headline:end -->\nb\n"
        );
        std::fs::write(&p, "no markers\n").unwrap();
        assert!(!update_readme(&p, "x").unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "no markers\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
