//! The daemon as a systemd service: the units verify, and the notify protocol (READY, WATCHDOG,
//! STOPPING) is spoken.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::daemon::TestDaemon;

#[test]
fn the_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/inarray.service"
    ))
    .unwrap();
    // verify checks that ExecStart exists: point it at the binary cargo built.
    let unit = unit.replace(
        "/usr/local/bin/inarray",
        TestDaemon::bin().to_str().unwrap(),
    );
    std::fs::write(dir.path().join("inarray.service"), unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("inarray.service"))
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed to verify the unit");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("inarray.service"),
        "{err}"
    );
    for f in [
        "inarray.sysusers",
        "inarray.tmpfiles",
        "inarray.toml.example",
    ] {
        assert!(
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd"))
                .join(f)
                .exists(),
            "{f}"
        );
    }
    // The example configuration parses, with the keys the daemon knows.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/inarray.toml.example"
    ))
    .unwrap();
    let v: toml::Table = toml::from_str(&example).unwrap();
    for k in v.keys() {
        assert!(
            [
                "array",
                "state_dir",
                "listen",
                "socket_mode",
                "socket_group"
            ]
            .contains(&k.as_str()),
            "{k}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaks_the_notify_protocol() {
    common::daemon::require_root();
    let mut d = TestDaemon::start().await;
    d.kill9();
    let sock_path = d.tmp.path().join("notify.sock");
    let rx = UnixDatagram::bind(&sock_path).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut cmd = d.serve_command();
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000");
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    while !(got.iter().any(|m: &String| m == "READY=1")
        && got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2)
    {
        let n = rx.recv(&mut buf).expect("a notification within 20 s");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(got[0], "READY=1", "{got:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    loop {
        let n = rx.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
        if &buf[..n] == b"STOPPING=1" {
            break;
        }
    }
    assert!(child.wait().unwrap().success());
}
