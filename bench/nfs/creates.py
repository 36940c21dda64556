#!/usr/bin/env python3
"""Small-file creates per second over raw NFSv3 (one TCP connection, sequential calls):
MNT, MKDIR a fresh directory, then CREATE (UNCHECKED) + WRITE 4 KiB (FILE_SYNC) per file.

usage: creates.py HOST NFSPORT MOUNTPORT EXPORT_PATH COUNT
prints: files_per_second
"""
import socket
import struct
import sys
import time


class Rpc:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.xid = 0

    def call(self, prog, proc, args):
        self.xid += 1
        cred = struct.pack(">I", 0) + xdr_bytes(b"bench") + struct.pack(">III", 0, 0, 0)
        msg = struct.pack(">IIIIII", self.xid, 0, 2, prog, 3, proc)
        msg += struct.pack(">I", 1) + xdr_bytes(cred) + struct.pack(">II", 0, 0) + args
        self.s.sendall(struct.pack(">I", 0x80000000 | len(msg)) + msg)
        out = b""
        while True:
            mark = struct.unpack(">I", self.recv(4))[0]
            out += self.recv(mark & 0x7FFFFFFF)
            if mark & 0x80000000:
                break
        xid, mtype, stat = struct.unpack(">III", out[:12])
        assert xid == self.xid and mtype == 1 and stat == 0, "rpc failed"
        vlen = struct.unpack(">I", out[16:20])[0]
        pos = 20 + (vlen + 3) // 4 * 4
        assert struct.unpack(">I", out[pos:pos + 4])[0] == 0, "not accepted"
        return out[pos + 4:]

    def recv(self, n):
        b = b""
        while len(b) < n:
            chunk = self.s.recv(n - len(b))
            if not chunk:
                raise EOFError("server closed the connection")
            b += chunk
        return b


def xdr_bytes(b):
    return struct.pack(">I", len(b)) + b + b"\0" * ((4 - len(b) % 4) % 4)


def read_fh(r):
    n = struct.unpack(">I", r[:4])[0]
    return r[4:4 + n]


def sattr_mode(mode):
    return struct.pack(">IIIIIIII", 1, mode, 0, 0, 0, 0, 0, 0)[:28]


def main():
    host, nport, mport, path, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    m = Rpc(host, mport)
    r = m.call(100005, 1, xdr_bytes(path.encode()))
    assert struct.unpack(">I", r[:4])[0] == 0, "mount refused"
    root = read_fh(r[4:])
    n = Rpc(host, nport)
    name = ("creates-%d" % time.time_ns()).encode()
    r = n.call(100003, 9, xdr_bytes(root) + xdr_bytes(name) + sattr_mode(0o755))
    assert struct.unpack(">I", r[:4])[0] == 0, "mkdir failed"
    assert struct.unpack(">I", r[4:8])[0] == 1
    d = read_fh(r[8:])
    data = b"x" * 4096
    t = time.perf_counter()
    for i in range(count):
        r = n.call(100003, 8, xdr_bytes(d) + xdr_bytes(b"f%06d" % i) + struct.pack(">I", 0) + sattr_mode(0o644))
        assert struct.unpack(">I", r[:4])[0] == 0, "create failed"
        fh = read_fh(r[8:])
        r = n.call(100003, 7, xdr_bytes(fh) + struct.pack(">QII", 0, len(data), 2) + xdr_bytes(data))
        assert struct.unpack(">I", r[:4])[0] == 0, "write failed"
    print("%.1f" % (count / (time.perf_counter() - t)))


if __name__ == "__main__":
    main()
