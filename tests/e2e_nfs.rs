//! End-to-end: the NFSv3 gateway of the real daemon (`--nfs-listen 127.0.0.1:<port>`), talked to
//! with Debian's libnfs client tools (`nfs-cp`, `nfs-cat`, `nfs-ls`) and, for what those tools
//! cannot send (hostile names, forged handles, hostile record marks), a small raw RPC/XDR client
//! written here, independent of the gateway's own codec.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{Method, TestDaemon};
use serde_json::json;

// ------------------------------------------------------------------------------ the daemon

struct Nfs {
    d: TestDaemon,
    port: u16,
    /// A config file passed with `--config` at every launch.
    config: Option<std::path::PathBuf>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Nfs {
    async fn start() -> Self {
        // The shared harness makes the directories; the daemon is then restarted with the gateway.
        let mut d = TestDaemon::start().await;
        d.kill9();
        let mut n = Nfs {
            d,
            port: free_port(),
            config: None,
        };
        n.launch().await;
        n
    }

    /// Like `start`, with a config file (kept in the test's directory; rewrite it with
    /// `write_config` and restart).
    async fn start_with_config(toml: &str) -> Self {
        let mut d = TestDaemon::start().await;
        d.kill9();
        let config = d.tmp.path().join("config.toml");
        std::fs::write(&config, toml).unwrap();
        let mut n = Nfs {
            d,
            port: free_port(),
            config: Some(config),
        };
        n.launch().await;
        n
    }

    fn write_config(&self, toml: &str) {
        std::fs::write(self.config.as_ref().unwrap(), toml).unwrap();
    }

    async fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.d.tmp.path().join("daemon.log"))
            .unwrap();
        let mut cmd = self.d.serve_command();
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        let child = cmd
            .arg("--nfs-listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn inarray serve");
        self.d.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let api = self.d.client().json(Method::GET, "/v1/health", None).await;
            if api.is_ok() && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(Ok(Some(st))) = self.d.child.as_mut().map(|c| c.try_wait()) {
                panic!("daemon exited with {st}: {}", self.d.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up: {}",
                self.d.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn restart(&mut self) {
        self.d.kill9();
        self.launch().await;
    }

    /// Creates an export through the API.
    async fn export(&self, name: &str, path: &str, extra: serde_json::Value) {
        std::fs::create_dir_all(self.d.array.join(path)).unwrap();
        let mut body = json!({"name": name, "path": path, "clients": [{"match": "127.0.0.1", "access": "rw"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        self.d.ok(Method::POST, "/v1/exports", Some(body)).await;
    }

    /// `nfs://127.0.0.1/<export><path>?nfsport=P&mountport=P<query>`.
    fn url(&self, export: &str, path: &str, query: &str) -> String {
        format!(
            "nfs://127.0.0.1/{export}{path}?nfsport={p}&mountport={p}{query}",
            p = self.port
        )
    }

    fn rpc(&self) -> Rpc {
        Rpc::connect(self.port)
    }
}

/// Runs a libnfs tool (bounded by `timeout`); returns (success, stdout, stderr).
fn tool(args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new("timeout")
        .arg("60")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e} (is libnfs-utils installed? ./dev installs it)"));
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn nfs_cat(url: &str) -> Result<Vec<u8>, String> {
    match tool(&["nfs-cat", url]) {
        (true, out, _) => Ok(out),
        (false, _, err) => Err(err),
    }
}

fn nfs_cp(src: &str, dst: &str) -> Result<(), String> {
    match tool(&["nfs-cp", src, dst]) {
        (true, _, _) => Ok(()),
        (false, _, err) => Err(err),
    }
}

fn sha256_file(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

// ---------------------------------------------------------------- a raw RPC/XDR client

const NFS: u32 = 100_003;
const MOUNT: u32 = 100_005;
const OK: u32 = 0;
const ERR_ACCES: u32 = 13;
const ERR_NOTDIR: u32 = 20;
const ERR_ROFS: u32 = 30;
const ERR_NAMETOOLONG: u32 = 63;
const ERR_STALE: u32 = 70;
const ERR_BADHANDLE: u32 = 10001;

#[derive(Default)]
struct X(Vec<u8>);

impl X {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self = self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        while self.0.len() % 4 != 0 {
            self.0.push(0);
        }
        self
    }
    /// sattr3 with only a mode.
    fn mode(self, mode: u32) -> Self {
        self.u32(1).u32(mode).u32(0).u32(0).u32(0).u32(0).u32(0)
    }
}

struct Rd<'a>(&'a [u8]);

impl Rd<'_> {
    fn u32(&mut self) -> u32 {
        let v = u32::from_be_bytes(self.0[..4].try_into().unwrap());
        self.0 = &self.0[4..];
        v
    }
    fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }
    fn bytes(&mut self) -> Vec<u8> {
        let n = self.u32() as usize;
        let v = self.0[..n].to_vec();
        self.0 = &self.0[n.div_ceil(4) * 4..];
        v
    }
    /// fattr3 → (type, mode, uid, gid, size, fileid).
    fn fattr(&mut self) -> Attr {
        let kind = self.u32();
        let mode = self.u32();
        self.u32();
        let uid = self.u32();
        let gid = self.u32();
        let size = self.u64();
        self.u64();
        self.u64();
        self.u64();
        let fileid = self.u64();
        for _ in 0..6 {
            self.u32();
        }
        Attr {
            kind,
            mode,
            uid,
            gid,
            size,
            fileid,
        }
    }
    fn post_op(&mut self) -> Option<Attr> {
        (self.u32() == 1).then(|| self.fattr())
    }
    fn wcc(&mut self) {
        if self.u32() == 1 {
            self.u64();
            for _ in 0..4 {
                self.u32();
            }
        }
        self.post_op();
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Attr {
    kind: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    fileid: u64,
}

struct Rpc {
    s: TcpStream,
    xid: u32,
    uid: u32,
    gid: u32,
}

impl Rpc {
    fn connect(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Rpc {
            s,
            xid: 1,
            uid: 0,
            gid: 0,
        }
    }

    fn with_user(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    fn request(&mut self, prog: u32, proc_: u32, args: X) -> Vec<u8> {
        self.xid += 1;
        let cred = X::default()
            .u32(0)
            .bytes(b"e2e")
            .u32(self.uid)
            .u32(self.gid)
            .u32(0);
        let msg = X::default()
            .u32(self.xid)
            .u32(0)
            .u32(2)
            .u32(prog)
            .u32(3)
            .u32(proc_)
            .u32(1)
            .bytes(&cred.0)
            .u32(0)
            .u32(0);
        let mut rec = msg.0;
        rec.extend_from_slice(&args.0);
        let mut frame = (0x8000_0000u32 | rec.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&rec);
        frame
    }

    /// One call; returns the results after the accept_stat (which must be SUCCESS, else returns
    /// Err(accept_stat)).
    fn call(&mut self, prog: u32, proc_: u32, args: X) -> Result<Vec<u8>, u32> {
        let frame = self.request(prog, proc_, args);
        self.s.write_all(&frame).unwrap();
        let reply = self.read_reply();
        let mut r = Rd(&reply);
        assert_eq!(r.u32(), self.xid, "xid");
        assert_eq!(r.u32(), 1, "a reply");
        assert_eq!(r.u32(), 0, "accepted");
        r.u32();
        r.bytes();
        match r.u32() {
            0 => Ok(r.0.to_vec()),
            other => Err(other),
        }
    }

    fn read_reply(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut m = [0u8; 4];
            self.s.read_exact(&mut m).unwrap();
            let m = u32::from_be_bytes(m);
            let mut frag = vec![0u8; (m & 0x7fff_ffff) as usize];
            self.s.read_exact(&mut frag).unwrap();
            out.extend_from_slice(&frag);
            if m & 0x8000_0000 != 0 {
                return out;
            }
        }
    }

    fn nfs(&mut self, proc_: u32, args: X) -> Vec<u8> {
        self.call(NFS, proc_, args)
            .unwrap_or_else(|s| panic!("nfs proc {proc_}: accept_stat {s}"))
    }

    fn mnt(&mut self, path: &str) -> Result<Vec<u8>, u32> {
        let r = self
            .call(MOUNT, 1, X::default().bytes(path.as_bytes()))
            .unwrap();
        let mut r = Rd(&r);
        match r.u32() {
            0 => Ok(r.bytes()),
            s => Err(s),
        }
    }

    fn getattr(&mut self, fh: &[u8]) -> Result<Attr, u32> {
        let r = self.nfs(1, X::default().bytes(fh));
        let mut r = Rd(&r);
        match r.u32() {
            0 => Ok(r.fattr()),
            s => Err(s),
        }
    }

    fn lookup(&mut self, dir: &[u8], name: &[u8]) -> Result<(Vec<u8>, Attr), u32> {
        let r = self.nfs(3, X::default().bytes(dir).bytes(name));
        let mut r = Rd(&r);
        match r.u32() {
            0 => {
                let fh = r.bytes();
                Ok((fh, r.post_op().unwrap()))
            }
            s => Err(s),
        }
    }

    /// CREATE (UNCHECKED, mode 0644) → the new handle.
    fn create(&mut self, dir: &[u8], name: &[u8]) -> Result<Vec<u8>, u32> {
        let r = self.nfs(8, X::default().bytes(dir).bytes(name).u32(0).mode(0o644));
        let mut r = Rd(&r);
        match r.u32() {
            0 => {
                assert_eq!(r.u32(), 1, "handle follows");
                Ok(r.bytes())
            }
            s => Err(s),
        }
    }

    fn status(&mut self, proc_: u32, args: X) -> u32 {
        let r = self.nfs(proc_, args);
        Rd(&r).u32()
    }

    fn read(&mut self, fh: &[u8], offset: u64, count: u32) -> Result<Vec<u8>, u32> {
        let r = self.nfs(6, X::default().bytes(fh).u64(offset).u32(count));
        let mut r = Rd(&r);
        match r.u32() {
            0 => {
                r.post_op();
                r.u32();
                r.u32();
                Ok(r.bytes())
            }
            s => Err(s),
        }
    }

    /// WRITE → (committed, verifier).
    fn write(&mut self, fh: &[u8], offset: u64, data: &[u8], stable: u32) -> (u32, Vec<u8>) {
        let r = self.nfs(
            7,
            X::default()
                .bytes(fh)
                .u64(offset)
                .u32(data.len() as u32)
                .u32(stable)
                .bytes(data),
        );
        let mut r = Rd(&r);
        assert_eq!(r.u32(), OK);
        r.wcc();
        assert_eq!(r.u32() as usize, data.len());
        let committed = r.u32();
        (committed, r.0[..8].to_vec())
    }

    /// COMMIT → the verifier.
    fn commit(&mut self, fh: &[u8]) -> Vec<u8> {
        let r = self.nfs(21, X::default().bytes(fh).u64(0).u32(0));
        let mut r = Rd(&r);
        assert_eq!(r.u32(), OK);
        r.wcc();
        r.0[..8].to_vec()
    }

    /// FSSTAT → (total bytes, free bytes).
    fn fsstat(&mut self, fh: &[u8]) -> (u64, u64) {
        let r = self.nfs(18, X::default().bytes(fh));
        let mut r = Rd(&r);
        assert_eq!(r.u32(), OK);
        r.post_op();
        (r.u64(), r.u64())
    }

    fn readlink(&mut self, fh: &[u8]) -> Result<Vec<u8>, u32> {
        let r = self.nfs(5, X::default().bytes(fh));
        let mut r = Rd(&r);
        match r.u32() {
            0 => {
                r.post_op();
                Ok(r.bytes())
            }
            s => Err(s),
        }
    }

    /// READDIRPLUS from `cookie` with a reply of at most `max` bytes → (names with handles
    /// and sizes, the last cookie, eof).
    #[allow(clippy::type_complexity)]
    fn readdirplus_page(
        &mut self,
        dir: &[u8],
        cookie: u64,
        max: u32,
    ) -> (Vec<(String, Option<u64>, bool)>, u64, bool) {
        let r = self.nfs(
            17,
            X::default().bytes(dir).u64(cookie).u64(0).u32(max).u32(max),
        );
        let mut r = Rd(&r);
        assert_eq!(r.u32(), OK);
        r.post_op();
        r.u64();
        let (mut out, mut last) = (Vec::new(), cookie);
        while r.u32() == 1 {
            r.u64();
            let name = String::from_utf8_lossy(&r.bytes()).into_owned();
            last = r.u64();
            let size = r.post_op().map(|a| a.size);
            let has_fh = r.u32() == 1;
            if has_fh {
                r.bytes();
            }
            out.push((name, size, has_fh));
        }
        (out, last, r.u32() == 1)
    }

    /// READDIRPLUS from cookie 0 → the names of the first batch.
    fn readdirplus_names(&mut self, dir: &[u8]) -> Vec<String> {
        let r = self.nfs(
            17,
            X::default()
                .bytes(dir)
                .u64(0)
                .u64(0)
                .u32(64 * 1024)
                .u32(256 * 1024),
        );
        let mut r = Rd(&r);
        assert_eq!(r.u32(), OK);
        r.post_op();
        r.u64();
        let mut names = Vec::new();
        while r.u32() == 1 {
            r.u64();
            names.push(String::from_utf8_lossy(&r.bytes()).into_owned());
            r.u64();
            r.post_op();
            if r.u32() == 1 {
                r.bytes();
            }
        }
        names
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ------------------------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_and_nfs_clients_see_each_others_writes() {
    let n = Nfs::start().await;
    n.d.with_busybox().await;
    n.export("proj", "proj", json!({"squash": "none"})).await;

    // A container writes through its bind mount: the NFS client sees it at once.
    let (code, logs) =
        n.d.run_to_exit(json!({
            "image": "busybox",
            "command": ["sh", "-c", "echo from-the-container > /data/c.txt"],
            "volumes": [{"source": "proj", "target": "/data"}],
        }))
        .await;
    assert_eq!(code, 0, "{logs}");
    assert_eq!(
        nfs_cat(&n.url("proj", "/c.txt", "")).unwrap(),
        b"from-the-container\n"
    );
    // ... and a change of size right after.
    let (code, _) =
        n.d.run_to_exit(json!({
            "image": "busybox",
            "command": ["sh", "-c", "echo more >> /data/c.txt"],
            "volumes": [{"source": "proj", "target": "/data"}],
        }))
        .await;
    assert_eq!(code, 0);
    assert_eq!(
        nfs_cat(&n.url("proj", "/c.txt", "")).unwrap(),
        b"from-the-container\nmore\n"
    );

    // An NFS client writes; a container reads it.
    let local = n.d.tmp.path().join("from-nfs.txt");
    std::fs::write(&local, "written-over-nfs\n").unwrap();
    nfs_cp(local.to_str().unwrap(), &n.url("proj", "/n.txt", "")).unwrap();
    let (code, logs) =
        n.d.run_to_exit(json!({
            "image": "busybox",
            "command": ["cat", "/data/n.txt"],
            "volumes": [{"source": "proj", "target": "/data"}],
        }))
        .await;
    assert_eq!((code, logs.as_str()), (0, "written-over-nfs\n"));

    // 200 MiB round trip with checksums, into a subdirectory.
    std::fs::create_dir(n.d.array.join("proj/big")).unwrap();
    let big = n.d.tmp.path().join("big.bin");
    {
        let mut f = std::fs::File::create(&big).unwrap();
        let mut block = vec![0u8; 1 << 20];
        for i in 0..200u32 {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (j as u32 ^ i.wrapping_mul(2654435761)) as u8;
            }
            f.write_all(&block).unwrap();
        }
    }
    let t = Instant::now();
    nfs_cp(big.to_str().unwrap(), &n.url("proj", "/big/big.bin", "")).unwrap();
    let wrote = t.elapsed();
    let back = n.d.tmp.path().join("back.bin");
    let t = Instant::now();
    nfs_cp(&n.url("proj", "/big/big.bin", ""), back.to_str().unwrap()).unwrap();
    let read = t.elapsed();
    eprintln!("200 MiB: nfs-cp write {wrote:?}, read {read:?}");
    let sum = sha256_file(&big);
    assert_eq!(sha256_file(&n.d.array.join("proj/big/big.bin")), sum);
    assert_eq!(sha256_file(&back), sum);

    // The listing shows what is there.
    let (ok, out, err) = tool(&["nfs-ls", &n.url("proj", "", "")]);
    assert!(ok, "{err}");
    let out = String::from_utf8_lossy(&out);
    for name in ["c.txt", "n.txt", "big"] {
        assert!(out.contains(name), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rules_squash_and_permissions() {
    let n = Nfs::start().await;
    // Not on the allow list: MNT3ERR_ACCES, and the tools fail.
    n.export(
        "other",
        "other",
        json!({"clients": [{"match": "10.9.9.0/24", "access": "rw"}]}),
    )
    .await;
    assert_eq!(n.rpc().mnt("/other"), Err(ERR_ACCES));
    assert!(nfs_cat(&n.url("other", "/x", "")).is_err());
    assert_eq!(n.rpc().mnt("/no-such-export"), Err(2));

    // root_squash (the default): root's files belong to the anonymous user.
    n.export("sq", "sq", json!({})).await;
    std::fs::set_permissions(n.d.array.join("sq"), PermissionsExt::from_mode(0o777)).unwrap();
    let local = n.d.tmp.path().join("f.txt");
    std::fs::write(&local, "x").unwrap();
    nfs_cp(
        local.to_str().unwrap(),
        &n.url("sq", "/root.txt", "&uid=0&gid=0"),
    )
    .unwrap();
    let md = std::fs::metadata(n.d.array.join("sq/root.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
    // A root-owned 0600 file is unreadable to squashed root.
    std::fs::write(n.d.array.join("sq/secret"), "s").unwrap();
    std::fs::set_permissions(
        n.d.array.join("sq/secret"),
        PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    assert!(nfs_cat(&n.url("sq", "/secret", "&uid=0&gid=0")).is_err());

    // all_squash with chosen anonymous ids.
    n.export(
        "all",
        "all",
        json!({"squash": "all", "anon_uid": 4000, "anon_gid": 4001}),
    )
    .await;
    std::fs::set_permissions(n.d.array.join("all"), PermissionsExt::from_mode(0o777)).unwrap();
    nfs_cp(
        local.to_str().unwrap(),
        &n.url("all", "/u.txt", "&uid=1234&gid=1234"),
    )
    .unwrap();
    let md = std::fs::metadata(n.d.array.join("all/u.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (4000, 4001));

    // No squash: the client's uid/gid own what it makes; a 0600 file of another user is closed.
    n.export("none", "none", json!({"squash": "none"})).await;
    std::fs::set_permissions(n.d.array.join("none"), PermissionsExt::from_mode(0o1777)).unwrap();
    nfs_cp(
        local.to_str().unwrap(),
        &n.url("none", "/mine.txt", "&uid=1000&gid=1000"),
    )
    .unwrap();
    let md = std::fs::metadata(n.d.array.join("none/mine.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1000));
    std::fs::set_permissions(
        n.d.array.join("none/mine.txt"),
        PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    assert_eq!(
        nfs_cat(&n.url("none", "/mine.txt", "&uid=1000&gid=1000")).unwrap(),
        b"x"
    );
    assert!(nfs_cat(&n.url("none", "/mine.txt", "&uid=1001&gid=1000")).is_err());
    let mut other = n.rpc().with_user(1001, 1001);
    let root = other.mnt("/none").unwrap();
    let (fh, _) = other.lookup(&root, b"mine.txt").unwrap();
    assert_eq!(other.read(&fh, 0, 10), Err(ERR_ACCES));
    // Nor may it delete another user's file in a sticky directory.
    assert_ne!(
        other.status(12, X::default().bytes(&root).bytes(b"mine.txt")),
        OK
    );
    assert!(n.d.array.join("none/mine.txt").exists());

    // Read-only: ROFS, nothing created.
    n.export(
        "ro",
        "ro",
        json!({"clients": [{"match": "127.0.0.0/8", "access": "ro"}], "squash": "none"}),
    )
    .await;
    std::fs::write(n.d.array.join("ro/r.txt"), "read me").unwrap();
    assert_eq!(nfs_cat(&n.url("ro", "/r.txt", "")).unwrap(), b"read me");
    assert!(nfs_cp(local.to_str().unwrap(), &n.url("ro", "/w.txt", "")).is_err());
    let mut c = n.rpc();
    let root = c.mnt("/ro").unwrap();
    assert_eq!(c.create(&root, b"w.txt"), Err(ERR_ROFS));
    assert_eq!(
        c.status(9, X::default().bytes(&root).bytes(b"d").mode(0o755)),
        ERR_ROFS
    );
    let (r, _) = c.lookup(&root, b"r.txt").unwrap();
    assert_eq!(
        c.status(7, X::default().bytes(&r).u64(0).u32(1).u32(2).bytes(b"z")),
        ERR_ROFS
    );
    assert_eq!(listing(&n.d.array.join("ro")), ["r.txt"]);

    // The client check runs on every call: once the rule is gone, the old handle is refused.
    let mut c = n.rpc();
    let root = c.mnt("/sq").unwrap();
    assert!(c.getattr(&root).is_ok());
    n.d.ok(
        Method::PATCH,
        "/v1/exports/sq",
        Some(json!({"clients": [{"match": "192.0.2.1", "access": "rw"}]})),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.getattr(&root).is_ok() {
        assert!(Instant::now() < deadline, "the changed rule never applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.getattr(&root), Err(ERR_ACCES));
    assert_eq!(n.rpc().mnt("/sq"), Err(ERR_ACCES));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_handles_and_symlinks_stay_inside_the_export() {
    let n = Nfs::start().await;
    n.d.with_busybox().await;
    n.export("data", "exp/data", json!({"squash": "none"}))
        .await;
    std::fs::create_dir_all(n.d.array.join("exp/data/sub")).unwrap();
    std::fs::write(n.d.array.join("exp/data/sub/inner.txt"), "inner").unwrap();
    std::fs::write(n.d.array.join("exp/outside.txt"), "outside").unwrap();
    let mut c = n.rpc();
    let root = c.mnt("/data").unwrap();
    let root_attr = c.getattr(&root).unwrap();
    let before = listing(&n.d.array.join("exp/data"));

    // Hostile names: refused, nothing created.
    let long = vec![b'a'; 256];
    for name in [&b"a/b"[..], b"..", b".", b"", b"x\0y", b"../escape", &long] {
        let want = if name.len() > 255 {
            ERR_NAMETOOLONG
        } else {
            ERR_ACCES
        };
        assert_eq!(c.create(&root, name), Err(want), "CREATE {name:?}");
        assert_eq!(
            c.status(9, X::default().bytes(&root).bytes(name).mode(0o755)),
            want,
            "MKDIR {name:?}"
        );
        assert_eq!(
            c.status(
                10,
                X::default()
                    .bytes(&root)
                    .bytes(name)
                    .mode(0o777)
                    .bytes(b"/etc")
            ),
            want,
            "SYMLINK {name:?}"
        );
        assert_eq!(
            c.status(
                14,
                X::default()
                    .bytes(&root)
                    .bytes(b"sub")
                    .bytes(&root)
                    .bytes(name)
            ),
            want,
            "RENAME to {name:?}"
        );
    }
    assert_eq!(c.lookup(&root, b"a/b"), Err(ERR_ACCES));
    assert_eq!(c.lookup(&root, &long), Err(ERR_NAMETOOLONG));
    assert_eq!(listing(&n.d.array.join("exp/data")), before);
    assert!(!n.d.array.join("exp/escape").exists());

    // LOOKUP ".." at the export root stays at the root; from sub it comes back to the root.
    let (up, attr) = c.lookup(&root, b"..").unwrap();
    assert_eq!(attr.fileid, root_attr.fileid);
    assert_eq!(up, root);
    let (sub, _) = c.lookup(&root, b"sub").unwrap();
    let (_, attr) = c.lookup(&sub, b"..").unwrap();
    assert_eq!(attr.fileid, root_attr.fileid);
    let (_, attr) = c.lookup(&sub, b"inner.txt").unwrap();
    assert_eq!(attr.size, 5);

    // A directory of 3,000 entries listed in small pages: every entry once, with attributes
    // and a handle, resuming at each page's last cookie; nfs-ls sees them all too.
    std::fs::create_dir(n.d.array.join("exp/data/many")).unwrap();
    for i in 0..3000 {
        std::fs::write(n.d.array.join(format!("exp/data/many/f{i:04}")), b"abc").unwrap();
    }
    let (many, _) = c.lookup(&root, b"many").unwrap();
    let (mut seen, mut cookie, mut pages) = (std::collections::BTreeSet::new(), 0, 0);
    loop {
        let (entries, last, eof) = c.readdirplus_page(&many, cookie, 4096);
        for (name, size, has_fh) in entries {
            if name != "." && name != ".." {
                assert_eq!((size, has_fh), (Some(3), true), "{name}");
                assert!(seen.insert(name.clone()), "{name} listed twice");
            }
        }
        pages += 1;
        if eof {
            break;
        }
        cookie = last;
    }
    assert_eq!(seen.len(), 3000);
    assert!(pages > 10, "{pages} pages");
    // Too small a reply for even one entry: TOOSMALL.
    let r = c.nfs(17, X::default().bytes(&many).u64(0).u64(0).u32(64).u32(64));
    assert_eq!(Rd(&r).u32(), 10005);
    let (ok, out, err) = tool(&["nfs-ls", &n.url("data", "/many", "")]);
    assert!(ok, "{err}");
    assert_eq!(String::from_utf8_lossy(&out).lines().count(), 3000);
    std::fs::remove_dir_all(n.d.array.join("exp/data/many")).unwrap();

    // A symlink is served as a symlink, never followed by the server.
    std::os::unix::fs::symlink("/etc", n.d.array.join("exp/data/etc-link")).unwrap();
    let (l, attr) = c.lookup(&root, b"etc-link").unwrap();
    assert_eq!(attr.kind, 5, "a symlink");
    assert_eq!(c.readlink(&l).unwrap(), b"/etc");
    assert_eq!(c.lookup(&l, b"passwd"), Err(ERR_NOTDIR));
    assert!(c.read(&l, 0, 100).is_err());
    let passwd = std::fs::read("/etc/passwd").unwrap();
    if let Ok(got) = nfs_cat(&n.url("data", "/etc-link/passwd", "")) {
        assert_ne!(got, passwd, "the tools must not reach the host's /etc");
    }

    // A container swaps the exported directory `sub` for a symlink to /etc.
    let (code, logs) =
        n.d.run_to_exit(json!({
            "image": "busybox",
            "command": ["sh", "-c", "mv /x/data/sub /x/moved && ln -s /etc /x/data/sub"],
            "volumes": [{"source": "exp", "target": "/x"}],
        }))
        .await;
    assert_eq!(code, 0, "{logs}");
    let (s, attr) = c.lookup(&root, b"sub").unwrap();
    assert_eq!(attr.kind, 5, "the swapped entry is a symlink");
    assert_eq!(c.lookup(&s, b"passwd"), Err(ERR_NOTDIR));
    assert!(!c.readdirplus_names(&root).iter().any(|n| n == "passwd"));
    // The old handle names the moved directory (still in the array), never /etc; and its ".."
    // (outside the export now) is refused.
    assert!(c.lookup(&sub, b"passwd").is_err());
    assert_eq!(c.lookup(&sub, b"inner.txt").unwrap().1.size, 5);
    assert_eq!(c.lookup(&sub, b".."), Err(ERR_ACCES));

    // Forged and altered handles: BADHANDLE, never another file.
    for i in [0, 3, 9, 12, root.len() - 1] {
        let mut bad = root.clone();
        bad[i] ^= 0x40;
        // Bytes 1..5 are the export id: an export that does not exist is STALE.
        let want = if (1..5).contains(&i) {
            ERR_STALE
        } else {
            ERR_BADHANDLE
        };
        assert_eq!(c.getattr(&bad), Err(want), "byte {i}");
    }
    // An export id that exists, with the rest of the handle from another export: BADHANDLE.
    n.export("other", "other", json!({})).await;
    let other = c.mnt("/other").unwrap();
    let mut mixed = root.clone();
    mixed[1..5].copy_from_slice(&other[1..5]);
    assert_eq!(c.getattr(&mixed), Err(ERR_BADHANDLE));
    assert_eq!(c.getattr(&[]), Err(ERR_BADHANDLE));
    assert_eq!(c.getattr(&[7u8; 40]), Err(ERR_BADHANDLE));
    // A handle is a MAC'd kernel handle: swapping in another file's kernel handle fails too.
    let (inner, _) = c.lookup(&sub, b"inner.txt").unwrap();
    if inner.len() == root.len() {
        let mut mixed = root.clone();
        mixed[10..root.len() - 16].copy_from_slice(&inner[10..inner.len() - 16]);
        assert_eq!(c.getattr(&mixed), Err(ERR_BADHANDLE));
    }
    // More than 64 bytes is not even a handle.
    assert_eq!(c.call(NFS, 1, X::default().bytes(&[0u8; 65])), Err(4));

    // A deleted export's handles are stale.
    n.d.ok(Method::DELETE, "/v1/exports/data", None).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match c.getattr(&root) {
            Err(ERR_STALE) => break,
            other => assert!(Instant::now() < deadline, "{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_stay_valid_across_a_restart() {
    let mut n = Nfs::start().await;
    n.export("keep", "keep", json!({})).await;
    std::fs::create_dir_all(n.d.array.join("keep/d")).unwrap();
    std::fs::write(n.d.array.join("keep/d/f.txt"), "kept").unwrap();
    let mut c = n.rpc();
    let root = c.mnt("/keep").unwrap();
    let (d, _) = c.lookup(&root, b"d").unwrap();
    let (f, _) = c.lookup(&d, b"f.txt").unwrap();
    // stable_how: UNSTABLE is answered UNSTABLE with the write verifier, FILE_SYNC as FILE_SYNC;
    // COMMIT answers the same verifier until the daemon restarts.
    std::fs::set_permissions(n.d.array.join("keep/d"), PermissionsExt::from_mode(0o777)).unwrap();
    let w = c.create(&d, b"w.bin").unwrap();
    let (committed, verf) = c.write(&w, 0, b"unstable", 0);
    assert_eq!(committed, 0);
    assert_eq!(c.write(&w, 8, b"-synced", 2).0, 2);
    assert_eq!(c.commit(&w), verf);
    assert_eq!(
        std::fs::read(n.d.array.join("keep/d/w.bin")).unwrap(),
        b"unstable-synced"
    );
    // FSSTAT: the array's filesystem, not a made-up size.
    let (total, free) = c.fsstat(&root);
    let vfs = nix::sys::statvfs::statvfs(&n.d.array).unwrap();
    assert_eq!(total, vfs.blocks() * vfs.fragment_size());
    let host_free = vfs.blocks_free() * vfs.fragment_size();
    assert!(free.abs_diff(host_free) < 1 << 30, "{free} vs {host_free}");
    drop(c);
    n.restart().await;
    let mut c = n.rpc();
    assert_ne!(c.commit(&w), verf, "a new verifier after a restart");
    assert_eq!(c.read(&f, 0, 100).unwrap(), b"kept");
    assert_eq!(c.getattr(&d).unwrap().kind, 2);
    assert_eq!(c.mnt("/keep").unwrap(), root, "the same root handle");
    // A file deleted behind the gateway's back: stale, then recreated: a new handle.
    std::fs::remove_file(n.d.array.join("keep/d/f.txt")).unwrap();
    assert_eq!(c.getattr(&f), Err(ERR_STALE));
    std::fs::write(n.d.array.join("keep/d/f.txt"), "again").unwrap();
    assert_eq!(c.getattr(&f), Err(ERR_STALE));
    let (f2, attr) = c.lookup(&d, b"f.txt").unwrap();
    assert_eq!(attr.size, 5);
    assert_eq!(c.read(&f2, 0, 100).unwrap(), b"again");
    assert_eq!(nfs_cat(&n.url("keep", "/d/f.txt", "")).unwrap(), b"again");
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Whether the server closed `s` (EOF or reset) within a few seconds.
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rpc_is_dropped_or_throttled_with_bounded_memory() {
    let n = Nfs::start().await;
    n.export("h", "h", json!({})).await;
    std::fs::write(n.d.array.join("h/f.txt"), "still here").unwrap();
    let pid = n.d.child.as_ref().unwrap().id();
    let rss_before = rss_kib(pid);

    // A record mark claiming 2 GiB: the connection is dropped, nothing allocated.
    let mut s = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
    s.write_all(&0xffff_ffffu32.to_be_bytes()).unwrap();
    let _ = s.write_all(&[0u8; 4096]);
    assert!(closed(&mut s), "2 GiB record mark");

    // Endless non-final fragments: dropped once they pass the record limit.
    let mut s = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
    let mut frag = (64u32 * 1024).to_be_bytes().to_vec();
    frag.extend_from_slice(&[0u8; 64 * 1024]);
    let mut sent = 0;
    while sent < 4 << 20 && s.write_all(&frag).is_ok() {
        sent += frag.len();
    }
    assert!(closed(&mut s), "endless fragments");

    // Garbage that is not RPC: the daemon carries on.
    let mut s = TcpStream::connect(("127.0.0.1", n.port)).unwrap();
    let mut g = (0x8000_0000u32 | 12).to_be_bytes().to_vec();
    g.extend_from_slice(b"not-rpc-data");
    s.write_all(&g).unwrap();

    // 10,000 requests in flight on one connection, replies not read: the gateway stops reading
    // (TCP pushes back), memory stays bounded, and other clients are still served.
    let mut c = n.rpc();
    let root = c.mnt("/h").unwrap();
    let mut flood = Vec::new();
    for _ in 0..10_000 {
        flood.extend_from_slice(&c.request(NFS, 1, X::default().bytes(&root)));
    }
    let mut w = c.s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&flood).is_ok());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        nfs_cat(&n.url("h", "/f.txt", "")).unwrap(),
        b"still here",
        "another client is served meanwhile"
    );
    let mut replies = 0;
    while replies < 10_000 {
        let r = c.read_reply();
        assert_eq!(Rd(&r[12..]).u32(), 0);
        replies += 1;
    }
    assert!(writer.join().unwrap());
    let rss_after = rss_kib(pid);
    eprintln!("daemon VmRSS {rss_before} KiB before, {rss_after} KiB after the hostile clients");
    assert!(
        rss_after < rss_before + 200 * 1024,
        "memory grew from {rss_before} to {rss_after} KiB"
    );
    assert_eq!(nfs_cat(&n.url("h", "/f.txt", "")).unwrap(), b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_api_and_cli() {
    let n = Nfs::start().await;
    std::fs::create_dir_all(n.d.array.join("a")).unwrap();
    let cli = |args: &[&str]| n.d.cli(args);
    let (ok, _, err) = cli(&[
        "export",
        "add",
        "a",
        "a",
        "--client",
        "127.0.0.1:ro",
        "--client",
        "10.0.0.0/8",
    ]);
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&["export", "ls"]);
    assert!(ok);
    assert!(out.contains("127.0.0.1:ro,10.0.0.0/8:rw"), "{out}");
    // The EXPORT call lists it with its client matches.
    let r = n.rpc().call(MOUNT, 5, X::default()).unwrap();
    let mut r = Rd(&r);
    assert_eq!(r.u32(), 1);
    assert_eq!(r.bytes(), b"/a");
    let mut groups = Vec::new();
    while r.u32() == 1 {
        groups.push(String::from_utf8(r.bytes()).unwrap());
    }
    assert_eq!(groups, ["127.0.0.1", "10.0.0.0/8"]);
    // Invalid requests name the field; nothing stored.
    let (ok, _, err) = cli(&["export", "add", "b", "../etc", "--client", "*"]);
    assert!(!ok && err.contains("path"), "{err}");
    let msg = n
        .d
        .fails(
            Method::POST,
            "/v1/exports",
            Some(json!({"name": "c", "path": "a", "clients": [{"match": "300.1.1.1", "access": "rw"}]})),
            400,
        )
        .await;
    assert!(msg.contains("clients[0].match"), "{msg}");
    n.d.fails(
        Method::POST,
        "/v1/exports",
        Some(json!({"name": "a", "path": "a", "clients": []})),
        409,
    )
    .await;
    let (ok, _, _) = cli(&["export", "rm", "a"]);
    assert!(ok);
    let (ok, _, err) = cli(&["export", "rm", "a"]);
    assert!(!ok && err.contains("no such export: a"), "{err}");
    assert_eq!(n.d.ok(Method::GET, "/v1/exports", None).await, json!([]));
}

/// `/metrics` as `name{labels}` → value; the NFS histogram is there.
async fn scrape(n: &Nfs) -> std::collections::HashMap<String, f64> {
    let text = n.d.metrics_text().await;
    assert!(
        text.contains("# TYPE inarray_nfs_operation_duration_seconds histogram"),
        "{text}"
    );
    n.d.metrics().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_bytes_errors_and_latency_per_export() {
    let n = Nfs::start().await;
    n.export("m", "m", json!({"squash": "none"})).await;
    n.export("quiet", "q", json!({})).await;
    std::fs::write(n.d.array.join("m/f.txt"), vec![7u8; 1000]).unwrap();
    let mut c = n.rpc();
    let root = c.mnt("/m").unwrap();
    c.getattr(&root).unwrap();
    let before = scrape(&n).await;
    let get =
        |m: &std::collections::HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let delta =
        |after: &std::collections::HashMap<String, f64>, k: &str| get(after, k) - get(&before, k);

    for _ in 0..3 {
        c.getattr(&root).unwrap();
    }
    let (f, _) = c.lookup(&root, b"f.txt").unwrap();
    assert_eq!(c.lookup(&root, b"missing"), Err(2));
    assert_eq!(c.read(&f, 0, 4096).unwrap().len(), 1000);
    let w = c.create(&root, b"w.txt").unwrap();
    c.write(&w, 0, &[1u8; 300], 2);
    c.write(&w, 300, &[2u8; 200], 0);
    // A forged handle of export "m" is refused and counted as an error of that export.
    let mut forged = f.clone();
    *forged.last_mut().unwrap() ^= 1;
    assert_eq!(c.getattr(&forged), Err(ERR_BADHANDLE));

    let after = scrape(&n).await;
    let op = |p: &str| format!("inarray_nfs_operations_total{{export=\"m\",procedure=\"{p}\"}}");
    let err = |p: &str| format!("inarray_nfs_errors_total{{export=\"m\",procedure=\"{p}\"}}");
    assert_eq!(delta(&after, &op("getattr")), 4.0);
    assert_eq!(delta(&after, &err("getattr")), 1.0);
    assert_eq!(delta(&after, &op("lookup")), 2.0);
    assert_eq!(delta(&after, &err("lookup")), 1.0);
    assert_eq!(delta(&after, &op("read")), 1.0);
    assert_eq!(delta(&after, &err("read")), 0.0);
    assert_eq!(delta(&after, &op("create")), 1.0);
    assert_eq!(delta(&after, &op("write")), 2.0);
    assert_eq!(
        delta(&after, "inarray_nfs_read_bytes_total{export=\"m\"}"),
        1000.0
    );
    assert_eq!(
        delta(&after, "inarray_nfs_written_bytes_total{export=\"m\"}"),
        500.0
    );
    // The latency histogram counts every call once; buckets are cumulative up to +Inf.
    let h = |s: &str, p: &str, more: &str| {
        format!(
            "inarray_nfs_operation_duration_seconds_{s}{{export=\"m\",procedure=\"{p}\"{more}}}"
        )
    };
    assert_eq!(delta(&after, &h("count", "getattr", "")), 4.0);
    assert_eq!(delta(&after, &h("bucket", "getattr", ",le=\"+Inf\"")), 4.0);
    assert!(
        get(&after, &h("bucket", "getattr", ",le=\"0.00005\""))
            <= get(&after, &h("bucket", "getattr", ",le=\"1\""))
    );
    assert!(delta(&after, &h("sum", "write", "")) > 0.0);
    assert_eq!(delta(&after, &h("count", "write", "")), 2.0);
    // The other export saw nothing.
    assert!(after
        .keys()
        .filter(|k| k.contains("export=\"quiet\""))
        .all(|k| after[k] == 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_is_authoritative_for_the_exports_it_declares() {
    let export = |name: &str, path: &str, access: &str| {
        format!("[[exports]]\nname = \"{name}\"\npath = \"{path}\"\nclients = [{{ match = \"127.0.0.1\", access = \"{access}\" }}]\n")
    };
    let first = format!("{}{}", export("c1", "c1", "rw"), export("c2", "c2", "rw"));
    // The directories are made after the start: the gateway opens an export's root when it
    // is first mounted.
    let mut n = Nfs::start_with_config(&first).await;
    for p in ["c1", "c2", "a1"] {
        std::fs::create_dir_all(n.d.array.join(p)).unwrap();
    }
    std::fs::write(n.d.array.join("c2/f.txt"), "two").unwrap();
    n.export("a1", "a1", json!({})).await;
    let names = |v: serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(n.d.ok(Method::GET, "/v1/exports", None).await),
        ["a1", "c1", "c2"]
    );
    let mut c = n.rpc();
    let c2 = c.mnt("/c2").unwrap();
    let (f, _) = c.lookup(&c2, b"f.txt").unwrap();
    assert_eq!(c.read(&f, 0, 10).unwrap(), b"two");
    let c1 = c.mnt("/c1").unwrap();

    // c2 leaves the file and c1 becomes read-only: after a restart c2 is gone (its handles are
    // stale, MNT finds nothing), c1 follows the file and keeps its handles, a1 (made through the
    // API) stays.
    n.write_config(&export("c1", "c1", "ro"));
    n.restart().await;
    assert_eq!(
        names(n.d.ok(Method::GET, "/v1/exports", None).await),
        ["a1", "c1"]
    );
    let mut c = n.rpc();
    assert_eq!(c.mnt("/c2"), Err(2));
    assert_eq!(c.getattr(&f), Err(ERR_STALE));
    assert!(c.getattr(&c1).is_ok(), "c1's handles survive");
    assert_eq!(
        c.status(9, X::default().bytes(&c1).bytes(b"d").mode(0o755)),
        ERR_ROFS,
        "c1 is read-only now"
    );
    assert!(c.mnt("/a1").is_ok());

    // An export deleted through the API but still in the file comes back at the next start; one
    // declared in the file under the name of an API export is taken over by the file.
    n.d.ok(Method::DELETE, "/v1/exports/c1", None).await;
    n.write_config(&format!(
        "{}{}",
        export("c1", "c1", "ro"),
        export("a1", "a1", "ro")
    ));
    n.restart().await;
    assert_eq!(
        names(n.d.ok(Method::GET, "/v1/exports", None).await),
        ["a1", "c1"]
    );
    n.write_config("");
    n.restart().await;
    assert_eq!(n.d.ok(Method::GET, "/v1/exports", None).await, json!([]));
    // A file declaring one export twice is refused at start, and nothing changes.
    n.d.kill9();
    n.write_config(&format!(
        "{}{}",
        export("x", "c1", "rw"),
        export("x", "c2", "rw")
    ));
    let out = {
        let mut cmd = n.d.serve_command();
        cmd.arg("--config").arg(n.config.as_ref().unwrap());
        cmd.arg("--nfs-listen").arg(format!("127.0.0.1:{}", n.port));
        cmd.output().unwrap()
    };
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("declared twice"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_reads_at_any_offset_return_the_file_bytes() {
    let n = Nfs::start().await;
    n.export("big", "big", json!({})).await;
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 123)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(n.d.array.join("big/f.bin"), &data).unwrap();
    let mut c = n.rpc();
    let root = c.mnt("/big").unwrap();
    let (f, _) = c.lookup(&root, b"f.bin").unwrap();
    // 1 MiB reads from an offset that is not page aligned, and odd lengths (XDR padding): short
    // reads are allowed, wrong bytes are not.
    for (start, count) in [
        (1000u64, 1 << 20),
        (4096, 1 << 20),
        (3, 65_537),
        (0, 20_001),
    ] {
        let mut off = start;
        let end = (start + count as u64).min(data.len() as u64);
        while off < end {
            let got = c.read(&f, off, (end - off) as u32).unwrap();
            assert!(!got.is_empty(), "no progress at {off}");
            assert_eq!(
                got[..],
                data[off as usize..off as usize + got.len()],
                "at {off}"
            );
            off += got.len() as u64;
        }
    }
    // The tail: the last bytes and nothing past the end.
    let tail = c.read(&f, data.len() as u64 - 5, 1 << 20).unwrap();
    assert_eq!(tail[..], data[data.len() - 5..]);
    assert!(c
        .read(&f, data.len() as u64 + 10, 1 << 20)
        .unwrap()
        .is_empty());
}
