//! Bridge networks and containers on them: the network objects (SQL rows), a container's
//! address (allocated at its first start, kept across restarts, released with it), its network
//! namespace (a bound nsfs file under `<state>/netns/`, made before the start) set up and torn
//! down through netavark, its published ports, and what reconcile does about all of them.
//! Design: `docs/design/networks.md`.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;

use chrono::Utc;
use inarray_store::{ContainerRow, ContainerState, EndpointRow, NetworkRow, StoreError};

use super::{internal, new_id, Manager, ManagerError, Result};
use crate::config::{ContainerConfig, InvalidField};
use crate::network::netavark::{Attachment, Netavark, NetworkRecord};
use crate::network::{self, files, Cidr, NetworkSpec, PortMapping, Protocol, BRIDGE};

fn invalid(field: &str, reason: impl Into<String>) -> ManagerError {
    ManagerError::Invalid(InvalidField {
        field: field.into(),
        reason: reason.into(),
    })
}

fn long_id() -> Result<String> {
    Ok(format!("{}{}{}", new_id()?, new_id()?, new_id()?)[..64].to_owned())
}

impl Manager {
    fn netavark(&self) -> Netavark {
        let o = &self.inner.opts.networks;
        Netavark {
            binary: o.netavark.clone(),
            aardvark: o.aardvark.clone(),
            config_dir: self.inner.opts.state_dir.join("netavark"),
        }
    }

    fn netns_dir(&self) -> PathBuf {
        self.inner.opts.state_dir.join("netns")
    }

    /// The bound network namespace of a container on a bridge network.
    pub(super) fn netns_path(&self, id: &str) -> PathBuf {
        self.netns_dir().join(id)
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.paths(id).dir.join("network.json")
    }

    fn etc_file(&self, id: &str, name: &str) -> PathBuf {
        self.paths(id).dir.join(format!("etc-{name}"))
    }

    /// The files bound over the container's /etc files (a container on a bridge network).
    pub(super) fn etc_files(&self, id: &str) -> Vec<inarray_shim::protocol::FileBind> {
        ["hosts", "resolv.conf", "hostname"]
            .iter()
            .map(|n| inarray_shim::protocol::FileBind {
                source: self.etc_file(id, n),
                target: format!("/etc/{n}"),
            })
            .collect()
    }

    /// Records a network (`POST /v1/networks`): a subnet of the caller's or a free /24 of the
    /// pool, overlapping no other network and no route of the node (409).
    pub async fn create_network(&self, spec: NetworkSpec) -> Result<NetworkRow> {
        let (subnet, gateway, subnet6) = spec.validate()?;
        let _g = self.inner.net_lock.lock().await;
        let taken = self.inner.store.list_networks().await?;
        let routes = network::host_routes();
        let clash = |c: &Cidr| -> Option<String> {
            if let Some(n) = taken.iter().find(|n| {
                [Some(&n.subnet), n.subnet6.as_ref()]
                    .into_iter()
                    .flatten()
                    .any(|s| s.parse::<Cidr>().is_ok_and(|s| s.overlaps(c)))
            }) {
                return Some(format!("network {} ({})", n.name, n.subnet));
            }
            routes
                .iter()
                .find(|(r, _)| r.overlaps(c))
                .map(|(r, dev)| format!("the node's route {r} (dev {dev})"))
        };
        let subnet = match subnet {
            Some(s) => {
                if let Some(what) = clash(&s) {
                    return Err(ManagerError::Conflict(format!(
                        "subnet: {s} overlaps {what}"
                    )));
                }
                s
            }
            None => {
                let pool = self.inner.opts.networks.pool;
                (0..pool.size() >> 8)
                    .filter_map(|n| pool.subnet(24, n))
                    .find(|c| clash(c).is_none())
                    .ok_or_else(|| {
                        ManagerError::Conflict(format!(
                            "subnet: no free /24 left in the pool {pool}; give one"
                        ))
                    })?
            }
        };
        let id = long_id()?;
        let subnet6 = match (spec.ipv6, subnet6) {
            (false, _) => None,
            (true, Some(s)) => {
                if let Some(what) = clash(&s) {
                    return Err(ManagerError::Conflict(format!(
                        "subnet6: {s} overlaps {what}"
                    )));
                }
                Some(s)
            }
            (true, None) => Some(
                format!("fd{}:{}:{}::/64", &id[..2], &id[2..6], &id[6..10])
                    .parse::<Cidr>()
                    .map_err(|e| internal("ULA subnet", std::io::Error::other(e)))?,
            ),
        };
        let row = NetworkRow {
            name: spec.name.clone(),
            interface: format!("ia{}", &id[..10]),
            id,
            subnet: subnet.to_string(),
            gateway: gateway.unwrap_or_else(|| subnet.nth(1)).to_string(),
            subnet6: subnet6.map(|s| s.to_string()),
            gateway6: subnet6.map(|s| s.nth(1).to_string()),
            internal: spec.internal,
            dns: spec.dns,
            options: serde_json::to_string(&spec.options).map_err(|e| internal("options", e))?,
            builtin: false,
            created_at: Utc::now(),
        };
        self.inner
            .store
            .insert_network(&row)
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => {
                    ManagerError::Conflict(format!("a network named {} already exists", row.name))
                }
                e => e.into(),
            })?;
        self.emit(
            crate::events::LifecycleEvent::new(
                crate::events::EventType::NetworkCreate,
                &row.id,
                &row.name,
            )
            .with("subnet", row.subnet.as_str())
            .with("internal", row.internal),
        )
        .await;
        Ok(row)
    }

    pub async fn list_networks(&self) -> Result<Vec<NetworkRow>> {
        Ok(self.inner.store.list_networks().await?)
    }

    pub async fn network(&self, name: &str) -> Result<NetworkRow> {
        self.inner
            .store
            .network(name)
            .await?
            .ok_or_else(|| ManagerError::NotFound {
                kind: "network",
                key: name.to_owned(),
            })
    }

    /// Removes a network no container is on (built-in `bridge` stays).
    pub async fn delete_network(&self, name: &str) -> Result<()> {
        let row = self.network(name).await?;
        if row.builtin {
            return Err(ManagerError::Conflict(format!(
                "network {name} is built in and cannot be removed"
            )));
        }
        let _g = self.inner.net_lock.lock().await;
        match self.inner.store.delete_network(name).await {
            Ok(_) => {
                self.emit(crate::events::LifecycleEvent::new(
                    crate::events::EventType::NetworkDelete,
                    &row.id,
                    &row.name,
                ))
                .await;
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => Err(ManagerError::Conflict(format!(
                "network {name} has containers on it: delete them first"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Records the built-in `bridge` network if it is not there yet (at start).
    pub(super) async fn ensure_builtin_network(&self) -> Result<()> {
        if self.inner.store.network(BRIDGE).await?.is_some() {
            return Ok(());
        }
        let subnet = self.inner.opts.networks.bridge_subnet;
        let id = long_id()?;
        let row = NetworkRow {
            name: BRIDGE.into(),
            interface: format!("ia{}", &id[..10]),
            id,
            subnet: subnet.to_string(),
            gateway: subnet.nth(1).to_string(),
            subnet6: None,
            gateway6: None,
            internal: false,
            dns: false,
            options: "{}".into(),
            builtin: true,
            created_at: Utc::now(),
        };
        match self.inner.store.insert_network(&row).await {
            Ok(()) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The addresses a container holds (for its view).
    pub async fn endpoints(&self, id: &str) -> Result<Vec<EndpointRow>> {
        Ok(self.inner.store.endpoints_of(id).await?)
    }

    fn published_except(&self, id: &str) -> Vec<(String, PortMapping)> {
        let p = self.inner.published.lock().expect("published");
        p.iter()
            .filter(|(k, _)| k.as_str() != id)
            .flat_map(|(k, v)| v.iter().map(move |m| (k.clone(), m.clone())))
            .collect()
    }

    /// A port conflict of `cfg`'s ports with another container's or a listener of the node.
    fn port_conflict(&self, id: &str, cfg: &ContainerConfig) -> Option<String> {
        let others = self.published_except(id);
        for (i, p) in cfg.ports.iter().enumerate() {
            if let Some((c, _)) = others.iter().find(|(_, q)| q.clashes(p)) {
                return Some(format!(
                    "ports[{i}].host_port: {} is published by container {c}",
                    p.describe()
                ));
            }
            if p.host_port != 0 && network::port_in_use(p) {
                return Some(format!(
                    "ports[{i}].host_port: {} is in use on the node",
                    p.describe()
                ));
            }
        }
        None
    }

    /// At create: the network exists, every host_ip is an address of this node (400), no port
    /// is taken (409); ephemeral ports (host_port 0) are chosen and written into `cfg`.
    pub(super) async fn check_network(&self, cfg: &mut ContainerConfig) -> Result<()> {
        let Some(name) = cfg.network.bridge() else {
            return Ok(());
        };
        match self.inner.store.network(name).await? {
            Some(_) => {}
            None => return Err(invalid("network", format!("no network named {name}"))),
        }
        for (i, p) in cfg.ports.iter().enumerate() {
            if let Ok(ip) = p.host_ip.parse::<IpAddr>() {
                if !network::is_node_address(ip) {
                    return Err(invalid(
                        &format!("ports[{i}].host_ip"),
                        format!("{ip} is not an address of this node"),
                    ));
                }
            }
        }
        if let Some(c) = self.port_conflict("", cfg) {
            return Err(ManagerError::Conflict(c));
        }
        let mut taken: HashSet<(Protocol, i64)> = self
            .published_except("")
            .into_iter()
            .map(|(_, p)| (p.protocol, p.host_port))
            .chain(cfg.ports.iter().map(|p| (p.protocol, p.host_port)))
            .collect();
        for (i, p) in cfg.ports.iter_mut().enumerate() {
            if p.host_port == 0 {
                p.host_port = network::ephemeral_port(p, &taken).ok_or_else(|| {
                    ManagerError::Conflict(format!(
                        "ports[{i}].host_port: no ephemeral port is free"
                    ))
                })?;
                taken.insert((p.protocol, p.host_port));
            }
        }
        Ok(())
    }

    /// Before a start: conflicts of its ports now (409, nothing recorded).
    pub(super) fn check_ports_free(&self, id: &str, cfg: &ContainerConfig) -> Result<()> {
        match self.port_conflict(id, cfg) {
            Some(c) => Err(ManagerError::Conflict(c)),
            None => Ok(()),
        }
    }

    /// The container's address on `net`, allocated now if it has none.
    async fn endpoint(&self, id: &str, net: &NetworkRow) -> Result<EndpointRow> {
        if let Some(e) = self
            .inner
            .store
            .endpoints_of(id)
            .await?
            .into_iter()
            .find(|e| e.network == net.name)
        {
            return Ok(e);
        }
        let subnet: Cidr = net
            .subnet
            .parse()
            .map_err(|e| internal("stored subnet", std::io::Error::other(e)))?;
        let subnet6: Option<Cidr> = net.subnet6.as_deref().and_then(|s| s.parse().ok());
        for _ in 0..8 {
            let used: HashSet<String> = self
                .inner
                .store
                .network_addresses(&net.name)
                .await?
                .into_iter()
                .chain([net.gateway.clone()])
                .chain(net.gateway6.clone())
                .collect();
            let free = |c: &Cidr| {
                (2..c.size().saturating_sub(1).min(1 << 20))
                    .map(|n| c.nth(n))
                    .find(|ip| !used.contains(&ip.to_string()))
            };
            let ip = free(&subnet).ok_or_else(|| {
                ManagerError::Conflict(format!("network {}: no address left", net.name))
            })?;
            let e = EndpointRow {
                container_id: id.to_owned(),
                network: net.name.clone(),
                ip: ip.to_string(),
                ip6: subnet6.as_ref().and_then(free).map(|i| i.to_string()),
            };
            match self.inner.store.insert_endpoint(&e).await {
                Ok(()) => return Ok(e),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ManagerError::Conflict(format!(
            "network {}: no address could be allocated",
            net.name
        )))
    }

    /// Before a launch of a container on a bridge network: its address, its record, its
    /// namespace set up by netavark (kept while it restarts), its /etc files.
    pub(super) async fn net_up(&self, row: &ContainerRow, cfg: &ContainerConfig) -> Result<()> {
        let Some(name) = cfg.network.bridge() else {
            return Ok(());
        };
        let id = row.id.as_str();
        let _g = self.inner.net_lock.lock().await;
        // Checked again under the lock: two starts racing for one port, one wins.
        self.check_ports_free(id, cfg)?;
        let net = self.network(name).await?;
        let ep = self.endpoint(id, &net).await?;
        let record = NetworkRecord {
            container_id: id.to_owned(),
            container_name: row.name.clone(),
            networks: vec![Attachment {
                name: net.name.clone(),
                id: net.id.clone(),
                interface: net.interface.clone(),
                subnet: net.subnet.clone(),
                gateway: net.gateway.clone(),
                subnet6: net.subnet6.clone(),
                gateway6: net.gateway6.clone(),
                internal: net.internal,
                dns: net.dns,
                options: serde_json::from_str(&net.options).unwrap_or_default(),
                ips: std::iter::once(ep.ip.clone())
                    .chain(ep.ip6.clone())
                    .collect(),
                aliases: cfg.aliases.clone(),
            }],
            ports: cfg.ports.clone(),
        };
        let netns = self.netns_path(id);
        let recorded = self.read_record(id);
        if recorded.as_ref() == Some(&record) && inarray_sys::is_netns(&netns) {
            self.publish(id, &record);
            return self.write_etc(id, &row.name, cfg, &net, &ep);
        }
        if recorded.is_some() {
            self.net_down_locked(id).await;
        }
        let dir = self.paths(id).dir;
        std::fs::create_dir_all(&dir)
            .map_err(|e| internal(&format!("cannot create {}", dir.display()), e))?;
        let record_json = serde_json::to_vec_pretty(&record).map_err(|e| internal("record", e))?;
        inarray_sys::write_atomic(&self.record_path(id), &record_json)
            .map_err(|e| internal("cannot write the network record", e))?;
        let nv = self.netavark();
        let dir = self.netns_dir();
        let ns = netns.clone();
        let made = tokio::task::spawn_blocking(move || -> Result<()> {
            inarray_sys::make_shared_dir(&dir)
                .map_err(|e| internal(&format!("cannot prepare {}", dir.display()), e))?;
            if !inarray_sys::is_netns(&ns) {
                inarray_sys::create_netns(&ns)
                    .map_err(|e| internal("cannot create a network namespace", e))?;
            }
            nv.setup(&ns, &record).map_err(|e| ManagerError::Start {
                message: e.to_string(),
                source: Some(e.into()),
            })?;
            Ok(())
        })
        .await
        .map_err(|e| internal("network setup", e))?;
        if let Err(e) = made {
            // Nothing half-made: whatever netavark did is undone.
            self.net_down_locked(id).await;
            return Err(e);
        }
        if let Some(r) = self.read_record(id) {
            self.publish(id, &r);
        }
        self.write_etc(id, &row.name, cfg, &net, &ep)
    }

    fn publish(&self, id: &str, record: &NetworkRecord) {
        self.inner
            .published
            .lock()
            .expect("published")
            .insert(id.to_owned(), record.ports.clone());
    }

    fn write_etc(
        &self,
        id: &str,
        name: &str,
        cfg: &ContainerConfig,
        net: &NetworkRow,
        ep: &EndpointRow,
    ) -> Result<()> {
        let hostname = cfg.hostname.clone().unwrap_or_else(|| id[..12].to_owned());
        let mut names = vec![hostname.as_str(), name];
        names.extend(cfg.aliases.iter().map(String::as_str));
        names.dedup();
        let node = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let dns_ip = net
            .dns
            .then(|| net.gateway.parse::<IpAddr>().ok())
            .flatten();
        let write = |n: &str, s: String| {
            inarray_sys::write_replace(&self.etc_file(id, n), s.as_bytes())
                .map_err(|e| internal(&format!("cannot write {n}"), e))
        };
        write(
            "hosts",
            files::hosts(ep.ip.parse().ok(), &names, &cfg.extra_hosts),
        )?;
        write("resolv.conf", files::resolv_conf(&cfg.dns, dns_ip, &node))?;
        write("hostname", format!("{hostname}\n"))
    }

    fn read_record(&self, id: &str) -> Option<NetworkRecord> {
        std::fs::read(self.record_path(id))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Tears a container's network down (idempotent): netavark's teardown from its record (in a
    /// fresh namespace if the old one is gone, as after a reboot: the firewall rules and
    /// aardvark's entries still go), the namespace file, the record.
    pub(super) async fn net_down(&self, id: &str) {
        let _g = self.inner.net_lock.lock().await;
        self.net_down_locked(id).await;
    }

    async fn net_down_locked(&self, id: &str) {
        self.inner.published.lock().expect("published").remove(id);
        let record = self.read_record(id);
        let netns = self.netns_path(id);
        if record.is_none() && !netns.exists() {
            return;
        }
        let nv = self.netavark();
        let path = self.record_path(id);
        let id2 = id.to_owned();
        let done = tokio::task::spawn_blocking(move || {
            if let Some(r) = &record {
                let torn = if inarray_sys::is_netns(&netns) {
                    nv.teardown(&netns, r)
                } else {
                    nv.teardown_in_fresh(&netns, r)
                };
                if let Err(e) = torn {
                    tracing::warn!(container = %id2, error = %e, "network teardown");
                }
            }
            if let Err(e) = inarray_sys::remove_netns(&netns) {
                tracing::warn!(container = %id2, error = %e, "removing the network namespace");
            }
            let _ = std::fs::remove_file(&path);
        })
        .await;
        if let Err(e) = done {
            tracing::warn!(container = %id, error = %e, "network teardown task");
        }
    }

    /// At start: the built-in network exists; the networks of containers that no longer run
    /// (ended while the daemon was away, or removed) are torn down; the running ones' ports are
    /// known again.
    pub(super) async fn reconcile_networks(&self) -> Result<()> {
        self.ensure_builtin_network().await?;
        let rows = self.inner.store.list_containers(true).await?;
        let live: BTreeMap<&str, &ContainerRow> = rows
            .iter()
            .filter(|r| {
                matches!(
                    r.state,
                    ContainerState::Running | ContainerState::Restarting
                )
            })
            .map(|r| (r.id.as_str(), r))
            .collect();
        let mut ids: HashSet<String> = HashSet::new();
        for dir in [self.inner.containers_root.clone(), self.netns_dir()] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    ids.insert(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        for id in ids {
            let has_record = self.record_path(&id).exists() || self.netns_path(&id).exists();
            if !has_record {
                continue;
            }
            if live.contains_key(id.as_str()) && inarray_sys::is_netns(&self.netns_path(&id)) {
                if let Some(r) = self.read_record(&id) {
                    self.publish(&id, &r);
                }
                continue;
            }
            let lock = self.lock_for(&id);
            let _g = lock.lock().await;
            let now = self.inner.store.container(&id).await?;
            if now.is_some_and(|r| {
                matches!(
                    r.state,
                    ContainerState::Running | ContainerState::Restarting
                )
            }) && inarray_sys::is_netns(&self.netns_path(&id))
            {
                continue;
            }
            self.net_down(&id).await;
        }
        Ok(())
    }
}
