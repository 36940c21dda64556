//! End-to-end: `inarray exec`, `run -i/-t`, `attach` and their terminals (docs/design/exec.md),
//! through the real CLI binary against the real daemon, as root. The interactive cases run the
//! CLI in a tmux pane (a real terminal: raw mode, window size, keys) driven with `send-keys` and
//! read with `capture-pane`; every wait polls against a deadline.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{Method, TestDaemon};
use common::tmux::{wait_file, Tmux, DEADLINE};
use serde_json::json;

/// The CLI against `d`, as a shell command line.
fn cli_line(d: &TestDaemon, args: &str) -> String {
    format!(
        "{} --host unix:{} {args}",
        TestDaemon::bin().display(),
        d.socket.display()
    )
}

/// `ps` inside the container (through the non-tty exec).
fn ps(d: &TestDaemon, container: &str) -> String {
    let (ok, out, err) = d.cli(&["exec", container, "ps"]);
    assert!(ok, "exec ps: {err}");
    out
}

/// Polls `ps` in the container until `pred` holds.
async fn wait_ps(d: &TestDaemon, container: &str, what: &str, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let out = ps(d, container);
        if pred(&out) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tmp_file(d: &TestDaemon, name: &str) -> PathBuf {
    d.tmp.path().join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_it_gives_a_shell_with_the_terminals_size_and_restores_the_terminal() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    d.run(json!({"image": "busybox", "name": "tty-box", "command": ["sleep", "300"]}))
        .await;
    let (before, after, rc, err) = (
        tmp_file(&d, "stty.before"),
        tmp_file(&d, "stty.after"),
        tmp_file(&d, "rc"),
        tmp_file(&d, "stderr"),
    );
    let script = format!(
        "stty -g > {b}; {cli} 2> {err}; echo rc=$? > {rc}; stty -g > {a}",
        b = before.display(),
        a = after.display(),
        rc = rc.display(),
        err = err.display(),
        cli = cli_line(&d, "exec -it tty-box sh"),
    );
    let t = Tmux::start(&script, err, 100, 30);
    t.wait_prompt(&d).await;

    // The terminal's size reached the process, at the start and after a change.
    t.line("stty size");
    t.wait_line(&d, "30 100").await;
    t.resize(120, 40);
    let deadline = Instant::now() + DEADLINE;
    loop {
        // SIGWINCH → resize is asynchronous: ask again until the new size shows.
        t.line("stty size");
        let seen = tokio::time::timeout(Duration::from_secs(2), async {
            while !t
                .screen()
                .is_some_and(|s| s.lines().any(|l| l.trim_end() == "40 120"))
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if seen.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new size never showed; {}",
            t.report(&d)
        );
    }

    // Ctrl-C is a byte for the container's terminal: it interrupts the command there, and the
    // session (and the CLI) go on.
    t.line("sleep 100");
    wait_ps(&d, "tty-box", "sleep 100 to run", |p| {
        p.contains("sleep 100")
    })
    .await;
    t.keys(&["C-c"]);
    wait_ps(&d, "tty-box", "sleep 100 to end", |p| {
        !p.contains("sleep 100")
    })
    .await;
    t.line("echo alive-$((3+4))");
    t.wait_line(&d, "alive-7").await;
    assert!(!rc.exists(), "the CLI is still attached");

    // `exit` ends the exec: the CLI exits with its code and the terminal is as it was.
    t.line("exit");
    assert_eq!(wait_file(&d, &t, &rc).await, "rc=0\n");
    let after = wait_file(&d, &t, &after).await;
    assert_eq!(std::fs::read_to_string(&before).unwrap(), after);
    // The container runs on.
    let c = d.container("tty-box").await;
    assert_eq!(c["state"], "running", "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_it_rm_is_an_interactive_shell_that_exits_with_its_code_and_is_removed() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    let (rc, err) = (tmp_file(&d, "rc"), tmp_file(&d, "stderr"));
    let script = format!(
        "{} 2> {}; echo rc=$? > {}",
        cli_line(&d, "run -it --rm busybox sh"),
        err.display(),
        rc.display()
    );
    let t = Tmux::start(&script, err, 100, 30);
    // The first prompt is not lost: the daemon holds the output until the attach is connected.
    t.wait_prompt(&d).await;
    t.line("echo $((6*7))");
    t.wait_line(&d, "42").await;
    t.line("exit 3");
    assert_eq!(wait_file(&d, &t, &rc).await, "rc=3\n");
    let all = d.ok(Method::GET, "/v1/containers?all=true", None).await;
    assert_eq!(all, json!([]), "--rm removed the container");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_without_a_terminal_splits_stdout_and_stderr_and_passes_stdin() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    d.run(json!({"image": "busybox", "name": "plain", "command": ["sleep", "300"]}))
        .await;
    let host = format!("unix:{}", d.socket.display());

    let out = Command::new(TestDaemon::bin())
        .args(["--host", &host, "exec", "plain", "sh", "-c"])
        .arg("echo out; echo err >&2; exit 7")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    // -i: standard input reaches the command; its end is the command's end of input.
    let mut child = Command::new(TestDaemon::bin())
        .args(["--host", &host, "exec", "-i", "plain", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");

    // Without -i the command's input is empty at once, whatever the CLI's input is (here a
    // pipe the test holds open).
    let mut child = tokio::process::Command::new(TestDaemon::bin())
        .args([
            "--host",
            &host,
            "exec",
            "plain",
            "sh",
            "-c",
            "cat; echo end",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _held_open = child.stdin.take();
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("exec without -i waited for the CLI's input")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "end\n");

    // The user and the working directory and environment.
    let (ok, out, err) = d.cli(&[
        "exec",
        "-u",
        "65534",
        "-w",
        "/tmp",
        "-e",
        "GREETING=hi",
        "plain",
        "sh",
        "-c",
        "echo $(id -u) $(pwd) $GREETING",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "65534 /tmp hi\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_errors_reach_the_user() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    // A container that is not running: the daemon's message, and docker's status 125.
    d.run(json!({"image": "busybox", "name": "stopped", "command": ["true"], "start": false}))
        .await;
    let host = format!("unix:{}", d.socket.display());
    let out = Command::new(TestDaemon::bin())
        .args(["--host", &host, "exec", "stopped", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not running"), "{err}");

    let (ok, _, err) = d.cli(&["exec", "nosuch", "true"]);
    assert!(!ok);
    assert!(err.contains("nosuch"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_with_input_needs_a_terminal_here() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    d.run(json!({"image": "busybox", "name": "box", "command": ["sleep", "300"]}))
        .await;
    for args in [
        &["exec", "-it", "box", "sh"][..],
        &["run", "-it", "--rm", "busybox", "sh"],
    ] {
        let (ok, out, err) = d.cli(args);
        assert!(!ok, "{args:?}: {out}");
        assert_eq!(err, "inarray: the input device is not a TTY\n", "{args:?}");
    }
    // Refused before anything was created: only the one container exists.
    let all = d.ok(Method::GET, "/v1/containers?all=true", None).await;
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_types_into_the_containers_terminal_detaches_and_sees_the_exit() {
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    // run -d -it: a terminal and input, started, not attached.
    let (ok, _, err) = d.cli(&["run", "-d", "-it", "--name", "att", "busybox", "sh"]);
    assert!(ok, "{err}");
    let c = d.container("att").await;
    assert_eq!(
        (&c["tty"], &c["open_stdin"]),
        (&json!(true), &json!(true)),
        "{c}"
    );

    // Attached: what is typed reaches the shell; ctrl-p ctrl-q detach, the shell lives on.
    let (rc, err) = (tmp_file(&d, "rc1"), tmp_file(&d, "stderr1"));
    let script = format!(
        "{} 2> {}; echo rc=$? > {}",
        cli_line(&d, "attach att"),
        err.display(),
        rc.display()
    );
    let t = Tmux::start(&script, err, 100, 30);
    t.line("echo attached-$((1+1))");
    t.wait_line(&d, "attached-2").await;
    t.keys(&["C-p", "C-q"]);
    assert_eq!(wait_file(&d, &t, &rc).await, "rc=0\n", "a detach exits 0");
    drop(t);
    assert_eq!(d.container("att").await["state"], "running");

    // Attached again: the shell's exit is the CLI's.
    let (rc, err) = (tmp_file(&d, "rc2"), tmp_file(&d, "stderr2"));
    let script = format!(
        "{} 2> {}; echo rc=$? > {}",
        cli_line(&d, "attach att"),
        err.display(),
        rc.display()
    );
    let t = Tmux::start(&script, err, 100, 30);
    t.line("echo again-$((2+2))");
    t.wait_line(&d, "again-4").await;
    t.line("exit 5");
    assert_eq!(wait_file(&d, &t, &rc).await, "rc=5\n");
    let c = d.container("att").await;
    assert_eq!(
        (&c["state"], &c["exit_code"]),
        (&json!("exited"), &json!(5)),
        "{c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_without_a_terminal_follows_the_output_until_a_signal() {
    use tokio::io::AsyncBufReadExt;
    let d = TestDaemon::start().await;
    d.with_busybox().await;
    d.run(json!({"image": "busybox", "name": "ticker",
        "command": ["sh", "-c", "while true; do echo tick; sleep 0.2; done"]}))
        .await;
    let host = format!("unix:{}", d.socket.display());
    let mut child = tokio::process::Command::new(TestDaemon::bin())
        .args(["--host", &host, "attach", "ticker"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The output from now on (a container without a terminal or input is followed through its
    // log, which is one stream: all of it comes as stdout).
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        let line = tokio::time::timeout(DEADLINE, out.next_line()).await;
        assert_eq!(
            line.expect("output in time").unwrap().as_deref(),
            Some("tick")
        );
    }
    // SIGTERM ends the CLI with 143; the container runs on.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("the CLI ended on SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert_eq!(d.container("ticker").await["state"], "running");
}
