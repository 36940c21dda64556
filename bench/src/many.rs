//! Section 2, many sleeping containers: start, memory of the daemon and the shims, delete,
//! leftovers; `fan_out`, the bounded-concurrency request runner the other benchmarks reuse.

use super::*;

#[derive(Default)]
pub struct Many {
    pub n: usize,
    pub concurrency: usize,
    pub start_all: Duration,
    pub start: Samples,
    pub running: usize,
    pub daemon_before: procs::Mem,
    pub daemon: procs::Mem,
    pub shims: procs::Mem,
    pub inits: procs::Mem,
    pub delete_all: Duration,
    pub delete: Samples,
    pub left_shims: usize,
    pub left_cgroups: Vec<String>,
    pub left_rows: usize,
    /// Size of the daemon's sealed copy of the shim executable (a memfd: RAM outside every RSS
    /// and PSS).
    pub sealed_bytes: u64,
    pub env_start: String,
    pub env_end: String,
}

/// Runs `jobs` (index → request) with `conc` in flight; returns (index, duration, result).
pub(crate) async fn fan_out<F, Fut>(
    socket: &Path,
    jobs: usize,
    conc: usize,
    f: F,
) -> Vec<(usize, Duration, Result<Value>)>
where
    F: Fn(Client, usize) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = Result<Value>> + 'static,
{
    let next = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let local = tokio::task::LocalSet::new();
    let mut handles = Vec::new();
    for _ in 0..conc.min(jobs.max(1)) {
        let next = next.clone();
        let f = f.clone();
        let socket = socket.to_owned();
        handles.push(local.spawn_local(async move {
            let mut out = Vec::new();
            loop {
                let i = next.get();
                if i >= jobs {
                    break;
                }
                next.set(i + 1);
                let client = Client::new(inarray_api::serve::Listen::Unix(socket.clone()));
                let t = Instant::now();
                let r = f(client, i).await;
                out.push((i, t.elapsed(), r));
            }
            out
        }));
    }
    local
        .run_until(async move {
            let mut all = Vec::new();
            for h in handles {
                all.extend(h.await.unwrap_or_default());
            }
            all
        })
        .await
}

pub(crate) async fn bench_many(o: &RunOpts, work: &Path, plan: &Plan) -> Result<Many> {
    let n = plan.containers;
    let d = Daemon::start(&o.bin, &work.join("d2")).await?;
    d.import(&work.join("busybox-oci.tar"), IMAGE).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut res = Many {
        n,
        concurrency: plan.concurrency,
        daemon_before: procs::mem(d.pid).unwrap_or_default(),
        ..Default::default()
    };
    res.sealed_bytes = procs::memfd_bytes(d.pid);
    res.env_start = procs::pressure();

    eprintln!(
        "2. starting {n} sleep containers, {} in flight",
        plan.concurrency
    );
    let t0 = Instant::now();
    let started = fan_out(&d.socket, n, plan.concurrency, |c, i| async move {
        let body = json!({"image": IMAGE, "command": ["sleep", "3600"], "name": format!("bench-sleep-{i}")});
        call(&c, Method::POST, "/v1/containers", Some(&body)).await
    })
    .await;
    res.start_all = t0.elapsed();
    let mut ids = Vec::new();
    for (_, t, r) in started {
        match r {
            Ok(v) => {
                res.start.push(ms(t));
                if let Some(id) = v["id"].as_str() {
                    ids.push(id.to_owned());
                }
            }
            Err(e) => res.start.error(e),
        }
    }

    let list = d.call(Method::GET, "/v1/containers", None).await?;
    let mut init_pids = Vec::new();
    for x in list.as_array().into_iter().flatten() {
        if x["state"] == "running" && ids.iter().any(|id| x["id"] == id.as_str()) {
            res.running += 1;
            if let Some(p) = x["pid"].as_i64() {
                init_pids.push(p as i32);
            }
        }
    }
    eprintln!(
        "2. {} of {n} running after {:.1} s; measuring memory",
        res.running,
        res.start_all.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    res.daemon = procs::mem(d.pid).unwrap_or_default();
    res.shims = procs::mem_sum(&procs::shims_of(&d.state));
    res.inits = procs::mem_sum(&init_pids);

    eprintln!("2. deleting them with force=true");
    let del_ids = std::rc::Rc::new(ids.clone());
    let t0 = Instant::now();
    let deleted = fan_out(&d.socket, ids.len(), plan.concurrency, move |c, i| {
        let ids = del_ids.clone();
        async move {
            let path = format!("/v1/containers/{}?force=true", ids[i]);
            call(&c, Method::DELETE, &path, None).await
        }
    })
    .await;
    res.delete_all = t0.elapsed();
    for (_, t, r) in deleted {
        match r {
            Ok(_) => res.delete.push(ms(t)),
            Err(e) => res.delete.error(e),
        }
    }

    // Nothing may be left: no shims, no cgroups, no rows (give stragglers up to 10 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        res.left_shims = procs::shims_of(&d.state).len();
        res.left_cgroups = ids
            .iter()
            .flat_map(|id| procs::cgroup_dirs(id))
            .map(|p| p.display().to_string())
            .collect();
        if (res.left_shims == 0 && res.left_cgroups.is_empty()) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    res.env_end = procs::pressure();
    let all = d.call(Method::GET, "/v1/containers?all=true", None).await?;
    res.left_rows = all.as_array().map_or(0, |a| a.len());
    d.stop();
    Ok(res)
}
