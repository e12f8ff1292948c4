//! `write_parquet`, exactly once. Every block is written by its stage as
//! one part with a deterministic name (`part-00007.parquet`) under a staging
//! directory, whole or not at all (locally a temporary file renamed over the
//! part, elsewhere one atomic put), so a retried or rebuilt block replaces
//! its own part. When every block is done the driver moves the parts into place
//! and writes the `_SUCCESS` manifest last; a failed run removes the staging
//! directory and leaves the destination as it was.

use futures::TryStreamExt;
use object_store::PutPayload;
use object_store::path::Path;

use crate::error::{Error, Result};
use crate::location::{self, Location};

/// The manifest's file name.
pub const MANIFEST: &str = "_SUCCESS";

/// A destination being written.
pub(crate) struct Sink {
    location: Location,
    staging: Path,
    overwrite: bool,
}

/// One written part, as its stage reported it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Part {
    /// File name under the destination.
    pub name: String,
    /// Rows in it.
    pub rows: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What `write_parquet` wrote.
#[derive(Clone, Debug)]
pub struct WriteSummary {
    /// The destination as given.
    pub url: String,
    /// The parts, in block order.
    pub parts: Vec<Part>,
    /// Rows written.
    pub rows: u64,
    /// Bytes written (parts only).
    pub bytes: u64,
    /// Blocks skipped because the function failed on them (their source rows).
    pub skipped_blocks: Vec<String>,
}

/// The part name of block `index`.
pub(crate) fn part_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

impl Sink {
    /// Checks the destination before anything runs: it must be empty (or
    /// `overwrite` set).
    pub(crate) async fn prepare(url: &str, overwrite: bool) -> Result<Self> {
        let location = location::resolve(url)?;
        if let Some(local) = &location.local
            && local.is_file()
        {
            return Err(Error::Invalid(format!(
                "output {url} is a file; write_parquet needs a directory"
            )));
        }
        let existing = list(&location, &location.path).await?;
        if !existing.is_empty() && !overwrite {
            return Err(Error::Invalid(format!(
                "output {url} is not empty ({} files, e.g. {}); choose an empty destination or \
                 set overwrite to replace it",
                existing.len(),
                location.display_of(&existing[0])
            )));
        }
        let nonce = format!(
            "{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        let staging = location.path.child(format!("_temporary-{nonce}"));
        Ok(Self {
            location,
            staging,
            overwrite,
        })
    }

    /// Where stages write parts (a URL workers resolve).
    pub(crate) fn staging_url(&self) -> String {
        let relative = self
            .staging
            .filename()
            .expect("a child path has a name")
            .to_string();
        match &self.location.local {
            Some(local) => local.join(relative).display().to_string(),
            None => format!("{}/{relative}", self.location.display),
        }
    }

    /// Publishes the parts: removes what was there (with `overwrite`), moves
    /// each part into place, writes the manifest last.
    pub(crate) async fn commit(
        self,
        parts: Vec<Part>,
        schema: String,
        skipped_blocks: Vec<String>,
        metadata: serde_json::Value,
    ) -> Result<WriteSummary> {
        let store = &self.location.store;
        if self.overwrite {
            for path in list(&self.location, &self.location.path).await? {
                if !path.as_ref().starts_with(self.staging.as_ref()) {
                    store
                        .delete(&path)
                        .await
                        .map_err(|e| self.io("remove", &path, e))?;
                }
            }
        }
        for part in &parts {
            let from = self.staging.child(part.name.as_str());
            let to = self.location.path.child(part.name.as_str());
            store
                .rename(&from, &to)
                .await
                .map_err(|e| self.io("move a part into", &to, e))?;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let bytes = parts.iter().map(|p| p.bytes).sum();
        let manifest = serde_json::json!({
            "parts": parts,
            "rows": rows,
            "bytes": bytes,
            "schema": serde_json::from_str::<serde_json::Value>(&schema).unwrap_or_default(),
            "skipped_blocks": skipped_blocks,
            "metadata": metadata,
        });
        let path = self.location.path.child(MANIFEST);
        store
            .put(
                &path,
                PutPayload::from(serde_json::to_vec_pretty(&manifest).expect("json")),
            )
            .await
            .map_err(|e| self.io("write", &path, e))?;
        self.remove_staging().await;
        Ok(WriteSummary {
            url: self.location.display.clone(),
            parts,
            rows,
            bytes,
            skipped_blocks,
        })
    }

    /// After a failure: removes every staged part (the destination keeps
    /// what it had).
    pub(crate) async fn abort(self) {
        self.remove_staging().await;
    }

    async fn remove_staging(&self) {
        if let Ok(paths) = list(&self.location, &self.staging).await {
            for path in paths {
                let _ = self.location.store.delete(&path).await;
            }
        }
        if let Some(local) = &self.location.local {
            let name = self.staging.filename().unwrap_or_default();
            let _ = std::fs::remove_dir_all(local.join(name));
        }
    }

    fn io(&self, what: &str, path: &Path, e: object_store::Error) -> Error {
        Error::Io(format!(
            "cannot {what} {}: {e}",
            self.location.display_of(path)
        ))
    }
}

/// Every object under `prefix` (a missing local directory is empty).
async fn list(location: &Location, prefix: &Path) -> Result<Vec<Path>> {
    if let Some(local) = &location.local
        && !local.exists()
    {
        return Ok(Vec::new());
    }
    location
        .store
        .list(Some(prefix))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .map_err(|e| Error::Io(format!("cannot list {}: {e}", location.display)))
}
