//! End-to-end: the Python `docker` SDK (PyPI, in a virtualenv of its own made when missing, as
//! the conformance run makes Schemathesis's) against a daemon serving the Docker API: a run with
//! an array bind, a detached container, exec, wait, logs, images, stop and remove.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::daemon::{Method, TestDaemon};

/// A virtualenv with the `docker` SDK, made and filled from PyPI when missing.
fn sdk_python() -> PathBuf {
    let venv = PathBuf::from(
        std::env::var("INARRAY_DOCKER_SDK_VENV")
            .unwrap_or_else(|_| "/var/cache/inarray/docker-sdk-venv".into()),
    );
    let python = venv.join("bin/python");
    let has_sdk = |p: &Path| {
        Command::new(p)
            .args(["-c", "import docker"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_sdk(&python) {
        let _ = std::fs::remove_dir_all(&venv);
        std::fs::create_dir_all(venv.parent().unwrap()).unwrap();
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap()
            .success();
        assert!(ok, "python3 -m venv {}", venv.display());
        let ok = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "docker>=7,<8",
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "pip install docker (PyPI)");
    }
    python
}

const SCRIPT: &str = r#"
import sys, docker
sock, array = sys.argv[1], sys.argv[2]
c = docker.DockerClient(base_url="unix://" + sock)
assert c.version()["ApiVersion"], "version"
out = c.containers.run("busybox", ["sh", "-c", "echo hello; echo made > /data/f"],
                       remove=True, volumes={array + "/data": {"bind": "/data", "mode": "rw"}})
assert out == b"hello\n", out
w = c.containers.run("busybox", ["sleep", "300"], detach=True, name="sdkw",
                     environment={"GREETING": "hi"})
assert [x.name for x in c.containers.list()] == ["sdkw"], c.containers.list()
r = w.exec_run(["sh", "-c", "echo $GREETING; exit 4"])
assert (r.exit_code, r.output) == (4, b"hi\n"), r
q = c.containers.run("busybox", ["sh", "-c", "echo L; exit 3"], detach=True)
assert q.wait()["StatusCode"] == 3
assert q.logs() == b"L\n", q.logs()
q.remove()
assert any("busybox:latest" in i.tags for i in c.images.list())
w.stop(timeout=1)
w.reload()
assert w.status == "exited", w.status
w.remove(force=True)
assert c.containers.list(all=True) == [], c.containers.list(all=True)
try:
    c.containers.run("busybox", "true", privileged=True)
    raise SystemExit("privileged was accepted")
except docker.errors.APIError as e:
    assert e.status_code == 403, e
print("ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_docker_sdk_runs_its_everyday_calls() {
    let d = TestDaemon::start_with(vec![
        "--docker-listen".into(),
        "{tmp}/run/docker.sock".into(),
    ])
    .await;
    d.with_busybox().await;
    std::fs::create_dir_all(d.array.join("data")).unwrap();
    let python = sdk_python();
    let socket = d.tmp.path().join("run/docker.sock");
    let script = d.tmp.path().join("sdk.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = tokio::task::spawn_blocking({
        let (array, socket) = (d.array.clone(), socket.clone());
        move || {
            Command::new(python)
                .arg(script)
                .arg(socket)
                .arg(array)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{stdout}\n{stderr}\n--- daemon log:\n{}",
        d.log()
    );
    assert_eq!(
        std::fs::read_to_string(d.array.join("data/f")).unwrap(),
        "made\n"
    );
    // Everything the SDK made and removed went through the native model: nothing is left.
    let left = d.ok(Method::GET, "/v1/containers?all=true", None).await;
    assert_eq!(left.as_array().unwrap().len(), 0, "{left}");
}
