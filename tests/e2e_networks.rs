//! End-to-end: bridge networks through netavark and aardvark-dns. Every subnet is a private
//! range of this file's own (10.123.N.0/24 per test, 10.124.N.0/24 for the namespaces that play
//! compute hosts); only loopback and addresses of namespaces these tests make are contacted.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{Method, TestDaemon};
use serde_json::{json, Value};

/// A daemon whose built-in `bridge` network and subnet pool are this test's own.
async fn daemon(n: u8) -> TestDaemon {
    daemon_with(n, Vec::new()).await
}

async fn daemon_with(n: u8, mut args: Vec<String>) -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("inarray.toml");
    std::fs::write(
        &cfg,
        format!("[networks]\nbridge_subnet = \"10.123.{n}.0/24\"\npool = \"10.125.{n}.0/24\"\n"),
    )
    .unwrap();
    args.extend(["--config".into(), cfg.to_str().unwrap().into()]);
    let d = TestDaemon::start_with(args).await;
    // The config file must outlive its temp dir (read again at a relaunch).
    std::mem::forget(dir);
    d.with_busybox().await;
    d
}

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Polls `curl URL` (optionally inside namespace `ns`) until its body contains `want`.
fn curl_until(ns: Option<&str>, url: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cmd = match ns {
            Some(ns) => format!("ip netns exec {ns} curl -s -m 5 {url}"),
            None => format!("curl -s -m 5 {url}"),
        };
        let (_, out) = sh(&cmd);
        if out.contains(want) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never answered {want:?}: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A shell line that resolves `$1` through the container's resolv.conf (busybox's own DNS
/// client: Debian's busybox-static is linked against glibc, whose static getaddrinfo cannot
/// load NSS modules in a bare image, so wget and ping take addresses here) and fetches port 8080
/// (with `timeout`: that busybox's `wget -T` crashes).
const FETCH: &str = "fetch() { a=$(nslookup $1 | awk '/^Address: /{print $2}' | tail -1); \
    echo resolved $1=$a; timeout 10 wget -q -O- http://$a:8080/; }";

const HTTPD: &str = "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www";

fn httpd(network: &str, name: &str, ports: Value) -> Value {
    json!({
        "image": "busybox", "name": name, "network": network,
        "command": ["sh", "-c", HTTPD], "ports": ports, "hostname": name,
    })
}

fn id(c: &Value) -> String {
    c["id"].as_str().unwrap().to_owned()
}

/// Everything of the node's firewall (both tables netavark writes).
fn firewall() -> String {
    sh("iptables -S; iptables -t nat -S").1
}

/// A network namespace playing a compute host, linked to the node by a veth pair:
/// the node is `10.124.N.1`, the compute host `10.124.N.2`. Removed on drop.
struct ComputeHost {
    ns: String,
    host_if: String,
}

impl ComputeHost {
    fn new(n: u8) -> Self {
        let ns = format!("iach{n}-{}", std::process::id());
        let host_if = format!("iah{n}-{}", std::process::id() % 100000);
        let peer = format!("iap{n}-{}", std::process::id() % 100000);
        let _ = sh(&format!("ip netns del {ns}; ip link del {host_if}"));
        let (ok, out) = sh(&format!(
            "set -e; ip netns add {ns}; ip link add {host_if} type veth peer name {peer}; \
             ip link set {peer} netns {ns}; ip addr add 10.124.{n}.1/24 dev {host_if}; \
             ip link set {host_if} up; ip -n {ns} addr add 10.124.{n}.2/24 dev {peer}; \
             ip -n {ns} link set {peer} up; ip -n {ns} link set lo up"
        ));
        assert!(ok, "{out}");
        Self { ns, host_if }
    }
}

impl Drop for ComputeHost {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "ip link del {}; ip netns del {}",
            self.host_if, self.ns
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_port_answers_and_names_resolve_on_a_network() {
    let d = daemon(1).await;
    let nets = d.ok(Method::GET, "/v1/networks", None).await;
    assert!(
        nets.as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "bridge"
                && n["builtin"] == true
                && n["subnet"] == "10.123.1.0/24"),
        "{nets}"
    );
    let app = d
        .ok(
            Method::POST,
            "/v1/networks",
            Some(json!({"name": "app", "subnet": "10.123.2.0/24"})),
        )
        .await;
    assert_eq!(app["gateway"], "10.123.2.1", "{app}");
    d.ok(
        Method::POST,
        "/v1/networks",
        Some(json!({"name": "other", "subnet": "10.123.3.0/24"})),
    )
    .await;
    // The CLI lists and inspects them.
    let (ok, out, err) = d.cli(&["network", "ls"]);
    assert!(
        ok && out.contains("app") && out.contains("10.123.3.0/24"),
        "{out}{err}"
    );
    let (ok, out, err) = d.cli(&["network", "inspect", "app"]);
    assert!(ok && out.contains("\"interface\""), "{out}{err}");

    // An ephemeral port on loopback, reported back; the container's address on the network.
    let web = d
        .run(json!({
            "image": "busybox", "name": "web", "network": "app", "aliases": ["www"],
            "command": ["sh", "-c", HTTPD], "hostname": "web",
            "ports": [{"host_ip": "127.0.0.1", "host_port": 0, "container_port": 8080}],
        }))
        .await;
    let port = web["ports"][0]["host_port"].as_i64().unwrap();
    assert!(port > 0, "{web}");
    let web = d.container(&id(&web)).await;
    let ip = web["networks"][0]["ip"].as_str().unwrap().to_owned();
    assert!(ip.starts_with("10.123.2."), "{web}");
    curl_until(None, &format!("http://127.0.0.1:{port}/"), "hello-from-web");
    // Its traffic is counted (stats and /metrics).
    let st = d
        .ok(
            Method::GET,
            &format!("/v1/containers/{}/stats", id(&web)),
            None,
        )
        .await;
    assert!(st["network"]["tx_bytes"].as_u64().unwrap() > 0, "{st}");
    assert!(st["network"]["rx_packets"].as_u64().unwrap() > 0, "{st}");
    let m = d.metrics_text().await;
    assert!(
        m.lines().any(
            |l| l.starts_with("inarray_container_network_tx_bytes_total{")
                && l.contains("container=\"web\"")
        ),
        "{m}"
    );

    // Another container on the network reaches it by name and alias; /etc files are written.
    let (code, logs) = d
        .run_to_exit(json!({
            "image": "busybox", "network": "app", "hostname": "cli",
            "extra_hosts": ["db.example:10.9.9.9"],
            "command": ["sh", "-c", format!("{FETCH}; fetch web && fetch www \
                && ping -c 1 -W 5 $a >/dev/null && echo ping-ok; cat /etc/hosts /etc/resolv.conf; hostname")],
        }))
        .await;
    assert_eq!(code, 0, "{logs}");
    assert_eq!(logs.matches("hello-from-web").count(), 2, "{logs}");
    assert!(logs.contains("ping-ok"), "{logs}");
    assert!(logs.contains(&format!("resolved web={ip}")), "{logs}");
    assert!(logs.contains(&format!("resolved www={ip}")), "{logs}");
    assert!(logs.contains("10.9.9.9\tdb.example"), "{logs}");
    assert!(logs.contains("nameserver 10.123.2.1"), "{logs}");
    assert!(logs.trim_end().ends_with("cli"), "{logs}");

    // From another network the name does not resolve.
    let (code, logs) = d
        .run_to_exit(json!({
            "image": "busybox", "network": "other",
            "command": ["sh", "-c", format!("{FETCH}; fetch web")],
        }))
        .await;
    assert_ne!(code, 0, "{logs}");
    assert!(!logs.contains("hello-from-web"), "{logs}");

    // A network in use is not removed; the built-in one never.
    let e = d.fails(Method::DELETE, "/v1/networks/app", None, 409).await;
    assert!(e.contains("containers on it"), "{e}");
    d.fails(Method::DELETE, "/v1/networks/bridge", None, 409)
        .await;

    // Deleting the containers takes everything of theirs away.
    let bridge = app["interface"].as_str().unwrap().to_owned();
    for c in d
        .ok(Method::GET, "/v1/containers?all=true", None)
        .await
        .as_array()
        .unwrap()
    {
        d.ok(
            Method::DELETE,
            &format!("/v1/containers/{}?force=true", id(c)),
            None,
        )
        .await;
    }
    let fw = firewall();
    assert!(
        !fw.contains(&ip) && !fw.contains(&format!("dport {port} ")),
        "{fw}"
    );
    assert!(!std::path::Path::new(&format!("/sys/class/net/{bridge}")).exists());
    assert_eq!(std::fs::read_dir(d.state.join("netns")).unwrap().count(), 0);
    d.ok(Method::DELETE, "/v1/networks/app", None).await;
    let (ok, _, err) = d.cli(&["network", "rm", "other"]);
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_host_reaches_the_published_port_and_internal_networks_stay_inside() {
    let d = daemon(4).await;
    let ch = ComputeHost::new(4);
    d.ok(
        Method::POST,
        "/v1/networks",
        Some(json!({"name": "svc", "subnet": "10.123.5.0/24"})),
    )
    .await;
    d.ok(
        Method::POST,
        "/v1/networks",
        Some(json!({"name": "sealed", "subnet": "10.123.6.0/24", "internal": true})),
    )
    .await;
    // Published on the node's address in the compute host's network only.
    let web = d
        .run(httpd(
            "svc",
            "web4",
            json!([{"host_ip": "10.124.4.1", "host_port": 0, "container_port": 8080}]),
        ))
        .await;
    let port = web["ports"][0]["host_port"].as_i64().unwrap();
    curl_until(
        Some(&ch.ns),
        &format!("http://10.124.4.1:{port}/"),
        "hello-from-web4",
    );
    // The built-in bridge network works too (and reaches the node's other address).
    let (code, logs) = d
        .run_to_exit(json!({
            "image": "busybox", "network": "bridge",
            "command": ["sh", "-c", format!("timeout 10 wget -q -O- http://10.124.4.1:{port}/")],
        }))
        .await;
    assert_eq!(code, 0, "{logs}");
    assert!(logs.contains("hello-from-web4"), "{logs}");
    // An internal network has no route out: the node's other addresses are out of reach.
    let (code, logs) = d
        .run_to_exit(json!({
            "image": "busybox", "network": "sealed",
            "command": ["sh", "-c", format!("timeout 10 wget -q -O- http://10.124.4.1:{port}/; echo rc=$?; ip route")],
        }))
        .await;
    assert_eq!(code, 0, "{logs}");
    assert!(
        !logs.contains("hello-from-web4") && !logs.contains("rc=0"),
        "{logs}"
    );
    drop(ch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_daemon_and_of_a_shim_leaves_nothing_of_the_dead_container() {
    let mut d = daemon(7).await;
    let net = d
        .ok(
            Method::POST,
            "/v1/networks",
            Some(json!({"name": "k9", "subnet": "10.123.8.0/24"})),
        )
        .await;
    let bridge = net["interface"].as_str().unwrap().to_owned();
    let ports = json!([{"host_ip": "127.0.0.1", "host_port": 0, "container_port": 8080}]);
    let a = d.run(httpd("k9", "alive", ports.clone())).await;
    let b = d.run(httpd("k9", "doomed", ports)).await;
    let (pa, pb) = (
        a["ports"][0]["host_port"].as_i64().unwrap(),
        b["ports"][0]["host_port"].as_i64().unwrap(),
    );
    curl_until(None, &format!("http://127.0.0.1:{pa}/"), "hello-from-alive");
    curl_until(
        None,
        &format!("http://127.0.0.1:{pb}/"),
        "hello-from-doomed",
    );
    let b_id = id(&b);
    let b_ip = d.container(&b_id).await["networks"][0]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    let ports_of = |br: &str| {
        std::fs::read_dir(format!("/sys/class/net/{br}/brif"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    assert_eq!(ports_of(&bridge), 2);

    // The daemon dies, then the shim of one container: nobody tears its network down now.
    d.kill9();
    let rec: Value = serde_json::from_slice(
        &std::fs::read(d.state.join("containers").join(&b_id).join("shim-pid.json")).unwrap(),
    )
    .unwrap();
    let shim = rec["shim_pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Its container's init dies with its supervisor's cgroup cleanup at reconcile at the latest.
    d.launch().await;
    d.wait_for(&b_id, 60, |c| c["state"] != "running").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let fw = firewall();
        let aardvark =
            std::fs::read_to_string(d.state.join("netavark/aardvark-dns/k9")).unwrap_or_default();
        let clean = ports_of(&bridge) == 1
            && !fw.contains(&b_ip)
            && !fw.contains(&format!("dport {pb} "))
            && !aardvark.contains(&b_id)
            && !d.state.join("netns").join(&b_id).exists();
        if clean {
            assert!(aardvark.contains(&id(&a)), "{aardvark}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leftovers of the dead container: bridge ports {}, aardvark {aardvark:?}\n{fw}\n{}",
            ports_of(&bridge),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The survivor still answers on its port, and new containers cannot take it.
    curl_until(None, &format!("http://127.0.0.1:{pa}/"), "hello-from-alive");
    let e = d
        .fails(
            Method::POST,
            "/v1/containers",
            Some(httpd(
                "k9",
                "thief",
                json!([{"host_ip": "127.0.0.1", "host_port": pa, "container_port": 8080}]),
            )),
            409,
        )
        .await;
    assert!(e.contains(&pa.to_string()), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_network_and_port_requests_are_refused_and_nothing_is_made() {
    let d = daemon(9).await;
    let long = "n".repeat(300);
    for (body, status, want) in [
        (json!({"name": "a/b"}), 400, "name"),
        (json!({"name": long}), 400, "name"),
        (json!({"name": ""}), 400, "name"),
        (json!({"name": "host"}), 400, "name"),
        (
            json!({"name": "x", "subnet": "10.123.10.7/24"}),
            400,
            "subnet",
        ),
        (json!({"name": "x", "subnet": "nonsense"}), 400, "subnet"),
        (
            json!({"name": "x", "subnet": "10.123.10.0/24", "gateway": "10.1.1.1"}),
            400,
            "gateway",
        ),
        (
            json!({"name": "x", "options": {"evil": "1"}}),
            400,
            "options.evil",
        ),
        (json!({"name": "x", "bogus": 1}), 422, "bogus"),
        (
            json!({"name": "x", "subnet": "127.0.0.0/24"}),
            409,
            "127.0.0.0/8",
        ),
        (
            json!({"name": "x", "subnet": "10.123.9.128/25"}),
            409,
            "bridge",
        ),
    ] {
        let e = d
            .fails(Method::POST, "/v1/networks", Some(body.clone()), status)
            .await;
        assert!(e.contains(want), "{body}: {e}");
    }
    let h = d
        .ok(
            Method::POST,
            "/v1/networks",
            Some(json!({"name": "h", "subnet": "10.123.10.0/24"})),
        )
        .await;
    d.fails(
        Method::POST,
        "/v1/networks",
        Some(json!({"name": "h", "subnet": "10.123.11.0/24"})),
        409,
    )
    .await;
    let e = d
        .fails(
            Method::POST,
            "/v1/networks",
            Some(json!({"name": "h2", "subnet": "10.123.10.0/23"})),
            409,
        )
        .await;
    assert!(e.contains("network h"), "{e}");
    // Without a subnet: a /24 of the pool.
    let auto = d
        .ok(Method::POST, "/v1/networks", Some(json!({"name": "auto"})))
        .await;
    assert_eq!(auto["subnet"], "10.125.9.0/24", "{auto}");

    let many: Vec<Value> = (0..1000)
        .map(|i| json!({"host_port": 20000 + i, "container_port": 80}))
        .collect();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = holder.local_addr().unwrap().port();
    let port =
        |p: Value| json!({"image": "busybox", "network": "h", "command": ["true"], "ports": [p]});
    for (body, status, want) in [
        (
            port(json!({"container_port": 0})),
            400,
            "ports[0].container_port",
        ),
        (
            port(json!({"container_port": 65536})),
            400,
            "ports[0].container_port",
        ),
        (
            port(json!({"container_port": 80, "host_port": -1})),
            400,
            "ports[0].host_port",
        ),
        (
            port(json!({"container_port": 80, "host_port": 65536})),
            400,
            "ports[0].host_port",
        ),
        (
            port(json!({"container_port": 80, "protocol": "sctp"})),
            422,
            "sctp",
        ),
        (
            port(json!({"container_port": 80, "host_ip": "not-an-ip"})),
            400,
            "ports[0].host_ip",
        ),
        (
            port(json!({"container_port": 80, "host_ip": "203.0.113.9"})),
            400,
            "not an address of this node",
        ),
        (
            port(json!({"container_port": 80, "host_ip": "127.0.0.1", "host_port": held})),
            409,
            &held.to_string(),
        ),
        (
            json!({"image": "busybox", "network": "h", "ports": many}),
            400,
            "at most 128",
        ),
        (
            json!({"image": "busybox", "ports": [{"container_port": 80}]}),
            400,
            "bridge network",
        ),
        (
            json!({"image": "busybox", "network": "nope", "command": ["true"]}),
            400,
            "no network named nope",
        ),
        (
            json!({"image": "busybox", "network": "a/b"}),
            400,
            "network",
        ),
        (
            json!({"image": "busybox", "network": "h", "aliases": ["a b"]}),
            400,
            "aliases[0]",
        ),
        (
            json!({"image": "busybox", "hostname": "x/y"}),
            400,
            "hostname",
        ),
        (json!({"image": "busybox", "dns": ["evil"]}), 400, "dns[0]"),
        (
            json!({"image": "busybox", "extra_hosts": ["nocolon"]}),
            400,
            "extra_hosts[0]",
        ),
        (
            json!({"image": "busybox", "network": "h", "ports": [
                {"host_port": 30001, "container_port": 80}, {"host_port": 30001, "container_port": 81}]}),
            400,
            "published twice",
        ),
    ] {
        let e = d
            .fails(Method::POST, "/v1/containers", Some(body.clone()), status)
            .await;
        assert!(e.contains(want), "{want}: {e}");
    }
    drop(holder);
    // Nothing was made: no container, no link, no namespace.
    assert_eq!(
        d.ok(Method::GET, "/v1/containers?all=true", None).await,
        json!([])
    );
    let bridge = h["interface"].as_str().unwrap();
    assert!(!std::path::Path::new(&format!("/sys/class/net/{bridge}")).exists());
    assert!(!firewall().contains("10.123.10."), "{}", firewall());
    assert!(std::fs::read_dir(d.state.join("netns"))
        .map(|r| r.count() == 0)
        .unwrap_or(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_publishes_ports_below_1024() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let d = daemon_with(12, vec!["--listen".into(), format!("tcp:127.0.0.1:{port}")]).await;
    let (ok, secret, err) = d.cli(&["token", "add", "ops", "--scope", "operate"]);
    assert!(ok, "{err}");
    let client = inarray_api::client::Client::new(inarray_api::serve::Listen::Tcp(
        format!("127.0.0.1:{port}").parse().unwrap(),
    ))
    .with_token(Some(secret.trim().to_owned()));
    let body = |p: i64| {
        json!({"image": "busybox", "network": "bridge", "command": ["true"], "start": false,
               "ports": [{"host_ip": "127.0.0.1", "host_port": p, "container_port": 80}]})
    };
    let e = client
        .json(Method::POST, "/v1/containers", Some(&body(80)))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, inarray_api::client::ClientError::Api { status, message, .. }
            if status.as_u16() == 403 && message.contains("ports[0].host_port")),
        "{e:?}"
    );
    // An unprivileged port is the operator's to publish; the admin (unix socket) may take 80.
    let c = client
        .json(Method::POST, "/v1/containers", Some(&body(0)))
        .await
        .unwrap();
    assert!(c["ports"][0]["host_port"].as_i64().unwrap() >= 1024, "{c}");
    d.ok(Method::POST, "/v1/containers", Some(body(80))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reboot_ended_containers_leave_nothing_and_restarted_ones_answer_again() {
    let mut d = daemon_with(13, vec!["--boot-id".into(), "boot-1".into()]).await;
    let net = d
        .ok(
            Method::POST,
            "/v1/networks",
            Some(json!({"name": "rb", "subnet": "10.123.14.0/24"})),
        )
        .await;
    let bridge = net["interface"].as_str().unwrap().to_owned();
    let ports = json!([{"host_ip": "127.0.0.1", "host_port": 0, "container_port": 8080}]);
    let mut back = httpd("rb", "back", ports.clone());
    back["restart"] = json!("always");
    let back = d.run(back).await;
    let gone = d.run(httpd("rb", "gone", ports)).await;
    // Alone on its network: after the reboot its network's own rules and bridge go too.
    let alone_net = d
        .ok(
            Method::POST,
            "/v1/networks",
            Some(json!({"name": "rb2", "subnet": "10.123.17.0/24"})),
        )
        .await;
    let alone = d
        .run(json!({"image": "busybox", "network": "rb2", "command": ["sleep", "100000"]}))
        .await;
    let (pback, pgone) = (
        back["ports"][0]["host_port"].as_i64().unwrap(),
        gone["ports"][0]["host_port"].as_i64().unwrap(),
    );
    curl_until(
        None,
        &format!("http://127.0.0.1:{pback}/"),
        "hello-from-back",
    );
    curl_until(
        None,
        &format!("http://127.0.0.1:{pgone}/"),
        "hello-from-gone",
    );
    let ip_of = |c: &Value| c["networks"][0]["ip"].as_str().unwrap().to_owned();
    let back_ip = ip_of(&d.container(&id(&back)).await);
    let gone_ip = ip_of(&d.container(&id(&gone)).await);

    // The power goes: the daemon, the shims, the containers, aardvark-dns, and every namespace
    // (their bind mounts are kernel state); the firewall rules and the state directory stay.
    d.kill9();
    for c in [&back, &gone, &alone] {
        let rec: Value = serde_json::from_slice(
            &std::fs::read(d.state.join("containers").join(id(c)).join("shim-pid.json")).unwrap(),
        )
        .unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(rec["shim_pid"].as_i64().unwrap() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = inarray_runtime::cgroups::cleanup(
        std::path::Path::new(inarray_runtime::cgroups::MOUNT_ROOT),
        &format!("/{}", d.cgroup_root),
    );
    if let Ok(pid) = std::fs::read_to_string(d.state.join("netavark/aardvark-dns/aardvark.pid")) {
        let _ = sh(&format!("kill -9 {}", pid.trim()));
    }
    let netns = d.state.join("netns");
    let (ok, out) = sh(&format!(
        "for f in {0}/*; do umount -l $f; done; umount -l {0}",
        netns.display()
    ));
    assert!(ok, "{out}");
    assert!(
        firewall().contains(&gone_ip),
        "the rules outlive the namespaces"
    );

    let i = d.extra_args.iter().position(|a| a == "--boot-id").unwrap();
    d.extra_args[i + 1] = "boot-2".into();
    d.launch().await;
    d.wait_for(&id(&gone), 30, |c| c["state"] == "exited").await;
    let now = d
        .wait_for(&id(&back), 60, |c| c["state"] == "running")
        .await;
    assert_eq!(ip_of(&now), back_ip, "{now}");
    curl_until(
        None,
        &format!("http://127.0.0.1:{pback}/"),
        "hello-from-back",
    );
    let fw = firewall();
    assert!(
        !fw.contains(&gone_ip) && !fw.contains(&format!("dport {pgone} ")),
        "{fw}"
    );
    let aardvark =
        std::fs::read_to_string(d.state.join("netavark/aardvark-dns/rb")).unwrap_or_default();
    assert!(
        aardvark.contains(&id(&back)) && !aardvark.contains(&id(&gone)),
        "{aardvark}"
    );
    assert_eq!(
        std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
            .unwrap()
            .count(),
        1
    );
    assert!(!netns.join(id(&gone)).exists());
    d.wait_for(&id(&alone), 30, |c| c["state"] == "exited")
        .await;
    let alone_bridge = alone_net["interface"].as_str().unwrap();
    assert!(!std::path::Path::new(&format!("/sys/class/net/{alone_bridge}")).exists());
    assert!(!firewall().contains("10.123.17."), "{}", firewall());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_keep_the_address_and_the_port_and_a_stop_releases_them() {
    let d = daemon(15).await;
    d.ok(
        Method::POST,
        "/v1/networks",
        Some(json!({"name": "rs", "subnet": "10.123.16.0/24"})),
    )
    .await;
    let mut body = httpd(
        "rs",
        "again",
        json!([{"host_ip": "127.0.0.1", "host_port": 0, "container_port": 8080}]),
    );
    body["restart"] = json!("always");
    let c = d.run(body).await;
    let cid = id(&c);
    let port = c["ports"][0]["host_port"].as_i64().unwrap();
    let ip = d.container(&cid).await["networks"][0]["ip"].clone();
    curl_until(
        None,
        &format!("http://127.0.0.1:{port}/"),
        "hello-from-again",
    );
    // Killed: the policy starts it again in the same namespace.
    d.ok(
        Method::POST,
        &format!("/v1/containers/{cid}/kill?signal=KILL"),
        None,
    )
    .await;
    d.wait_for(&cid, 60, |c| {
        c["state"] == "running" && c["restart_count"].as_i64() >= Some(1)
    })
    .await;
    curl_until(
        None,
        &format!("http://127.0.0.1:{port}/"),
        "hello-from-again",
    );
    // Stopped: its rules go; started: back on the same address and port.
    d.ok(
        Method::POST,
        &format!("/v1/containers/{cid}/stop?timeout=1"),
        None,
    )
    .await;
    let fw = firewall();
    assert!(!fw.contains(&format!("dport {port} ")), "{fw}");
    assert!(!d.state.join("netns").join(&cid).exists());
    d.ok(Method::POST, &format!("/v1/containers/{cid}/start"), None)
        .await;
    assert_eq!(d.container(&cid).await["networks"][0]["ip"], ip);
    curl_until(
        None,
        &format!("http://127.0.0.1:{port}/"),
        "hello-from-again",
    );
}
