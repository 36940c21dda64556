#!/usr/bin/env python3
"""API access overhead: sequential requests on one keep-alive connection, over the unix socket
(no token) and over TCP with a bearer token; and the cost of the audit write (a 404 POST, audited,
against a 404 GET, not audited). Starts its own daemon from the binary given as argv[1].

    sudo bench/access/run.py target/release/inarray [N]
"""
import http.client, json, os, socket, statistics, subprocess, sys, tempfile, time

BIN = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000

class UnixConn(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path_ = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path_)

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def timed(conn, method, path, headers, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request(method, path, headers=headers)
        r = conn.getresponse(); r.read()
        out.append((time.perf_counter() - t) * 1e6)
    out.sort()
    return {"p50_us": round(out[len(out) // 2]), "p99_us": round(out[int(len(out) * 0.99)]),
            "mean_us": round(statistics.mean(out))}

with tempfile.TemporaryDirectory(prefix="inarray-bench-access-") as tmp:
    os.makedirs(f"{tmp}/array")
    port = free_port()
    sock = f"{tmp}/api.sock"
    d = subprocess.Popen([BIN, "serve", "--array", f"{tmp}/array", "--state-dir", f"{tmp}/state",
                          "--listen", f"unix:{sock}", "--listen", f"tcp:127.0.0.1:{port}"],
                         stderr=open(f"{tmp}/log", "w"), env={**os.environ, "INARRAY_LOG": "warn"})
    try:
        for _ in range(300):
            try:
                u = UnixConn(sock); u.request("GET", "/v1/health"); u.getresponse().read(); break
            except OSError:
                time.sleep(0.05)
        u.request("POST", "/v1/tokens", body=json.dumps({"name": "bench", "scope": "admin"}),
                  headers={"Content-Type": "application/json"})
        token = json.loads(u.getresponse().read())["token"]
        t = http.client.HTTPConnection("127.0.0.1", port)
        auth = {"Authorization": f"Bearer {token}"}
        res = {
            "unix GET /v1/health": timed(u, "GET", "/v1/health", {}, N),
            "tcp+token GET /v1/health": timed(t, "GET", "/v1/health", auth, N),
            "unix GET /v1/containers/nope (404, not audited)": timed(u, "GET", "/v1/containers/nope", {}, N),
            "unix POST /v1/containers/nope/start (404, audited)": timed(u, "POST", "/v1/containers/nope/start", {}, N),
        }
        print(json.dumps({"n": N, "results": res}, indent=1))
    finally:
        d.terminate(); d.wait()
