#!/usr/bin/env python3
"""Driver of bench/networks/run: see that script's header. Python standard library only."""

import argparse
import datetime
import http.client
import io
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import tarfile
import tempfile
import time

NS = "ia-bench-ch"
HOST_IF, PEER_IF = "ia-bench-h", "ia-bench-p"
NODE_IP, CH_IP = "10.128.77.1", "10.128.77.2"
SUBNET = "10.127.77.0/24"
IMAGE = "busybox:latest"
PODMAN_IMAGE = "localhost/inarray-bench-net:latest"


def sh(cmd, check=True, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=check, text=True,
                          capture_output=True, **kw)


class Unix(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=120)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        self.sock = s


class Api:
    def __init__(self, sock):
        self.sock = sock

    def call(self, method, path, body=None):
        c = Unix(self.sock)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        raw = r.read()
        c.close()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {raw[:400]!r}")
        return json.loads(raw) if raw else None


def busybox_archive(path):
    """A docker archive of the busybox image (Debian's busybox-static and its applets)."""
    applets = sh(["/bin/busybox", "--list"]).stdout.split()
    lb = io.BytesIO()
    with tarfile.open(fileobj=lb, mode="w") as t:
        for d in ["bin/", "tmp/", "www/"]:
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp/" else 0o755
            t.addfile(ti)
        data = open("/bin/busybox", "rb").read()
        ti = tarfile.TarInfo("bin/busybox")
        ti.size, ti.mode = len(data), 0o755
        t.addfile(ti, io.BytesIO(data))
        page = b"x" * 512
        ti = tarfile.TarInfo("www/index.html")
        ti.size, ti.mode = len(page), 0o644
        t.addfile(ti, io.BytesIO(page))
        for a in applets:
            if a != "busybox" and "/" not in a:
                ti = tarfile.TarInfo("bin/" + a)
                ti.type, ti.linkname = tarfile.SYMTYPE, "busybox"
                t.addfile(ti)
    layer = lb.getvalue()
    import hashlib
    diff = "sha256:" + hashlib.sha256(layer).hexdigest()
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
                      "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [IMAGE],
                            "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(path, "w") as t:
        for name, d in [("layer.tar", layer), ("config.json", cfg), ("manifest.json", manifest)]:
            ti = tarfile.TarInfo(name)
            ti.size = len(d)
            t.addfile(ti, io.BytesIO(d))


def iperf3_dir(dst):
    """iperf3 and its shared libraries, run through the loader from a read-only bind."""
    os.makedirs(dst, exist_ok=True)
    shutil.copy("/usr/bin/iperf3", dst)
    for line in sh(["ldd", "/usr/bin/iperf3"]).stdout.splitlines():
        m = re.search(r"(/\S+)", line)
        if m and os.path.exists(m.group(1)):
            shutil.copy(m.group(1), dst)
    return "/opt/" + os.path.basename(
        [f for f in os.listdir(dst) if f.startswith("ld-linux")][0])


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(ip, port, ns=None, secs=30):
    deadline = time.time() + secs
    while time.time() < deadline:
        cmd = f"timeout 2 bash -c 'exec 3<>/dev/tcp/{ip}/{port}'"
        if ns:
            cmd = f"ip netns exec {ns} {cmd}"
        if sh(cmd, check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{ip}:{port} never answered")


def iperf(ip, port, secs, ns=None):
    cmd = f"iperf3 -c {ip} -p {port} -t {secs} -J"
    if ns:
        cmd = f"ip netns exec {ns} {cmd}"
    for _ in range(5):
        r = sh(cmd, check=False)
        if r.returncode == 0:
            return json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
        time.sleep(1)  # the server is busy with the previous client's teardown
    raise RuntimeError(f"iperf3 {ip}:{port}: {r.stdout[-300:]} {r.stderr[-300:]}")


def ab(ip, port, n, ns=None):
    cmd = f"ab -q -n {n} -c 4 http://{ip}:{port}/index.html"
    if ns:
        cmd = f"ip netns exec {ns} {cmd}"
    out = sh(cmd).stdout
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    if failed:
        raise RuntimeError(f"ab: {failed} failed requests\n{out}")
    return float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--cmdline", default="bench/networks/run")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    secs, reps, n_ab, n_start = (2, 1, 2000, 10) if a.quick else (5, 3, 10000, 30)

    work = tempfile.mkdtemp(prefix="inarray-bench-net.", dir="/var/tmp")
    os.makedirs(f"{work}/array")
    state, sock = f"{work}/state", f"{work}/api.sock"
    cg = f"inarray-benchnet{os.getpid()}"
    pod = ["podman", "--root", f"{work}/podroot", "--runroot", f"{work}/podrun",
           "--runtime", "runc"]
    podrun = ["run", "-d", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
    pod_names = []
    daemon = None
    try:
        with open(f"{work}/cfg.toml", "w") as f:
            f.write(f'[networks]\nbridge_subnet = "10.127.76.0/24"\npool = "10.127.78.0/24"\n')
        daemon = subprocess.Popen(
            [a.bin, "serve", "--array", f"{work}/array", "--state-dir", state,
             "--listen", f"unix:{sock}", "--cgroup-root", cg, "--config", f"{work}/cfg.toml"],
            stdout=open(f"{work}/daemon.log", "w"), stderr=subprocess.STDOUT)
        api = Api(sock)
        for _ in range(300):
            try:
                api.call("GET", "/v1/health")
                break
            except (OSError, RuntimeError):
                time.sleep(0.1)
        busybox_archive(f"{work}/bb.tar")
        sh([a.bin, "--host", f"unix:{sock}", "image", "import", f"{work}/bb.tar"])
        sh(pod + ["load", "-i", f"{work}/bb.tar"])
        sh(pod + ["tag", IMAGE, PODMAN_IMAGE])
        loader = iperf3_dir(f"{work}/array/opt")
        api.call("POST", "/v1/networks", {"name": "bench", "subnet": SUBNET})

        # The compute host's namespace.
        sh(f"ip netns del {NS}; ip link del {HOST_IF}", check=False)
        sh(f"ip netns add {NS} && ip link add {HOST_IF} type veth peer name {PEER_IF} && "
           f"ip link set {PEER_IF} netns {NS} && ip addr add {NODE_IP}/24 dev {HOST_IF} && "
           f"ip link set {HOST_IF} up && ip -n {NS} addr add {CH_IP}/24 dev {PEER_IF} && "
           f"ip -n {NS} link set {PEER_IF} up && ip -n {NS} link set lo up")

        iperf_cmd = [loader, "--library-path", "/opt", "/opt/iperf3", "-s"]
        opt = [{"source": "opt", "target": "/opt", "read_only": True}]
        # Servers: per mode, (ip, port) for loopback and for the namespace path.
        servers = {}
        p = {k: free_port() for k in ["hl", "hn", "bl", "bn", "pl", "pn",
                                       "whl", "whn", "wbl", "wbn", "wpl", "wpn"]}
        # host networking: one server per address (nothing listens on the node's other links).
        for key, ip in [("hl", "127.0.0.1"), ("hn", NODE_IP)]:
            api.call("POST", "/v1/containers", {
                "image": IMAGE, "name": f"iperf-{key}", "network": "host", "volumes": opt,
                "command": iperf_cmd + ["-B", ip, "-p", str(p[key])]})
        for key, ip in [("whl", "127.0.0.1"), ("whn", NODE_IP)]:
            api.call("POST", "/v1/containers", {
                "image": IMAGE, "name": f"httpd-{key}", "network": "host",
                "command": ["httpd", "-f", "-p", f"{ip}:{p[key]}", "-h", "/www"]})
        api.call("POST", "/v1/containers", {
            "image": IMAGE, "name": "iperf-bridge", "network": "bench", "volumes": opt,
            "command": iperf_cmd + ["-p", "5201"],
            "ports": [{"host_ip": "127.0.0.1", "host_port": p["bl"], "container_port": 5201},
                      {"host_ip": NODE_IP, "host_port": p["bn"], "container_port": 5201}]})
        api.call("POST", "/v1/containers", {
            "image": IMAGE, "name": "httpd-bridge", "network": "bench",
            "command": ["httpd", "-f", "-p", "80", "-h", "/www"],
            "ports": [{"host_ip": "127.0.0.1", "host_port": p["wbl"], "container_port": 80},
                      {"host_ip": NODE_IP, "host_port": p["wbn"], "container_port": 80}]})
        for name, cmd, pl, pn, cport, vol in [
            ("inarray-bench-iperf", iperf_cmd + ["-p", "5201"], p["pl"], p["pn"], 5201,
             ["-v", f"{work}/array/opt:/opt:ro"]),
            ("inarray-bench-httpd", ["httpd", "-f", "-p", "80", "-h", "/www"], p["wpl"],
             p["wpn"], 80, []),
        ]:
            sh(pod + podrun + ["--name", name, "--network", "bridge",
                               "-p", f"127.0.0.1:{pl}:{cport}", "-p", f"{NODE_IP}:{pn}:{cport}"]
               + vol + [PODMAN_IMAGE] + cmd)
            pod_names.append(name)
        paths = {
            "inarray host network": ("hl", "hn", "whl", "whn"),
            "inarray published port": ("bl", "bn", "wbl", "wbn"),
            "podman published port": ("pl", "pn", "wpl", "wpn"),
        }
        for mode, (il, inn, wl, wn) in paths.items():
            wait_port("127.0.0.1", p[il])
            wait_port("127.0.0.1", p[wl])
            wait_port(NODE_IP, p[inn], NS)
            wait_port(NODE_IP, p[wn], NS)

        tput = {m: {"lo": [], "ns": []} for m in paths}
        rate = {m: {"lo": [], "ns": []} for m in paths}
        for _ in range(reps):
            for mode, (il, inn, wl, wn) in paths.items():
                tput[mode]["lo"].append(iperf("127.0.0.1", p[il], secs))
                tput[mode]["ns"].append(iperf(NODE_IP, p[inn], secs, NS))
                rate[mode]["lo"].append(ab("127.0.0.1", p[wl], n_ab))
                rate[mode]["ns"].append(ab(NODE_IP, p[wn], n_ab, NS))
        for c in api.call("GET", "/v1/containers?all=true"):
            api.call("DELETE", f"/v1/containers/{c['id']}?force=true")
        sh(pod + ["rm", "-f"] + pod_names)
        pod_names = []

        # Start latency: create+start until running (the API replies once the container runs).
        start = {"inarray none": [], "inarray bridge": [], "podman none": [],
                 "podman bridge": []}
        for i in range(n_start):
            for net in ["none", "bench"]:
                t = time.perf_counter()
                c = api.call("POST", "/v1/containers",
                             {"image": IMAGE, "network": net, "command": ["sleep", "3600"]})
                start["inarray " + ("none" if net == "none" else "bridge")].append(
                    (time.perf_counter() - t) * 1e3)
                api.call("DELETE", f"/v1/containers/{c['id']}?force=true")
            for net in ["none", "bridge"]:
                name = f"inarray-bench-start-{i}-{net}"
                t = time.perf_counter()
                sh(pod + podrun + ["--name", name, "--network", net, PODMAN_IMAGE,
                                   "sleep", "3600"])
                start[f"podman {net}"].append((time.perf_counter() - t) * 1e3)
                sh(pod + ["rm", "-f", "-t", "0", name])
    except Exception:
        # What the containers said, for the failure's report.
        try:
            for c in Api(sock).call("GET", "/v1/containers?all=true"):
                cn = Unix(sock)
                cn.request("GET", f"/v1/containers/{c['id']}/logs")
                print(c["name"], c["state"], c.get("error"), cn.getresponse().read()[-500:])
        except (OSError, RuntimeError) as e:
            print("no container logs:", e)
        raise
    finally:
        if daemon is not None and daemon.poll() is None:
            try:
                for c in Api(sock).call("GET", "/v1/containers?all=true"):
                    Api(sock).call("DELETE", f"/v1/containers/{c['id']}?force=true")
                for n in Api(sock).call("GET", "/v1/networks"):
                    if not n["builtin"]:
                        Api(sock).call("DELETE", f"/v1/networks/{n['name']}")
            except (OSError, RuntimeError) as e:
                print("cleanup:", e)
            daemon.kill()
            daemon.wait()
        if pod_names:
            sh(pod + ["rm", "-f", "-t", "0"] + pod_names, check=False)
        sh(pod + ["rm", "-a", "-f", "-t", "0"], check=False)
        sh(pod + ["rmi", "-a", "-f"], check=False)
        sh(f"ip link del {HOST_IF}; ip netns del {NS}", check=False)
        sh(f"umount -l {state}/netns", check=False)
        for ctl in os.listdir("/sys/fs/cgroup"):
            for root in [cg, cg + "-storage"]:
                d = f"/sys/fs/cgroup/{ctl}/{root}"
                if os.path.isdir(d):
                    sh(f"find {d} -depth -type d -exec rmdir {{}} +", check=False)
        sh(f"umount -R {work}/podrun {work}/podroot", check=False)
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    rows = []
    h_lo, h_ns = med(tput["inarray host network"]["lo"]), med(tput["inarray host network"]["ns"])
    r_lo, r_ns = med(rate["inarray host network"]["lo"]), med(rate["inarray host network"]["ns"])
    for mode in paths:
        t_lo, t_ns = med(tput[mode]["lo"]), med(tput[mode]["ns"])
        c_lo, c_ns = med(rate[mode]["lo"]), med(rate[mode]["ns"])
        rows.append(f"| {mode} | {t_lo:.2f} ({t_lo / h_lo:.2f}×) | {t_ns:.2f} ({t_ns / h_ns:.2f}×) "
                    f"| {c_lo:.0f} ({c_lo / r_lo:.2f}×) | {c_ns:.0f} ({c_ns / r_ns:.2f}×) |")
    srows = []
    for k, v in start.items():
        srows.append(f"| {k} | {med(v):.1f} | {pct(v, 0.9):.1f} |")
    added = med(start["inarray bridge"]) - med(start["inarray none"])
    padded = med(start["podman bridge"]) - med(start["podman none"])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = f"""## Bridge networks

`{a.cmdline}` ({date}; {reps} rounds, modes interleaved; iperf3 {secs} s a run, ab {n_ab}
requests at concurrency 4 without keep-alive; medians). The servers run in containers of the same
busybox image: iperf3 (from Debian, bound read-only), busybox httpd serving 512 bytes. "lo": the
client on the node connects to 127.0.0.1; "compute host": the client in a network namespace
linked to the node by a veth pair connects to the node's address there. Ratios are against
inarray's host network on the same path.

| server | iperf3 Gbit/s, lo | iperf3 Gbit/s, compute host | requests/s, lo | requests/s, compute host |
|---|---|---|---|---|
{chr(10).join(rows)}

Container start (create+start over the API until running; `podman run -d` for Podman), ms,
{n_start} of each, interleaved:

| start | p50 | p90 |
|---|---|---|
{chr(10).join(srows)}

Added by a bridge network at start (p50): inarray {added:.1f} ms, podman {padded:.1f} ms.
"""
    print(section)
    text = open(a.report).read()
    m = re.search(r"^## Bridge networks\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if m:
        text = text[:m.start()] + section + "\n" + text[m.end():].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    open(a.report, "w").write(text)


if __name__ == "__main__":
    main()
