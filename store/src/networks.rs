//! Bridge networks and the addresses containers hold on them (`networks`,
//! `network_endpoints`, migration 0013).

use chrono::{DateTime, Utc};

use crate::{unique_conflict, Result, Store, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkRow {
    pub name: String,
    pub id: String,
    pub interface: String,
    pub subnet: String,
    pub gateway: String,
    pub subnet6: Option<String>,
    pub gateway6: Option<String>,
    pub internal: bool,
    pub dns: bool,
    /// A JSON object of string options.
    pub options: String,
    pub builtin: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRow {
    pub container_id: String,
    pub network: String,
    pub ip: String,
    pub ip6: Option<String>,
}

type Tuple = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    bool,
    bool,
    String,
    bool,
    DateTime<Utc>,
);

const COLUMNS: &str = "name, id, interface, subnet, gateway, subnet6, gateway6, internal, dns, options, builtin, created_at";

fn row(t: Tuple) -> NetworkRow {
    NetworkRow {
        name: t.0,
        id: t.1,
        interface: t.2,
        subnet: t.3,
        gateway: t.4,
        subnet6: t.5,
        gateway6: t.6,
        internal: t.7,
        dns: t.8,
        options: t.9,
        builtin: t.10,
        created_at: t.11,
    }
}

fn is_foreign_key(e: &sqlx::Error) -> bool {
    // SQLITE_CONSTRAINT_FOREIGNKEY (787)
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("787"))
}

impl Store {
    /// Records a network; a taken name, id, interface or subnet is a conflict.
    pub async fn insert_network(&self, n: &NetworkRow) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO networks ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&n.name)
        .bind(&n.id)
        .bind(&n.interface)
        .bind(&n.subnet)
        .bind(&n.gateway)
        .bind(&n.subnet6)
        .bind(&n.gateway6)
        .bind(n.internal)
        .bind(n.dns)
        .bind(&n.options)
        .bind(n.builtin)
        .bind(n.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| unique_conflict(e, "network", &n.name))?;
        Ok(())
    }

    pub async fn list_networks(&self) -> Result<Vec<NetworkRow>> {
        let rows: Vec<Tuple> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM networks ORDER BY name"))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(row).collect())
    }

    pub async fn network(&self, name: &str) -> Result<Option<NetworkRow>> {
        let r: Option<Tuple> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM networks WHERE name = ?"))
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(r.map(row))
    }

    /// Removes a network; false when there was none. A network some container holds an
    /// address on is a conflict (`network in use`).
    pub async fn delete_network(&self, name: &str) -> Result<bool> {
        match sqlx::query("DELETE FROM networks WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
        {
            Ok(done) => Ok(done.rows_affected() > 0),
            Err(e) if is_foreign_key(&e) => Err(StoreError::Conflict {
                kind: "a container on network",
                key: name.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The addresses a container holds, by network name.
    pub async fn endpoints_of(&self, container_id: &str) -> Result<Vec<EndpointRow>> {
        let rows: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT container_id, network, ip, ip6 FROM network_endpoints WHERE container_id = ? ORDER BY network",
        )
        .bind(container_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(container_id, network, ip, ip6)| EndpointRow {
                container_id,
                network,
                ip,
                ip6,
            })
            .collect())
    }

    /// Every address taken on a network (IPv4 and IPv6).
    pub async fn network_addresses(&self, network: &str) -> Result<Vec<String>> {
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT ip, ip6 FROM network_endpoints WHERE network = ?")
                .bind(network)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .flat_map(|(a, b)| std::iter::once(a).chain(b))
            .collect())
    }

    /// Records an address; one already taken on that network is a conflict.
    pub async fn insert_endpoint(&self, e: &EndpointRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO network_endpoints (container_id, network, ip, ip6) VALUES (?, ?, ?, ?)",
        )
        .bind(&e.container_id)
        .bind(&e.network)
        .bind(&e.ip)
        .bind(&e.ip6)
        .execute(&self.pool)
        .await
        .map_err(|err| unique_conflict(err, "address", &e.ip))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, subnet: &str) -> NetworkRow {
        NetworkRow {
            name: name.into(),
            id: format!("{name:0>64}"),
            interface: format!("ia-{name}"),
            subnet: subnet.into(),
            gateway: "10.0.0.1".into(),
            subnet6: None,
            gateway6: None,
            internal: false,
            dns: true,
            options: "{}".into(),
            builtin: false,
            created_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn networks_round_trip_and_conflict() {
        let (_d, s) = crate::test_store().await;
        s.insert_network(&net("a", "10.0.0.0/24")).await.unwrap();
        assert!(matches!(
            s.insert_network(&net("a", "10.0.1.0/24")).await,
            Err(StoreError::Conflict { .. })
        ));
        let mut b = net("b", "10.0.0.0/24");
        b.id = "x".repeat(64);
        assert!(matches!(
            s.insert_network(&b).await,
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(s.list_networks().await.unwrap().len(), 1);
        assert_eq!(s.network("a").await.unwrap().unwrap().subnet, "10.0.0.0/24");
        assert!(s.delete_network("a").await.unwrap());
        assert!(!s.delete_network("a").await.unwrap());
    }
}
