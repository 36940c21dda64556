//! systemd's notify protocol (sd_notify): READY, STOPPING and watchdog pings over the datagram
//! socket named by `NOTIFY_SOCKET`. A no-op when not started by systemd.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

fn socket_addr() -> Option<SocketAddr> {
    let path = std::env::var_os("NOTIFY_SOCKET")?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
    match bytes.first() {
        // An abstract socket is written "@name".
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..]).ok()
        }
        Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(&path)).ok(),
        _ => None,
    }
}

/// Sends one notification ("READY=1", "WATCHDOG=1", …); errors are ignored, as sd_notify does.
pub fn notify(state: &str) {
    let Some(addr) = socket_addr() else { return };
    if let Ok(sock) = UnixDatagram::unbound() {
        let _ = sock.send_to_addr(state.as_bytes(), &addr);
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if it is meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // This test is the only user of these variables in the test binary.
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify("READY=1");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::env::set_var("WATCHDOG_USEC", "2000000");
        std::env::remove_var("WATCHDOG_PID");
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(2)));
        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
    }
}
