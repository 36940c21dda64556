#!/usr/bin/env python3
"""Seed inputs for the fuzz targets, written at each run (not committed): valid bodies and a
valid minimal OCI image archive, so that the fuzzer starts from inputs that reach deep."""
import gzip, hashlib, io, json, os, sys, tarfile

out = sys.argv[1]


def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def tar_bytes(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# API bodies: the first byte picks the kind (see api_bodies.rs).
bodies = [
    (0, {"image": "busybox", "command": ["sh", "-c", "true"], "engine": "default",
         "resources": {"memory": "64m", "cpus": 0.5}, "volumes": [{"source": "a/b", "target": "/d", "read_only": True}],
         "env": {"A": "1"}, "restart": {"policy": "on-failure", "max_retries": 3}}),
    (1, {"name": "nightly", "schedule": "30 2 * * MON-FRI", "time_zone": "Europe/Berlin",
         "container": {"image": "busybox", "command": ["true"]}, "concurrency": "forbid",
         "missed": "run_once", "retries": 2, "timeout_seconds": 60}),
    (1, {"name": "secs", "schedule": "*/5 * * * * *", "container": {"image": "busybox", "command": ["true"]}}),
    (2, {"name": "data", "path": "projects", "clients": [{"match": "10.0.0.0/8", "access": "rw"}],
         "squash": "root", "anon_uid": 65534, "anon_gid": 65534}),
    (3, {"name": "backup", "resources": {"memory": "4g", "cpu_weight": 50, "read_bps": "200m", "pids": 100}}),
    (4, {"memory": "1g", "memory_reservation": "512m", "io_weight": 100, "write_iops": 1000, "cpuset": "0-1"}),
]
for i, (kind, body) in enumerate(bodies):
    put("api_bodies", f"seed-{i}", bytes([kind]) + json.dumps(body).encode())

for i, r in enumerate(["busybox", "registry.example:5000/team/tool:1.4",
                       "docker.io/library/alpine@sha256:" + "a" * 64, "localhost/x/y:latest"]):
    put("image_reference", f"seed-{i}", r.encode())

# A minimal OCI image-layout archive: one gzip layer with one file.
layer = tar_bytes([("hello.txt", b"hello\n")])
layer_gz = gzip.compress(layer, mtime=0)
sha = lambda b: "sha256:" + hashlib.sha256(b).hexdigest()
config = json.dumps({"architecture": "amd64", "os": "linux",
                     "config": {"Cmd": ["/bin/sh"]},
                     "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}}).encode()
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(layer_gz), "size": len(layer_gz)}]}).encode()
index = json.dumps({"schemaVersion": 2, "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest), "size": len(manifest),
     "annotations": {"org.opencontainers.image.ref.name": "seed:1"}}]}).encode()
blob = lambda b: ("blobs/sha256/" + hashlib.sha256(b).hexdigest(), b)
put("image_archive", "seed-oci", tar_bytes([
    ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index),
    blob(manifest), blob(config), blob(layer_gz)]))

# An NFS NULL call and a GETATTR with AUTH_SYS, each one record (last-fragment bit set).
import struct
def record(body):
    return struct.pack(">I", 0x80000000 | len(body)) + body
def xdr_opaque(b):
    return struct.pack(">I", len(b)) + b + b"\0" * ((4 - len(b) % 4) % 4)
auth_sys = struct.pack(">I", 0) + xdr_opaque(b"client") + struct.pack(">III", 1000, 1000, 1) + struct.pack(">I", 1000)
null_call = struct.pack(">IIIIII", 1, 0, 2, 100003, 3, 0) + struct.pack(">I", 0) + xdr_opaque(b"") + struct.pack(">I", 0) + xdr_opaque(b"")
getattr_call = struct.pack(">IIIIII", 2, 0, 2, 100003, 3, 1) + struct.pack(">I", 1) + xdr_opaque(auth_sys) + struct.pack(">I", 0) + xdr_opaque(b"") + xdr_opaque(b"\1" * 32)
put("nfs_rpc", "seed-null", record(null_call))
put("nfs_rpc", "seed-two", record(null_call) + record(getattr_call))
# The same call split over two fragments.
put("nfs_rpc", "seed-frag", struct.pack(">I", 20) + getattr_call[:20] + struct.pack(">I", 0x80000000 | (len(getattr_call) - 20)) + getattr_call[20:])
