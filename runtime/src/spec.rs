//! Building the OCI runtime spec (config.json) for a container: safe defaults first.
//!
//! Defaults follow Docker's: its default capability set, `no_new_privileges`, masked and read-only
//! /proc paths, a seccomp profile that refuses the syscalls Docker's default profile refuses, not
//! privileged, a private network namespace with loopback only (or the host's when asked, or the
//! one the daemon set up for a bridge network, joined by its path).

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use crate::config::{ContainerConfig, Network};

/// What the image says about how to run it: the fields of the OCI image config we honour.
pub use inarray_images::RuntimeConfig as ImageDefaults;

/// Docker's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Syscalls refused with EPERM: those Docker's default profile does not allow a container without
/// extra capabilities (kernel modules, mounts and namespaces, keyrings, tracing, clocks, reboot,
/// handles by inode, BPF, perf).
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapon",
    "swapoff",
    "sysfs",
    "_sysctl",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
];

/// Resolved identity of the container's process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{0}")]
    NoCommand(String),
    #[error("cannot build the runtime spec: {0}")]
    Build(String),
}

/// Inputs to [`build`] that the daemon decides (not the caller).
pub struct SpecContext<'a> {
    pub hostname: &'a str,
    /// cgroup path for the container, e.g. `/inarray/<id>`.
    pub cgroups_path: &'a str,
    pub identity: Identity,
    /// The OCI `linux.resources` limits (see `Resources::to_oci`).
    pub resources: Value,
    /// The network namespace a container on a bridge network joins (made and set up by the
    /// daemon before the start).
    pub netns: Option<String>,
}

/// The process's argv: Entrypoint + Cmd, with the request's overrides.
pub fn argv(cfg: &ContainerConfig, image: &ImageDefaults) -> Result<Vec<String>, SpecError> {
    let entry = cfg
        .entrypoint
        .clone()
        .or_else(|| image.entrypoint.clone())
        .unwrap_or_default();
    let cmd = match (&cfg.command, &cfg.entrypoint) {
        (Some(c), _) => c.clone(),
        // Docker: setting the entrypoint resets the image's Cmd.
        (None, Some(_)) => Vec::new(),
        (None, None) => image.cmd.clone().unwrap_or_default(),
    };
    let args: Vec<String> = entry.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(SpecError::NoCommand(
            "command: the image has no Entrypoint or Cmd, so a command is required".into(),
        ));
    }
    Ok(args)
}

/// Image Env overlaid with the request's env (same key → the request wins), PATH defaulted.
pub fn environment(cfg: &ContainerConfig, image: &ImageDefaults) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let all = image.env.iter().chain(cfg.env.iter());
    for kv in all {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        out.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        out.push(kv.clone());
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    out
}

/// Builds the runtime spec. Volumes are not in it: the shim bind-mounts them through fds before
/// the runtime takes over (see `shim`).
pub fn build(
    cfg: &ContainerConfig,
    image: &ImageDefaults,
    ctx: &SpecContext<'_>,
) -> Result<Spec, SpecError> {
    let args = argv(cfg, image)?;
    let env = environment(cfg, image);
    let cwd = cfg
        .workdir
        .clone()
        .or_else(|| image.working_dir.clone().filter(|w| w.starts_with('/')))
        .unwrap_or_else(|| "/".into());
    let caps: Vec<&str> = DEFAULT_CAPS.to_vec();
    let mut spec =
        serde_json::to_value(Spec::default()).map_err(|e| SpecError::Build(e.to_string()))?;
    spec["hostname"] = json!(ctx.hostname);
    spec["root"] = json!({"path": "rootfs", "readonly": false});
    spec["process"] = json!({
        "terminal": cfg.tty,
        "user": {"uid": ctx.identity.uid, "gid": ctx.identity.gid},
        "args": args,
        "env": env,
        "cwd": cwd,
        "noNewPrivileges": true,
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps,
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    });
    let linux = &mut spec["linux"];
    linux["cgroupsPath"] = json!(ctx.cgroups_path);
    if let (Some(dst), Value::Object(src)) = (linux["resources"].as_object_mut(), &ctx.resources) {
        for (k, v) in src {
            dst.insert(k.clone(), v.clone());
        }
    }
    // The cgroup namespace is left out: cgroup v1 hosts (this project's test machines) do not
    // support it well, and no cgroupfs is mounted in the container either way.
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    match (&cfg.network, &ctx.netns) {
        (Network::Host, _) => {}
        (Network::Bridge(_), Some(path)) => {
            namespaces.push(json!({"type": "network", "path": path}));
        }
        _ => namespaces.push(json!({"type": "network"})),
    }
    linux["namespaces"] = Value::Array(namespaces);
    linux["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    });
    // The container's own cgroups, read-only, so it can see its limits (as Docker does). Only
    // its own subtree is mounted: no release_agent, nothing of the host's hierarchy.
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        mounts.push(json!({
            "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        }));
    }
    serde_json::from_value(spec).map_err(|e| SpecError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> ContainerConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn argv_follows_docker_rules() {
        let img = ImageDefaults {
            entrypoint: Some(vec!["/bin/tool".into()]),
            cmd: Some(vec!["--help".into()]),
            ..Default::default()
        };
        assert_eq!(
            argv(&cfg(r#"{"image":"x"}"#), &img).unwrap(),
            ["/bin/tool", "--help"]
        );
        assert_eq!(
            argv(&cfg(r#"{"image":"x","command":["run"]}"#), &img).unwrap(),
            ["/bin/tool", "run"]
        );
        assert_eq!(
            argv(&cfg(r#"{"image":"x","entrypoint":["sh"]}"#), &img).unwrap(),
            ["sh"]
        );
        let e = argv(&cfg(r#"{"image":"x"}"#), &ImageDefaults::default()).unwrap_err();
        assert!(e.to_string().starts_with("command:"));
    }

    #[test]
    fn env_overrides_by_key() {
        let img = ImageDefaults {
            env: vec!["PATH=/bin".into(), "A=1".into()],
            ..Default::default()
        };
        let env = environment(&cfg(r#"{"image":"x","env":["A=2","B=x=y"]}"#), &img);
        assert_eq!(env, ["PATH=/bin", "A=2", "B=x=y"]);
        assert!(
            environment(&cfg(r#"{"image":"x"}"#), &ImageDefaults::default())[0]
                .starts_with("PATH=")
        );
    }

    #[test]
    fn safe_defaults() {
        let ctx = SpecContext {
            hostname: "abc",
            cgroups_path: "/inarray/abc",
            identity: Identity {
                uid: 1000,
                gid: 100,
            },
            resources: json!({"pids": {"limit": 7}, "memory": {"limit": 67108864}}),
            netns: None,
        };
        let spec = build(
            &cfg(r#"{"image":"x","command":["true"]}"#),
            &ImageDefaults::default(),
            &ctx,
        )
        .unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["process"]["user"]["uid"], 1000);
        let bounding = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert_eq!(bounding.len(), DEFAULT_CAPS.len());
        assert!(!bounding.iter().any(|c| c == "CAP_SYS_ADMIN"));
        assert!(v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
        assert!(!v["linux"]["maskedPaths"].as_array().unwrap().is_empty());
        assert!(!v["linux"]["readonlyPaths"].as_array().unwrap().is_empty());
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 7);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 67108864);
        let cg = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys/fs/cgroup")
            .unwrap();
        assert!(
            cg["options"].as_array().unwrap().iter().any(|o| o == "ro"),
            "cgroups are read-only"
        );
        let host = build(
            &cfg(r#"{"image":"x","command":["true"],"network":"host"}"#),
            &ImageDefaults::default(),
            &ctx,
        )
        .unwrap();
        let v = serde_json::to_value(&host).unwrap();
        assert!(!v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
    }
}
