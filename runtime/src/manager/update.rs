//! Changes to a container's record that need no new container: another name, another restart
//! policy (live resource limits are `engines.rs`'s, next to the engines they are checked against).

use inarray_store::{ContainerRow, StoreError};

use super::{internal, Manager, ManagerError, Result};
use crate::config::{ContainerConfig, RestartPolicy};
use crate::resources::ResourcesUpdate;

/// The record's part of an update (name, policy) on a stored request.
fn apply(cfg: &mut ContainerConfig, u: &ContainerUpdate) {
    if let Some(n) = &u.name {
        cfg.name = Some(n.clone());
    }
    if let Some(p) = &u.restart {
        cfg.restart = *p;
    }
}

/// A change of a container's record (`PATCH /v1/containers/{id}`): what is left out stays.
#[derive(Clone, Debug, Default)]
pub struct ContainerUpdate {
    pub resources: Option<ResourcesUpdate>,
    pub restart: Option<RestartPolicy>,
    pub name: Option<String>,
}

impl Manager {
    /// Applies an update. Everything that can be refused without touching the container (the
    /// name's rules and uniqueness, the policy against `auto_remove`) is checked first, so a
    /// refusal changes nothing; then the limits (live), then the record.
    pub async fn update(&self, key: &str, u: &ContainerUpdate) -> Result<ContainerRow> {
        let row = self.get(key).await?;
        let mut cfg: ContainerConfig =
            serde_json::from_str(&row.spec).map_err(|e| internal("stored spec", e))?;
        apply(&mut cfg, u);
        cfg.validate()?;
        if let Some(name) = &u.name {
            if let Some(other) = self.find_by_name(name).await? {
                if other.id != row.id {
                    return Err(ManagerError::Conflict(format!(
                        "a container named {name} already exists"
                    )));
                }
            }
        }
        let mut row = row;
        if let Some(r) = &u.resources {
            row = self.update_resources(&row.id, r).await?;
        }
        if u.name.is_some() || u.restart.is_some() {
            row = self.change_spec(&row.id, |cfg| apply(cfg, u)).await?;
        }
        Ok(row)
    }

    /// Gives a container another name, in any state (a running one keeps running: its id,
    /// cgroups and files do not change). 409 when another container has the name.
    pub async fn rename(&self, key: &str, name: &str) -> Result<ContainerRow> {
        self.change_spec(key, |cfg| cfg.name = Some(name.to_owned()))
            .await
    }

    /// Replaces a container's restart policy, for its next exits (a running one keeps running).
    pub async fn set_restart_policy(
        &self,
        key: &str,
        policy: RestartPolicy,
    ) -> Result<ContainerRow> {
        self.change_spec(key, |cfg| cfg.restart = policy).await
    }

    /// Applies `change` to the stored request under the container's lock, checks the result as a
    /// create would, and records it (the name column with it).
    async fn change_spec(
        &self,
        key: &str,
        change: impl FnOnce(&mut ContainerConfig),
    ) -> Result<ContainerRow> {
        let row = self.get(key).await?;
        let lock = self.lock_for(&row.id);
        let _g = lock.lock().await;
        let row = self.get(&row.id).await?;
        let mut cfg: ContainerConfig =
            serde_json::from_str(&row.spec).map_err(|e| internal("stored spec", e))?;
        change(&mut cfg);
        cfg.validate()?;
        let name = cfg.name.clone().unwrap_or_else(|| row.name.clone());
        let json = serde_json::to_string(&cfg).map_err(|e| internal("spec json", e))?;
        self.inner
            .store
            .rename_container(&row.id, &name, &json)
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => {
                    ManagerError::Conflict(format!("a container named {name} already exists"))
                }
                e => e.into(),
            })?;
        self.get(&row.id).await
    }
}
