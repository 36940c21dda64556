//! Image rows: what the blob store imported, and the names pointing at it.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{parse_json, Result, Store};

/// An image as recorded; `config` and `layers` are JSON documents owned by the images crate.
#[derive(Clone, Debug)]
pub struct ImageRow {
    pub id: String,
    pub manifest_digest: String,
    pub names: Vec<String>,
    pub config: String,
    pub layers: String,
    pub size: i64,
    pub created_at: DateTime<Utc>,
}

impl ImageRow {
    pub fn config_as<T: DeserializeOwned>(&self) -> Result<T> {
        parse_json("image config", &self.config)
    }
    pub fn layers_as<T: DeserializeOwned>(&self) -> Result<T> {
        parse_json("image layers", &self.layers)
    }
}

pub struct NewImage<'a, C: Serialize, L: Serialize> {
    pub id: &'a str,
    pub manifest_digest: &'a str,
    pub names: &'a [String],
    pub config: &'a C,
    pub layers: &'a L,
    pub size: u64,
}

type ImageTuple = (String, String, String, String, i64, DateTime<Utc>);

impl Store {
    /// Records an image (idempotent on its id) and points `names` at it, moving a name that pointed
    /// at another image (as `docker tag` does).
    pub async fn put_image<C: Serialize, L: Serialize>(
        &self,
        img: NewImage<'_, C, L>,
    ) -> Result<()> {
        let config = serde_json::to_string(img.config).expect("serializable config");
        let layers = serde_json::to_string(img.layers).expect("serializable layers");
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO images (id, manifest_digest, config, layers, size, created_at)
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
        )
        .bind(img.id)
        .bind(img.manifest_digest)
        .bind(config)
        .bind(layers)
        .bind(i64::try_from(img.size).unwrap_or(i64::MAX))
        .bind(Utc::now())
        .execute(&mut *tx)
        .await?;
        for name in img.names {
            sqlx::query(
                "INSERT INTO image_names (name, image_id) VALUES (?, ?)
                 ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
            )
            .bind(name)
            .bind(img.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_images(&self) -> Result<Vec<ImageRow>> {
        let rows: Vec<ImageTuple> = sqlx::query_as(
            "SELECT id, manifest_digest, config, layers, size, created_at FROM images ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        let names: Vec<(String, String)> =
            sqlx::query_as("SELECT name, image_id FROM image_names ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let mut row = image_from_tuple(r);
                row.names = names
                    .iter()
                    .filter(|(_, id)| *id == row.id)
                    .map(|(n, _)| n.clone())
                    .collect();
                row
            })
            .collect())
    }

    /// Finds an image by name ("busybox:latest"), full id ("sha256:…"), or a unique id prefix of at
    /// least 12 hex digits.
    pub async fn find_image(&self, key: &str) -> Result<Option<ImageRow>> {
        let by_name: Option<(String,)> =
            sqlx::query_as("SELECT image_id FROM image_names WHERE name = ?")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        let id = match by_name {
            Some((id,)) => id,
            None => {
                let hex = key.strip_prefix("sha256:").unwrap_or(key);
                if hex.len() < 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Ok(None);
                }
                let ids: Vec<(String,)> = sqlx::query_as("SELECT id FROM images WHERE id LIKE ?")
                    .bind(format!("sha256:{hex}%"))
                    .fetch_all(&self.pool)
                    .await?;
                match ids.as_slice() {
                    [(id,)] => id.clone(),
                    _ => return Ok(None),
                }
            }
        };
        self.image_by_id(&id).await
    }

    pub async fn image_by_id(&self, id: &str) -> Result<Option<ImageRow>> {
        let row: Option<ImageTuple> = sqlx::query_as(
            "SELECT id, manifest_digest, config, layers, size, created_at FROM images WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut row = image_from_tuple(row);
        let names: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM image_names WHERE image_id = ? ORDER BY name")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        row.names = names.into_iter().map(|(n,)| n).collect();
        Ok(Some(row))
    }

    /// Containers (in any state) that use the image.
    pub async fn image_users(&self, id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT name FROM containers WHERE image_id = ?")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }

    /// Removes an image and its names. Returns false when it was not there.
    pub async fn delete_image(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM images WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Points `name` at the image `id` (moving it from another image, as `docker tag` does).
    /// Returns false when there is no such image.
    pub async fn tag_image(&self, name: &str, id: &str) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO image_names (name, image_id) SELECT ?, id FROM images WHERE id = ?
             ON CONFLICT(name) DO UPDATE SET image_id = excluded.image_id",
        )
        .bind(name)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes one name; the image stays.
    pub async fn untag_image(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM image_names WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

fn image_from_tuple(
    (id, manifest_digest, config, layers, size, created_at): ImageTuple,
) -> ImageRow {
    ImageRow {
        id,
        manifest_digest,
        names: Vec::new(),
        config,
        layers,
        size,
        created_at,
    }
}

#[cfg(test)]
mod tests {
    use crate::test_store;

    use super::*;

    #[tokio::test]
    async fn put_find_list_delete() {
        let (_d, store) = test_store().await;
        let id = format!("sha256:{}", "ab".repeat(32));
        let names = vec!["busybox:latest".to_owned(), "tools:1".to_owned()];
        let img = NewImage {
            id: &id,
            manifest_digest: "sha256:00",
            names: &names,
            config: &serde_json::json!({"cmd": ["sh"]}),
            layers: &serde_json::json!([]),
            size: 42,
        };
        store.put_image(img).await.unwrap();
        let found = store.find_image("busybox:latest").await.unwrap().unwrap();
        assert_eq!(found.id, id);
        assert_eq!(found.names, names);
        assert_eq!(found.size, 42);
        assert!(store.find_image(&id).await.unwrap().is_some());
        assert!(store.find_image("abababababab").await.unwrap().is_some());
        assert!(
            store.find_image("abab").await.unwrap().is_none(),
            "short prefixes are not ids"
        );
        assert!(store.find_image("nope:latest").await.unwrap().is_none());
        assert_eq!(store.list_images().await.unwrap().len(), 1);
        // A tag adds a name; tagging a missing image changes nothing.
        assert!(store.tag_image("mine/bb:1", &id).await.unwrap());
        assert_eq!(store.find_image("mine/bb:1").await.unwrap().unwrap().id, id);
        assert!(!store
            .tag_image("x:1", &format!("sha256:{}", "cd".repeat(32)))
            .await
            .unwrap());
        assert!(store.find_image("x:1").await.unwrap().is_none());
        assert!(store.untag_image("mine/bb:1").await.unwrap());
        assert!(store.untag_image("tools:1").await.unwrap());
        assert_eq!(
            store.find_image(&id).await.unwrap().unwrap().names,
            vec!["busybox:latest"]
        );
        assert!(store.delete_image(&id).await.unwrap());
        assert!(
            store.find_image("busybox:latest").await.unwrap().is_none(),
            "names cascade"
        );
    }
}
