//! A tmux server of its own driving a CLI in a real terminal (raw mode, window size, keys):
//! `send-keys` in, `capture-pane` out; every wait polls against a deadline. tmux is in
//! TEST_PKGS (./dev).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::daemon::TestDaemon;

pub const DEADLINE: Duration = Duration::from_secs(30);

/// A tmux server of its own (its socket in the test's temporary directory, no config file) with
/// one session running one command.
pub struct Tmux {
    socket: PathBuf,
    /// Where the script sends the CLI's standard error (shown when a wait fails).
    stderr: PathBuf,
}

impl Tmux {
    /// Starts `script` (a `sh -c` line) in a detached session of `cols` x `rows`; `stderr` is
    /// in the test's temporary directory, and so is the server's socket.
    pub fn start(script: &str, stderr: PathBuf, cols: u16, rows: u16) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = stderr.parent().expect("a file in the test's directory");
        let t = Tmux {
            socket: dir.join(format!("tmux-{n}.sock")),
            stderr,
        };
        let (cols, rows) = (cols.to_string(), rows.to_string());
        t.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &cols,
            "-y",
            &rows,
            script,
        ]);
        t
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .env_remove("TMUX")
            .env_remove("INARRAY_TOKEN")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().unwrap_or_else(|e| {
            panic!("cannot run tmux ({e}): `./dev test` installs it (TEST_PKGS)")
        });
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `keys` (tmux key names: "Enter", "C-c"; anything else literally).
    pub fn keys(&self, keys: &[&str]) {
        self.run(&[&["send-keys", "-t", "t"], keys].concat());
    }

    /// Types a line and Enter.
    pub fn line(&self, text: &str) {
        self.run(&["send-keys", "-t", "t", "-l", text]);
        self.keys(&["Enter"]);
    }

    /// What the pane shows now; `None` once the session has ended.
    pub fn screen(&self) -> Option<String> {
        let out = self
            .command()
            .args(["capture-pane", "-p", "-t", "t"])
            .output()
            .expect("run tmux");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// For failure messages: the screen, the CLI's standard error and the daemon's log.
    pub fn report(&self, d: &TestDaemon) -> String {
        format!(
            "the screen:\n{}\n--- the CLI's stderr:\n{}\n--- daemon log:\n{}",
            self.screen()
                .unwrap_or_else(|| "(the session has ended)".into()),
            std::fs::read_to_string(&self.stderr).unwrap_or_default(),
            d.log()
        )
    }

    pub fn resize(&self, cols: u16, rows: u16) {
        let (cols, rows) = (cols.to_string(), rows.to_string());
        self.run(&["resize-window", "-t", "t", "-x", &cols, "-y", &rows]);
    }

    /// Polls the screen until `pred` holds; panics after the deadline, or at once when the
    /// session has ended (the CLI exited).
    pub async fn wait_screen(&self, d: &TestDaemon, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let Some(s) = self.screen() else {
                panic!("waiting for {what}: the CLI has exited; {}", self.report(d));
            };
            if pred(&s) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; {}",
                self.report(d)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a line of the screen that is exactly `text` (output, not the typed command).
    pub async fn wait_line(&self, d: &TestDaemon, text: &str) {
        self.wait_screen(d, &format!("the line {text:?}"), |s| {
            s.lines().any(|l| l.trim_end() == text)
        })
        .await;
    }

    /// Waits for the shell's prompt: the last line shown ends with `#` (root) or `$`.
    pub async fn wait_prompt(&self, d: &TestDaemon) {
        self.wait_screen(d, "a prompt", |s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .is_some_and(|l| l.trim_end().ends_with('#') || l.trim_end().ends_with('$'))
        })
        .await;
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").output();
    }
}

/// Waits for a file the pane's script writes at its end; returns its text.
pub async fn wait_file(d: &TestDaemon, t: &Tmux, path: &Path) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if s.ends_with('\n') {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {}; {}",
            path.display(),
            t.report(d)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
