//! Bridge networks: the request shapes (a network, a published port), their validation, subnets
//! and the node's own routes (what a new subnet may not overlap), the files a container on a
//! network gets (`files.rs`), and netavark, which does the work (`netavark.rs`; design:
//! `docs/design/networks.md`).

mod cidr;
pub mod files;
pub mod netavark;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use cidr::{host_routes, Cidr};

use crate::config::{ContainerConfig, InvalidField, Network};

fn bad(field: impl Into<String>, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The name of the built-in network.
pub const BRIDGE: &str = "bridge";
/// At most this many published ports a container.
pub const MAX_PORTS: usize = 128;
const MAX_ALIASES: usize = 32;
const MAX_DNS: usize = 8;
const MAX_EXTRA_HOSTS: usize = 256;

/// How the daemon reaches netavark and where bridge networks get their subnets.
#[derive(Clone, Debug)]
pub struct NetworkOptions {
    pub netavark: PathBuf,
    pub aardvark: PathBuf,
    /// The built-in `bridge` network's IPv4 subnet.
    pub bridge_subnet: Cidr,
    /// Where networks created without a subnet get one (/24 each).
    pub pool: Cidr,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        Self {
            netavark: "/usr/lib/podman/netavark".into(),
            aardvark: "/usr/lib/podman/aardvark-dns".into(),
            bridge_subnet: "10.91.0.0/24".parse().expect("default bridge subnet"),
            pool: "10.91.0.0/16".parse().expect("default pool"),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// A container port published on the node. Numbers are read wide so that a bad one is refused
/// by name (`ports[0].host_port`), not by the JSON parser.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// The node's address it is published on (default: all of them).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
    /// 0: an ephemeral port, chosen at create and reported back.
    #[serde(default)]
    pub host_port: i64,
    pub container_port: i64,
    #[serde(default)]
    pub protocol: Protocol,
}

impl PortMapping {
    /// Whether `self` and `other` would take the same port of the node.
    pub fn clashes(&self, other: &PortMapping) -> bool {
        let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && self.host_port != 0
            && (any(&self.host_ip) || any(&other.host_ip) || self.host_ip == other.host_ip)
    }

    /// `host_ip:host_port/protocol`, for messages.
    pub fn describe(&self) -> String {
        let ip = if self.host_ip.is_empty() {
            "0.0.0.0"
        } else {
            &self.host_ip
        };
        format!("{ip}:{}/{}", self.host_port, self.protocol.as_str())
    }
}

/// What [`NetworkSpec::validate`] parsed: the subnet, the gateway, the IPv6 subnet (each when
/// given).
pub type Checked = (Option<Cidr>, Option<IpAddr>, Option<Cidr>);

/// A request to create a network (`POST /v1/networks`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub name: String,
    /// IPv4 CIDR (default: a free /24 of the daemon's pool).
    #[serde(default)]
    pub subnet: Option<String>,
    /// Default: the subnet's first address.
    #[serde(default)]
    pub gateway: Option<String>,
    /// No route out: containers reach each other only.
    #[serde(default)]
    pub internal: bool,
    /// An IPv6 subnet too (`subnet6`, default: a random ULA /64).
    #[serde(default)]
    pub ipv6: bool,
    #[serde(default)]
    pub subnet6: Option<String>,
    /// Names resolved by aardvark-dns on the gateway (default on).
    #[serde(default = "yes")]
    pub dns: bool,
    /// netavark bridge options: `mtu`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

impl NetworkSpec {
    /// What can be checked alone: the name, the subnets' shapes, the gateway in its subnet, the
    /// options. Overlaps are the manager's (they need the store and the node's routes).
    pub fn validate(&self) -> Result<Checked, InvalidField> {
        inarray_store::names::NETWORK
            .check(&self.name)
            .map_err(|r| bad("name", r))?;
        if matches!(self.name.as_str(), "none" | "host") {
            return Err(bad(
                "name",
                format!("{:?} is a network mode, not a network name", self.name),
            ));
        }
        let subnet = match &self.subnet {
            Some(s) => {
                let c: Cidr = s.parse().map_err(|r| bad("subnet", r))?;
                if !c.is_v4() || !(8..=30).contains(&c.prefix) {
                    return Err(bad(
                        "subnet",
                        format!("{s} must be an IPv4 subnet /8 to /30"),
                    ));
                }
                Some(c)
            }
            None => None,
        };
        let gateway = match &self.gateway {
            Some(g) => {
                let ip: IpAddr = g
                    .parse()
                    .map_err(|_| bad("gateway", format!("{g:?} is not an IP address")))?;
                let Some(s) = subnet else {
                    return Err(bad("gateway", "needs a subnet"));
                };
                if !s.contains(ip) || ip == s.addr || ip == s.last() {
                    return Err(bad("gateway", format!("{g} is not a host address of {s}")));
                }
                Some(ip)
            }
            None => None,
        };
        let subnet6 = match &self.subnet6 {
            Some(_) if !self.ipv6 => return Err(bad("subnet6", "needs ipv6: true")),
            Some(s) => {
                let c: Cidr = s.parse().map_err(|r| bad("subnet6", r))?;
                if c.is_v4() || !(48..=120).contains(&c.prefix) {
                    return Err(bad(
                        "subnet6",
                        format!("{s} must be an IPv6 subnet /48 to /120"),
                    ));
                }
                Some(c)
            }
            None => None,
        };
        for (k, v) in &self.options {
            match k.as_str() {
                "mtu" => {
                    if !v.parse::<u32>().is_ok_and(|m| (576..=65535).contains(&m)) {
                        return Err(bad("options.mtu", format!("{v:?} is not 576 to 65535")));
                    }
                }
                other => {
                    return Err(bad(
                        format!("options.{}", other.chars().take(64).collect::<String>()),
                        "unknown option (supported: mtu)",
                    ))
                }
            }
        }
        Ok((subnet, gateway, subnet6))
    }
}

fn check_dns_name(field: &str, name: &str) -> Result<(), InvalidField> {
    if name.is_empty() || name.len() > 253 {
        return Err(bad(field, "must be a host name of 1 to 253 bytes"));
    }
    for label in name.split('.') {
        inarray_store::names::HOSTNAME
            .check(label)
            .map_err(|r| bad(field, r))?;
    }
    Ok(())
}

/// The network fields of a container request: ports, aliases, hostname, DNS, extra hosts.
pub fn validate_container(cfg: &ContainerConfig) -> Result<(), InvalidField> {
    let bridge = cfg.network.bridge();
    if let Some(n) = bridge {
        inarray_store::names::NETWORK
            .check(n)
            .map_err(|r| bad("network", format!("{r} (or none, host)")))?;
    }
    if !cfg.ports.is_empty() && bridge.is_none() {
        return Err(bad(
            "ports",
            format!(
                "need a bridge network (network is {}); use network: bridge or a network's name",
                cfg.network
            ),
        ));
    }
    if cfg.ports.len() > MAX_PORTS {
        return Err(bad(
            "ports",
            format!(
                "has {} entries, at most {MAX_PORTS} allowed",
                cfg.ports.len()
            ),
        ));
    }
    for (i, p) in cfg.ports.iter().enumerate() {
        if !(1..=65535).contains(&p.container_port) {
            return Err(bad(
                format!("ports[{i}].container_port"),
                format!("{} is not a port (1 to 65535)", p.container_port),
            ));
        }
        if !(0..=65535).contains(&p.host_port) {
            return Err(bad(
                format!("ports[{i}].host_port"),
                format!(
                    "{} is not a port (1 to 65535, or 0 for an ephemeral one)",
                    p.host_port
                ),
            ));
        }
        if !p.host_ip.is_empty() && p.host_ip.parse::<IpAddr>().is_err() {
            return Err(bad(
                format!("ports[{i}].host_ip"),
                format!(
                    "{:?} is not an IP address",
                    p.host_ip.chars().take(64).collect::<String>()
                ),
            ));
        }
        if let Some(j) = cfg.ports[..i].iter().position(|q| q.clashes(p)) {
            return Err(bad(
                format!("ports[{i}].host_port"),
                format!("{} is published twice (also ports[{j}])", p.describe()),
            ));
        }
    }
    if !cfg.aliases.is_empty() && bridge.is_none() {
        return Err(bad("aliases", "need a bridge network"));
    }
    if cfg.aliases.len() > MAX_ALIASES {
        return Err(bad("aliases", format!("at most {MAX_ALIASES} allowed")));
    }
    for (i, a) in cfg.aliases.iter().enumerate() {
        check_dns_name(&format!("aliases[{i}]"), a)?;
    }
    if let Some(h) = &cfg.hostname {
        inarray_store::names::HOSTNAME
            .check(h)
            .map_err(|r| bad("hostname", r))?;
    }
    if cfg.dns.len() > MAX_DNS {
        return Err(bad("dns", format!("at most {MAX_DNS} name servers")));
    }
    for (i, d) in cfg.dns.iter().enumerate() {
        if d.parse::<IpAddr>().is_err() {
            return Err(bad(
                format!("dns[{i}]"),
                format!(
                    "{:?} is not an IP address",
                    d.chars().take(64).collect::<String>()
                ),
            ));
        }
    }
    if cfg.extra_hosts.len() > MAX_EXTRA_HOSTS {
        return Err(bad(
            "extra_hosts",
            format!("at most {MAX_EXTRA_HOSTS} entries"),
        ));
    }
    for (i, h) in cfg.extra_hosts.iter().enumerate() {
        let field = format!("extra_hosts[{i}]");
        let (name, ip) = h
            .split_once(':')
            .ok_or_else(|| bad(&field, "must be name:address"))?;
        check_dns_name(&field, name)?;
        ip.parse::<IpAddr>()
            .map_err(|_| bad(&field, format!("{ip:?} is not an IP address")))?;
    }
    Ok(())
}

/// Whether `ip` is an address of one of this node's interfaces (or unspecified).
pub fn is_node_address(ip: IpAddr) -> bool {
    if ip.is_unspecified() {
        return true;
    }
    nix::ifaddrs::getifaddrs().is_ok_and(|mut addrs| {
        addrs.any(|a| {
            a.address.is_some_and(|s| {
                s.as_sockaddr_in().map(|v| IpAddr::V4(v.ip())) == Some(ip)
                    || s.as_sockaddr_in6().map(|v| IpAddr::V6(v.ip())) == Some(ip)
            })
        })
    })
}

/// Whether some process of the node listens on (or holds) `port`: a bind of it fails.
pub fn port_in_use(p: &PortMapping) -> bool {
    let ip: IpAddr = if p.host_ip.is_empty() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        p.host_ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    };
    let addr = std::net::SocketAddr::new(ip, p.host_port as u16);
    match p.protocol {
        Protocol::Tcp => std::net::TcpListener::bind(addr).is_err(),
        Protocol::Udp => std::net::UdpSocket::bind(addr).is_err(),
    }
}

/// An ephemeral port of the node free now for `p`'s address and protocol, and not in `taken`.
pub fn ephemeral_port(p: &PortMapping, taken: &HashSet<(Protocol, i64)>) -> Option<i64> {
    let ip: IpAddr = p.host_ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
    for _ in 0..64 {
        let addr = std::net::SocketAddr::new(ip, 0);
        let port = match p.protocol {
            Protocol::Tcp => std::net::TcpListener::bind(addr)
                .and_then(|l| l.local_addr())
                .ok()?
                .port(),
            Protocol::Udp => std::net::UdpSocket::bind(addr)
                .and_then(|l| l.local_addr())
                .ok()?
                .port(),
        };
        if !taken.contains(&(p.protocol, i64::from(port))) {
            return Some(i64::from(port));
        }
    }
    None
}

/// Whether a container is on a bridge network.
pub fn on_bridge(cfg: &ContainerConfig) -> bool {
    matches!(cfg.network, Network::Bridge(_))
}

/// Tears down every container network recorded under a daemon's state directory and unmounts
/// its namespace directory: for a node taken out of service, and for tests whose daemon and
/// containers were killed (the daemon does this itself at start, see reconcile).
pub fn cleanup_state(state_dir: &std::path::Path, opts: &NetworkOptions) {
    let nv = netavark::Netavark {
        binary: opts.netavark.clone(),
        aardvark: opts.aardvark.clone(),
        config_dir: state_dir.join("netavark"),
    };
    let netns_dir = state_dir.join("netns");
    if let Ok(entries) = std::fs::read_dir(state_dir.join("containers")) {
        for e in entries.flatten() {
            let rec = e.path().join("network.json");
            let Some(r) = std::fs::read(&rec)
                .ok()
                .and_then(|b| serde_json::from_slice::<netavark::NetworkRecord>(&b).ok())
            else {
                continue;
            };
            let ns = netns_dir.join(e.file_name());
            let _ = if inarray_sys::is_netns(&ns) {
                nv.teardown(&ns, &r)
            } else {
                nv.teardown_in_fresh(&ns, &r)
            };
            let _ = inarray_sys::remove_netns(&ns);
            let _ = std::fs::remove_file(&rec);
        }
    }
    if let Ok(entries) = std::fs::read_dir(&netns_dir) {
        for e in entries.flatten() {
            let _ = inarray_sys::remove_netns(&e.path());
        }
    }
    while inarray_sys::is_mount_point(&netns_dir).unwrap_or(false) {
        if nix::mount::umount2(&netns_dir, nix::mount::MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
}

/// Traffic of a container's network interfaces (loopback left out), as its namespace counts it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetUsage {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// [`NetUsage`] from `/proc/<pid>/net/dev` (the network namespace of process `pid`).
pub fn net_usage(pid: i64) -> Option<NetUsage> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    Some(parse_net_dev(&text))
}

fn parse_net_dev(text: &str) -> NetUsage {
    let mut u = NetUsage::default();
    for l in text.lines().skip(2) {
        let Some((name, rest)) = l.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if f.len() >= 10 {
            u.rx_bytes += f[0];
            u.rx_packets += f[1];
            u.tx_bytes += f[8];
            u.tx_packets += f[9];
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<ContainerConfig, String> {
        let c: ContainerConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn container_network_fields_are_checked_naming_the_field() {
        let c = cfg(
            r#"{"image":"b","network":"web","ports":[{"container_port":80}],"aliases":["db"],
            "hostname":"h1","dns":["10.0.0.1"],"extra_hosts":["a.b:10.1.1.1"]}"#,
        )
        .unwrap();
        assert_eq!(c.network, Network::Bridge("web".into()));
        assert_eq!(c.ports[0].protocol, Protocol::Tcp);
        assert_eq!(
            serde_json::to_value(&c.network).unwrap(),
            serde_json::json!("web")
        );
        for (json, want) in [
            (
                r#"{"image":"b","ports":[{"container_port":80}]}"#,
                "ports: need a bridge network",
            ),
            (
                r#"{"image":"b","network":"n","ports":[{"container_port":0}]}"#,
                "ports[0].container_port",
            ),
            (
                r#"{"image":"b","network":"n","ports":[{"container_port":1,"host_port":70000}]}"#,
                "ports[0].host_port",
            ),
            (
                r#"{"image":"b","network":"n","ports":[{"container_port":1,"host_ip":"x"}]}"#,
                "ports[0].host_ip",
            ),
            (
                r#"{"image":"b","network":"n","ports":[{"container_port":1,"host_port":5},{"container_port":2,"host_port":5}]}"#,
                "ports[1].host_port",
            ),
            (r#"{"image":"b","network":"a/b"}"#, "network"),
            (r#"{"image":"b","aliases":["x"]}"#, "aliases"),
            (
                r#"{"image":"b","network":"n","aliases":["-x"]}"#,
                "aliases[0]",
            ),
            (r#"{"image":"b","hostname":""}"#, "hostname"),
            (r#"{"image":"b","dns":["1.2.3"]}"#, "dns[0]"),
            (r#"{"image":"b","extra_hosts":["a:b"]}"#, "extra_hosts[0]"),
        ] {
            let e = cfg(json).unwrap_err();
            assert!(e.starts_with(want), "{json}: {e}");
        }
        // Different addresses may share a port; the any-address clashes with every one.
        let ok = r#"{"image":"b","network":"n","ports":[{"container_port":1,"host_port":5,"host_ip":"127.0.0.1"},
            {"container_port":2,"host_port":5,"host_ip":"127.0.0.2"},{"container_port":2,"host_port":5,"protocol":"udp"}]}"#;
        cfg(ok).unwrap();
        let clash = r#"{"image":"b","network":"n","ports":[{"container_port":1,"host_port":5,"host_ip":"127.0.0.1"},
            {"container_port":2,"host_port":5}]}"#;
        assert!(cfg(clash).unwrap_err().contains("published twice"));
    }

    #[test]
    fn network_specs_are_checked() {
        let spec = |j: &str| serde_json::from_str::<NetworkSpec>(j).unwrap().validate();
        assert!(spec(r#"{"name":"n","subnet":"10.1.2.0/24","gateway":"10.1.2.9"}"#).is_ok());
        for (j, want) in [
            (r#"{"name":"n/x"}"#, "name"),
            (r#"{"name":"none"}"#, "name"),
            (r#"{"name":"n","subnet":"10.1.2.0/31"}"#, "subnet"),
            (r#"{"name":"n","subnet":"fd00::/64"}"#, "subnet"),
            (r#"{"name":"n","gateway":"10.1.2.1"}"#, "gateway"),
            (
                r#"{"name":"n","subnet":"10.1.2.0/24","gateway":"10.1.2.255"}"#,
                "gateway",
            ),
            (r#"{"name":"n","subnet6":"fd00::/64"}"#, "subnet6"),
            (r#"{"name":"n","options":{"mtu":"9"}}"#, "options.mtu"),
        ] {
            assert_eq!(spec(j).unwrap_err().field, want, "{j}");
        }
    }

    #[test]
    fn reads_proc_net_dev() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:     254       3    0    0    0     0          0         0       90       1    0    0    0     0       0          0\n";
        assert_eq!(
            parse_net_dev(text),
            NetUsage {
                rx_bytes: 254,
                rx_packets: 3,
                tx_bytes: 90,
                tx_packets: 1
            }
        );
    }
}
