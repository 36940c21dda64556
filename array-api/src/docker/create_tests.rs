//! Unit tests of the Docker create translation (`create.rs`): captured CLI bodies, the field
//! rules, binds confined to the array.

use super::*;
use serde_json::json;

fn array() -> &'static Path {
    Path::new("/srv/array")
}

fn tr(v: Value) -> Result<Translated> {
    translate(&v, Some("web".into()), array(), LogLimits::default())
}

/// What the Docker CLI 28.2 sends for `docker create busybox true` and
/// `docker create -it -m 64m busybox true` (captured): accepted as they are.
#[test]
fn the_docker_clis_bodies_translate() {
    let plain: Value = serde_json::from_str(include_str!("testdata/cli-28-create.json")).unwrap();
    let t = tr(plain).unwrap();
    assert_eq!(t.config.command, Some(vec!["true".to_owned()]));
    assert_eq!((t.config.tty, t.config.open_stdin), (false, false));
    assert_eq!(t.config.network, Network::None);
    assert_eq!(t.config.resources, Resources::default());
    let it: Value =
        serde_json::from_str(include_str!("testdata/cli-28-create-it-m64m.json")).unwrap();
    let t = tr(it).unwrap();
    assert_eq!((t.config.tty, t.config.open_stdin), (true, true));
    assert_eq!(t.config.resources.memory, Some(Bytes(64 << 20)));
    assert!(t.config.env.contains(&"TERM=xterm".to_owned()));
    // The Debian docker CLI (20.10, API 1.41), with -v on a path of the array.
    let old: Value =
        serde_json::from_str(include_str!("testdata/cli-20.10-create-bind.json")).unwrap();
    let t = tr(old).unwrap();
    assert_eq!(t.config.volumes[0].source, "z");
    assert_eq!(t.config.volumes[0].target, "/z");
}

#[test]
fn binds_inside_the_array_become_relative_volumes() {
    let t = tr(json!({
        "Image": "busybox", "Cmd": ["sh"],
        "HostConfig": {"Binds": ["/srv/array/x/y:/data:ro", "/srv/array:/all"],
                       "Mounts": [{"Type": "bind", "Source": "/srv/array/m", "Target": "/m"}]}
    }))
    .unwrap();
    let v = &t.config.volumes;
    assert_eq!(
        (
            v[0].source.as_str(),
            v[0].target.as_str(),
            v[0].read_only,
            v[0].create
        ),
        ("x/y", "/data", true, true)
    );
    assert_eq!(v[1].source, ".");
    assert_eq!((v[2].source.as_str(), v[2].create), ("m", false));
    assert_eq!(
        t.origins,
        [
            "HostConfig.Binds[0]",
            "HostConfig.Binds[1]",
            "HostConfig.Mounts[0]"
        ]
    );
    assert!(!t.config.start);
    assert_eq!(t.config.pull, PullPolicy::Never);
}

#[test]
fn binds_outside_the_array_are_refused_naming_the_field() {
    for (bind, needle) in [
        (
            "/etc:/x",
            "HostConfig.Binds[0]: source \"/etc\" is outside the array",
        ),
        (
            "/:/host",
            "HostConfig.Binds[0]: source \"/\" is outside the array",
        ),
        ("/srv/arrayx/a:/x", "outside the array"),
        ("/srv/array/../etc:/x", "contains \"..\""),
        ("data:/x", "named volumes are not available yet"),
        ("/srv/array/a:/x:z", "option \"z\""),
    ] {
        let e = tr(json!({"Image": "b", "HostConfig": {"Binds": [bind]}}))
            .err()
            .unwrap();
        assert_eq!(e.status.as_u16(), 400, "{bind}");
        assert!(e.message.contains(needle), "{bind}: {}", e.message);
    }
    let e = tr(json!({"Image": "b", "HostConfig": {"Mounts": [{"Type": "volume", "Source": "v", "Target": "/v"}]}}))
        .err()
        .unwrap();
    assert!(
        e.message.starts_with("HostConfig.Mounts[0].Type"),
        "{}",
        e.message
    );
    let e = tr(json!({"Image": "b", "HostConfig": {"Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/v"}]}}))
        .err()
        .unwrap();
    assert!(
        e.message
            .starts_with("HostConfig.Mounts[0].Source: source \"/etc\" is outside"),
        "{}",
        e.message
    );
}

#[test]
fn resources_restart_network_and_labels() {
    let t = tr(json!({
        "Image": "b", "Labels": {"inarray.engine": "batch", "team": "x"},
        "HostConfig": {"Memory": 268435456, "NanoCpus": 500000000, "CpuShares": 1024,
                       "PidsLimit": 64, "BlkioWeight": 300, "NetworkMode": "host",
                       "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3},
                       "MemorySwappiness": -1},
        "NetworkingConfig": {"EndpointsConfig": {"host": {}}}
    }))
    .unwrap();
    let c = &t.config;
    let r = &c.resources;
    assert_eq!(r.memory, Some(Bytes(256 << 20)));
    assert_eq!(r.cpus, Some(0.5));
    assert_eq!(r.cpu_weight, Some(39));
    assert_eq!((r.pids, r.io_weight), (Some(64), Some(300)));
    assert_eq!(c.network, Network::Host);
    assert_eq!(c.restart, RestartPolicy::OnFailure { max: Some(3) });
    assert_eq!(c.engine.as_deref(), Some("batch"));
    assert!(t.warnings.is_empty());
    let t = tr(json!({"Image": "b", "HostConfig": {"NetworkMode": "default", "AutoRemove": true}}))
        .unwrap();
    assert_eq!(t.config.network, Network::None);
    assert!(t.config.auto_remove);
    assert!(t.warnings[0].contains("issue #18"), "{:?}", t.warnings);
}

#[test]
fn healthcheck_and_log_options() {
    let t = tr(json!({
        "Image": "b",
        "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 2_000_000_000i64, "Retries": 3},
        "HostConfig": {"LogConfig": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}}}
    }))
    .unwrap();
    let h = t.config.healthcheck.unwrap();
    assert_eq!(h.test, ["CMD-SHELL", "true"]);
    assert_eq!(
        (h.interval, h.retries, h.timeout),
        (Some(2.0), Some(3), None)
    );
    assert_eq!(
        t.config.log,
        Some(LogLimits {
            max_size: 1 << 20,
            max_files: 2
        })
    );
    // Only one of the pair: the other is the daemon's default.
    let t = tr(json!({"Image": "b", "HostConfig": {"LogConfig": {"Type": "", "Config": {"max-file": "5"}}}})).unwrap();
    assert_eq!(
        t.config.log.unwrap().max_size,
        LogLimits::default().max_size
    );
    // Zeros: the image's check; NONE: no check.
    let t = tr(json!({"Image": "b", "Healthcheck": {"Test": null, "Interval": 0}})).unwrap();
    assert!(t.config.healthcheck.is_none());
    let t = tr(json!({"Image": "b", "Healthcheck": {"Test": ["NONE"]}})).unwrap();
    assert_eq!(t.config.healthcheck.unwrap().test, ["NONE"]);
    for (body, needle) in [
        (
            json!({"Image": "b", "Healthcheck": {"Interval": 1_000_000_000i64}}),
            "Healthcheck.Test: required",
        ),
        (
            json!({"Image": "b", "Healthcheck": {"Test": ["CMD", "true"], "StartInterval": 5}}),
            "Healthcheck.StartInterval",
        ),
        (
            json!({"Image": "b", "Healthcheck": {"Test": ["BOGUS"]}}),
            "Healthcheck",
        ),
        (
            json!({"Image": "b", "HostConfig": {"LogConfig": {"Type": "syslog"}}}),
            "HostConfig.LogConfig.Type",
        ),
        (
            json!({"Image": "b", "HostConfig": {"LogConfig": {"Config": {"compress": "true"}}}}),
            "HostConfig.LogConfig.Config.compress",
        ),
        (
            json!({"Image": "b", "HostConfig": {"LogConfig": {"Config": {"max-size": "10"}}}}),
            "HostConfig.LogConfig.Config",
        ),
        (
            json!({"Image": "b", "HostConfig": {"LogConfig": {"Config": {"max-file": "x"}}}}),
            "max-file",
        ),
    ] {
        let e = tr(body.clone())
            .err()
            .unwrap_or_else(|| panic!("{body} was accepted"));
        assert_eq!(e.status.as_u16(), 400, "{body}: {}", e.message);
        assert!(e.message.contains(needle), "{body}: {}", e.message);
    }
}

#[test]
fn refusals_name_the_field() {
    for (body, status, needle) in [
        (
            json!({"Image": "b", "HostConfig": {"Privileged": true}}),
            403,
            "HostConfig.Privileged",
        ),
        (
            json!({"Image": "b", "HostConfig": {"PidMode": "host"}}),
            403,
            "HostConfig.PidMode: the host's PID namespace",
        ),
        (
            json!({"Image": "b", "HostConfig": {"IpcMode": "host"}}),
            403,
            "HostConfig.IpcMode",
        ),
        (
            json!({"Image": "b", "HostConfig": {"SecurityOpt": ["seccomp=unconfined"]}}),
            403,
            "SecurityOpt[0]",
        ),
        (
            json!({"Image": "b", "HostConfig": {"NetworkMode": "bridge"}}),
            400,
            "HostConfig.NetworkMode",
        ),
        (
            json!({"Image": "b", "HostConfig": {"AutoRemove": true, "RestartPolicy": {"Name": "always"}}}),
            400,
            "HostConfig.AutoRemove",
        ),
        (
            json!({"Image": "b", "HostConfig": {"Memory": 1024}}),
            400,
            "HostConfig.Memory",
        ),
        (
            json!({"Image": "b", "HostConfig": {"Memory": "1g"}}),
            400,
            "HostConfig.Memory",
        ),
        (json!({"Image": "b", "Env": ["NOVALUE"]}), 400, "Env[0]"),
        (
            json!({"Image": "b", "Bogus": 1}),
            400,
            "Bogus: unknown field",
        ),
        (
            json!({"Image": "b", "Volumes": {"/data": {}}}),
            400,
            "Volumes: not supported",
        ),
        (
            // A declared target that no bind covers is still an anonymous volume.
            json!({"Image": "b", "Volumes": {"/data": {}, "/other": {}},
                   "HostConfig": {"Binds": ["/srv/array/x:/data"]}}),
            400,
            "Volumes: not supported",
        ),
        (
            json!({"Image": "b", "StopSignal": "SIGQUIT"}),
            400,
            "StopSignal",
        ),
        (json!({"Cmd": ["x"]}), 400, "Image: required"),
        (
            json!({"Image": "b", "NetworkingConfig": {"EndpointsConfig": {"web": {"Aliases": ["a"]}}}}),
            400,
            "EndpointsConfig.web",
        ),
    ] {
        let e = tr(body.clone())
            .err()
            .unwrap_or_else(|| panic!("{body} was accepted"));
        assert_eq!(e.status.as_u16(), status, "{body}: {}", e.message);
        assert!(e.message.contains(needle), "{body}: {}", e.message);
    }
}

#[test]
fn entrypoint_reset_and_native_field_names() {
    let t = tr(json!({"Image": "b", "Entrypoint": [""]})).unwrap();
    assert_eq!(t.config.entrypoint, Some(vec![]));
    assert!(t.image_cmd_alone);
    let o = vec![
        "HostConfig.Binds[0]".to_owned(),
        "HostConfig.Mounts[0]".to_owned(),
    ];
    assert_eq!(docker_field("volumes[0].source", &o), "HostConfig.Binds[0]");
    assert_eq!(
        docker_field("volumes[1].target", &o),
        "HostConfig.Mounts[0].target"
    );
    assert_eq!(docker_field("env[2]", &o), "Env[2]");
    assert_eq!(docker_field("resources.memory", &o), "HostConfig.Memory");
    assert_eq!(
        docker_message("user: no such user \"x\" in /etc/passwd", &o),
        "User: no such user \"x\" in /etc/passwd"
    );
    assert_eq!(
        docker_message("cannot start the container: exec failed", &o),
        "cannot start the container: exec failed"
    );
    assert_eq!(
        docker_message("volumes[1].source: source \"m\" does not exist in the array (set create: true to create it)", &o),
        "HostConfig.Mounts[0].source: source \"m\" does not exist in the array (a Mounts bind source must exist; a Binds source is created)"
    );
}

#[test]
fn volumes_declaring_only_bind_targets_pass() {
    // What the Python docker SDK sends for `volumes={host: {"bind": …}}`.
    let t = tr(json!({
        "Image": "busybox", "Volumes": {"/data": {}, "/logs/": {}},
        "HostConfig": {"Binds": ["/srv/array/x:/data:rw"],
                       "Mounts": [{"Type": "bind", "Source": "/srv/array/y", "Target": "/logs"}]},
    }))
    .unwrap();
    assert_eq!(t.config.volumes.len(), 2);
}
