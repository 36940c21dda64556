//! Driving netavark the way Podman does: `netavark --config DIR --rootless=false
//! --aardvark-binary PATH setup|teardown NETNS`, the network options as JSON on stdin, the
//! status (or `{"error"}`) as JSON on stdout. netavark makes the bridge, the veth pair, the
//! addresses and routes, the iptables rules (NAT, port forwarding) and aardvark-dns's entries;
//! addresses are ours to allocate (Podman's IPAM lives in Podman too).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::PortMapping;

/// One network a container is attached to, as netavark wants it described.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub name: String,
    pub id: String,
    pub interface: String,
    pub subnet: String,
    pub gateway: String,
    #[serde(default)]
    pub subnet6: Option<String>,
    #[serde(default)]
    pub gateway6: Option<String>,
    pub internal: bool,
    pub dns: bool,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// The container's addresses on it.
    pub ips: Vec<String>,
    pub aliases: Vec<String>,
}

/// What a container's network is: written as `network.json` before setup, so that a teardown
/// is always possible (after a crash, a reboot) from this record alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub container_id: String,
    pub container_name: String,
    pub networks: Vec<Attachment>,
    pub ports: Vec<PortMapping>,
}

impl NetworkRecord {
    /// netavark's network options (its `types::NetworkOptions`).
    pub fn options(&self) -> Value {
        let mut networks = serde_json::Map::new();
        let mut info = serde_json::Map::new();
        for (i, a) in self.networks.iter().enumerate() {
            networks.insert(
                a.name.clone(),
                json!({
                    "static_ips": a.ips,
                    "aliases": a.aliases,
                    "interface_name": format!("eth{i}"),
                }),
            );
            let mut subnets = vec![json!({"subnet": a.subnet, "gateway": a.gateway})];
            if let (Some(s), Some(g)) = (&a.subnet6, &a.gateway6) {
                subnets.push(json!({"subnet": s, "gateway": g}));
            }
            info.insert(
                a.name.clone(),
                json!({
                    "name": a.name,
                    "id": a.id,
                    "driver": "bridge",
                    "network_interface": a.interface,
                    "subnets": subnets,
                    "ipv6_enabled": a.subnet6.is_some(),
                    "internal": a.internal,
                    "dns_enabled": a.dns,
                    "options": a.options,
                    "ipam_options": {"driver": "host-local"},
                }),
            );
        }
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                json!({
                    "host_ip": p.host_ip,
                    "container_port": p.container_port,
                    "host_port": p.host_port,
                    "range": 1,
                    "protocol": p.protocol.as_str(),
                })
            })
            .collect();
        json!({
            "container_id": self.container_id,
            "container_name": self.container_name,
            "port_mappings": ports,
            "networks": networks,
            "network_info": info,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetavarkError {
    #[error("cannot run {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("netavark {action} failed: {message}")]
    Failed {
        action: &'static str,
        message: String,
    },
}

/// The netavark binary, aardvark-dns's and netavark's config directory (this daemon's own).
#[derive(Clone, Debug)]
pub struct Netavark {
    pub binary: PathBuf,
    pub aardvark: PathBuf,
    pub config_dir: PathBuf,
}

impl Netavark {
    fn run(
        &self,
        action: &'static str,
        netns: &Path,
        opts: &Value,
    ) -> Result<Value, NetavarkError> {
        let _ = std::fs::create_dir_all(self.config_dir.join("aardvark-dns"));
        let spawn = |e| NetavarkError::Spawn {
            path: self.binary.clone(),
            source: e,
        };
        let mut child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config_dir)
            .arg("--rootless=false")
            .arg("--aardvark-binary")
            .arg(&self.aardvark)
            .arg(action)
            .arg(netns)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn)?;
        let input = serde_json::to_vec(opts).expect("json");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&input).map_err(spawn)?;
        }
        let out = child.wait_with_output().map_err(spawn)?;
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            let message = stdout["error"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| {
                    format!(
                        "{}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                });
            return Err(NetavarkError::Failed { action, message });
        }
        Ok(stdout)
    }

    /// Sets up the namespace at `netns` for `record`; netavark's status on success.
    pub fn setup(&self, netns: &Path, record: &NetworkRecord) -> Result<Value, NetavarkError> {
        self.run("setup", netns, &record.options())
    }

    /// Undoes [`setup`](Self::setup): the veth, the firewall rules, aardvark's entries (and the
    /// bridge when it was the last port, aardvark-dns when it was the last entry).
    pub fn teardown(&self, netns: &Path, record: &NetworkRecord) -> Result<(), NetavarkError> {
        self.run("teardown", netns, &record.options()).map(|_| ())
    }

    /// [`teardown`](Self::teardown) when the container's namespace is gone (a reboot, an
    /// unmount): in a fresh namespace at `netns` holding a placeholder veth for each of its
    /// interfaces (`eth0`, …). netavark deletes the container's interface first and stops at
    /// the first error, so without them the network's own rules and its bridge would stay
    /// when it was the last container; the per-container rules and aardvark's entry go either
    /// way.
    pub fn teardown_in_fresh(
        &self,
        netns: &Path,
        record: &NetworkRecord,
    ) -> Result<(), NetavarkError> {
        let count = record.networks.len();
        let made = inarray_sys::create_netns_with(netns, move || {
            for i in 0..count {
                let st = Command::new("ip")
                    .args([
                        "link",
                        "add",
                        &format!("eth{i}"),
                        "type",
                        "veth",
                        "peer",
                        "name",
                    ])
                    .arg(format!("eth{i}p"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?;
                if !st.success() {
                    return Err(std::io::Error::other(format!("ip link add eth{i}: {st}")));
                }
            }
            Ok(())
        });
        if let Err(e) = made {
            tracing::warn!(netns = %netns.display(), error = %e, "placeholder interfaces for a teardown");
            let _ = inarray_sys::create_netns(netns);
        }
        self.teardown(netns, record)
    }
}
