//! `write_parquet`, exactly once, and an overwrite that never loses the old
//! output. Every block is written by its stage as one part with a
//! deterministic name (`part-00007.parquet`) under the write's staging
//! directory, whole or not at all (locally a temporary file renamed over the
//! part, elsewhere one atomic put), so a retried or rebuilt block replaces
//! its own part.
//!
//! **The manifest is the commit point.** An output is the parts its
//! `_SUCCESS` names. When every block is done the driver moves the parts in
//! under names that carry the run (`part-00007-<run>.parquet`, so the old
//! output's parts stay untouched), then replaces `_SUCCESS` in one step
//! (locally: written aside, fsynced, renamed; elsewhere: one put), then
//! removes what the new manifest does not name. A kill at any moment leaves
//! one complete output, old or new, plus at most parts and staging of a dead
//! run, which the next write removes. Locally, parts, the manifest and the
//! directory are fsynced before the manifest is published.
//!
//! **One writer per destination** (`writer_lock.rs`): a second concurrent
//! write is refused naming the first; a dead writer's lock is taken over.

use futures::TryStreamExt;
use object_store::PutPayload;
use object_store::path::Path;

use crate::error::{Error, Result};
use crate::location::{self, Location};
use crate::writer_lock::{LOCK, WriterLock};

/// The manifest's file name.
pub const MANIFEST: &str = "_SUCCESS";

/// The staging directories' name prefix.
const STAGING_PREFIX: &str = "_temporary-";

/// A destination being written.
pub(crate) struct Sink {
    location: Location,
    staging: Path,
    overwrite: bool,
    run: String,
    lock: WriterLock,
    /// The local destination directory did not exist before this write.
    created_dir: bool,
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

/// The part name of block `index` in the staging directory.
pub(crate) fn part_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

/// The part's name in the destination: the run's id added, so that the new
/// output's parts never replace the old output's before the manifest does.
fn published_name(staged: &str, run: &str) -> String {
    let stem = staged.strip_suffix(".parquet").unwrap_or(staged);
    format!("{stem}-{run}.parquet")
}

/// Whether `name` is a part some run published (`part-00007-<run>.parquet`).
fn is_run_part(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("part-")
        .and_then(|r| r.strip_suffix(".parquet"))
    else {
        return false;
    };
    let Some((index, run)) = rest.split_once('-') else {
        return false;
    };
    index.len() == 5
        && index.bytes().all(|b| b.is_ascii_digit())
        && !run.is_empty()
        && run.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The part names the destination's `_SUCCESS` lists, if it is one of ours.
pub(crate) async fn manifest_parts(location: &Location) -> Result<Option<Vec<String>>> {
    let path = location.path.child(MANIFEST);
    let bytes = match location.store.get(&path).await {
        Ok(found) => found
            .bytes()
            .await
            .map_err(|e| Error::Io(format!("cannot read {}: {e}", location.display_of(&path))))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => {
            return Err(Error::Io(format!(
                "cannot read {}: {e}",
                location.display_of(&path)
            )));
        }
    };
    let Ok(manifest) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Ok(None);
    };
    Ok(manifest["parts"].as_array().map(|parts| {
        parts
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect()
    }))
}

/// What a dead run left in the destination: staging directories, and
/// published parts that no manifest names (the run died before or while it
/// replaced `_SUCCESS`). Another writer's are never among them: the caller
/// holds the destination's lock.
async fn leftovers(location: &Location, own_staging: Option<&Path>) -> Result<Vec<Path>> {
    let listed = manifest_parts(location).await?.unwrap_or_default();
    Ok(list(location, &location.path)
        .await?
        .into_iter()
        .filter(|path| own_staging.is_none_or(|own| !path.prefix_matches(own)))
        .filter(|path| {
            let relative: Vec<_> = path
                .prefix_match(&location.path)
                .into_iter()
                .flatten()
                .collect();
            match relative.as_slice() {
                [name] => is_run_part(name.as_ref()) && !listed.iter().any(|l| l == name.as_ref()),
                [dir, ..] => dir.as_ref().starts_with(STAGING_PREFIX),
                [] => false,
            }
        })
        .collect())
}

/// What a write to `url` would replace, checked without taking it (a CLI
/// checks its output before starting anything): the files there, less what
/// a dead write left. A file as the destination, or a live writer holding
/// it, is an error.
pub async fn files_to_replace(url: &str) -> Result<Vec<String>> {
    let location = location::resolve(url)?;
    if let Some(local) = &location.local {
        if local.is_file() {
            return Err(Error::Invalid(format!(
                "output {url} is a file; the output must be a directory"
            )));
        }
        if !local.exists() {
            return Ok(Vec::new());
        }
    }
    let lock = location.path.child(LOCK);
    if let Some(holder) = crate::writer_lock::holder(&location).await?
        && !holder.is_dead()
    {
        return Err(crate::writer_lock::busy(&location, &holder));
    }
    let dead = leftovers(&location, None).await?;
    Ok(list(&location, &location.path)
        .await?
        .into_iter()
        .filter(|path| *path != lock && !dead.contains(path))
        .map(|path| location.display_of(&path))
        .collect())
}

impl Sink {
    /// Takes the destination before anything runs: its lock (refusing a
    /// second writer), then removes what a dead write left, then checks it
    /// holds nothing else (unless `overwrite`).
    pub(crate) async fn prepare(url: &str, overwrite: bool) -> Result<Self> {
        let location = location::resolve(url)?;
        if let Some(local) = &location.local
            && local.is_file()
        {
            return Err(Error::Invalid(format!(
                "output {url} is a file; write_parquet needs a directory"
            )));
        }
        let run = format!(
            "{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        let staging = location.path.child(format!("{STAGING_PREFIX}{run}"));
        let created_dir = location.local.as_ref().is_some_and(|dir| !dir.exists());
        let lock = WriterLock::take(&location, &run).await?;
        let sink = Self {
            location,
            staging,
            overwrite,
            run,
            lock,
            created_dir,
        };
        match sink.clear_for_writing().await {
            Ok(()) => Ok(sink),
            Err(err) => {
                sink.abort().await;
                Err(err)
            }
        }
    }

    async fn clear_for_writing(&self) -> Result<()> {
        let url = &self.location.display;
        let dead = leftovers(&self.location, Some(&self.staging)).await?;
        if !dead.is_empty() {
            tracing::warn!(
                destination = %url,
                files = dead.len(),
                "removing what a write that died left in the destination"
            );
        }
        for path in &dead {
            self.delete(path).await?;
        }
        self.remove_local_dirs_of(&dead);
        self.remove_empty_local_staging();
        if self.overwrite {
            return Ok(());
        }
        let lock = self.location.path.child(LOCK);
        let existing: Vec<Path> = list(&self.location, &self.location.path)
            .await?
            .into_iter()
            .filter(|path| *path != lock)
            .collect();
        if let Some(first) = existing.first() {
            return Err(Error::Invalid(format!(
                "output {url} is not empty ({} files, e.g. {}); choose an empty destination or \
                 set overwrite to replace it",
                existing.len(),
                self.location.display_of(first)
            )));
        }
        Ok(())
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

    /// Publishes the parts: moves them in under the run's names, replaces
    /// the manifest (the commit point), then retires what it does not name.
    pub(crate) async fn commit(
        self,
        parts: Vec<Part>,
        schema: String,
        skipped_blocks: Vec<String>,
        metadata: serde_json::Value,
    ) -> Result<WriteSummary> {
        let result = self.publish(parts, schema, skipped_blocks, metadata).await;
        self.remove_staging().await;
        self.lock.release(&self.location).await;
        result
    }

    async fn publish(
        &self,
        parts: Vec<Part>,
        schema: String,
        skipped_blocks: Vec<String>,
        metadata: serde_json::Value,
    ) -> Result<WriteSummary> {
        let published = self.move_parts(parts).await?;
        let rows = published.iter().map(|p| p.rows).sum();
        let bytes = published.iter().map(|p| p.bytes).sum();
        let manifest = serde_json::json!({
            "parts": published,
            "rows": rows,
            "bytes": bytes,
            "schema": serde_json::from_str::<serde_json::Value>(&schema).unwrap_or_default(),
            "skipped_blocks": skipped_blocks,
            "metadata": metadata,
        });
        self.write_manifest(serde_json::to_vec_pretty(&manifest).expect("json"))
            .await?;
        self.retire_old(&published).await?;
        Ok(WriteSummary {
            url: self.location.display.clone(),
            parts: published,
            rows,
            bytes,
            skipped_blocks,
        })
    }

    /// Moves the staged parts into the destination under the run's names
    /// (beside the old output's, which no manifest change has retired yet).
    async fn move_parts(&self, parts: Vec<Part>) -> Result<Vec<Part>> {
        let mut published = Vec::with_capacity(parts.len());
        for part in parts {
            let name = published_name(&part.name, &self.run);
            let from = self.staging.child(part.name.as_str());
            let to = self.location.path.child(name.as_str());
            self.location
                .store
                .rename(&from, &to)
                .await
                .map_err(|e| self.io("move a part into", &to, e))?;
            published.push(Part { name, ..part });
        }
        Ok(published)
    }

    /// Replaces `_SUCCESS` in one step. Locally the parts' renames and the
    /// manifest reach the disk first (parts were fsynced when staged).
    async fn write_manifest(&self, manifest: Vec<u8>) -> Result<()> {
        let Some(dir) = &self.location.local else {
            let path = self.location.path.child(MANIFEST);
            return self
                .location
                .store
                .put(&path, PutPayload::from(manifest))
                .await
                .map(drop)
                .map_err(|e| self.io("write", &path, e));
        };
        let local_io = |what: &str, path: &std::path::Path, e: std::io::Error| {
            Error::Io(format!("cannot {what} {}: {e}", path.display()))
        };
        sync_dir(dir).map_err(|e| local_io("sync", dir, e))?;
        let aside = dir.join(format!(".{MANIFEST}.{}", self.run));
        let target = dir.join(MANIFEST);
        let written = (|| {
            let mut file = std::fs::File::create(&aside)?;
            std::io::Write::write_all(&mut file, &manifest)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&aside);
            return Err(local_io("write", &aside, e));
        }
        std::fs::rename(&aside, &target).map_err(|e| local_io("write", &target, e))?;
        sync_dir(dir).map_err(|e| local_io("sync", dir, e))
    }

    /// After the new manifest is in: removes every file it does not name
    /// (the old output's parts and manifest leftovers, and with `overwrite`
    /// whatever else the destination held), but not this write's staging
    /// or lock.
    async fn retire_old(&self, published: &[Part]) -> Result<()> {
        let keep: Vec<Path> = published
            .iter()
            .map(|p| self.location.path.child(p.name.as_str()))
            .chain([
                self.location.path.child(MANIFEST),
                self.location.path.child(LOCK),
            ])
            .collect();
        let old: Vec<Path> = list(&self.location, &self.location.path)
            .await?
            .into_iter()
            .filter(|path| !keep.contains(path) && !path.prefix_matches(&self.staging))
            .collect();
        for path in &old {
            self.delete(path).await?;
        }
        self.remove_local_dirs_of(&old);
        Ok(())
    }

    /// After a failure: removes every staged part (the destination keeps
    /// what it had) and gives the destination up.
    pub(crate) async fn abort(self) {
        self.remove_staging().await;
        self.lock.release(&self.location).await;
        // A refused or failed write leaves no trace: not even the directory
        // it made for its lock (removed only while empty).
        if self.created_dir
            && let Some(dir) = &self.location.local
        {
            let _ = std::fs::remove_dir(dir);
        }
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

    async fn delete(&self, path: &Path) -> Result<()> {
        match self.location.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.io("remove", path, e)),
        }
    }

    /// Locally, dead writes' staging directories that hold no file (a
    /// listing of files does not show them).
    fn remove_empty_local_staging(&self) {
        let Some(local) = &self.location.local else {
            return;
        };
        let own = self.staging.filename().unwrap_or_default();
        for entry in std::fs::read_dir(local).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(STAGING_PREFIX) && name != own {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Locally, the (now empty) directories the removed files were in:
    /// object_store removes files only.
    fn remove_local_dirs_of(&self, removed: &[Path]) {
        let Some(local) = &self.location.local else {
            return;
        };
        for path in removed {
            let relative: Vec<_> = path
                .prefix_match(&self.location.path)
                .into_iter()
                .flatten()
                .collect();
            if relative.len() > 1 {
                let _ = std::fs::remove_dir_all(local.join(relative[0].as_ref()));
            }
        }
    }

    fn io(&self, what: &str, path: &Path, e: object_store::Error) -> Error {
        Error::Io(format!(
            "cannot {what} {}: {e}",
            self.location.display_of(path)
        ))
    }
}

/// Flushes a directory's entries (renames into it) to the disk.
fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Stages parts named `part-NNNNN.parquet` holding `contents`, as a stage would.
    fn stage(sink: &Sink, contents: &[&str]) -> Vec<Part> {
        let staging = std::path::PathBuf::from(sink.staging_url());
        std::fs::create_dir_all(&staging).unwrap();
        contents
            .iter()
            .enumerate()
            .map(|(index, content)| {
                let name = part_name(index);
                std::fs::write(staging.join(&name), content).unwrap();
                Part {
                    name,
                    rows: 1,
                    bytes: content.len() as u64,
                }
            })
            .collect()
    }

    /// What the destination's readers see: its data files' contents.
    async fn read_back(dir: &std::path::Path) -> Vec<String> {
        let files = crate::source::list_files(dir.to_str().unwrap())
            .await
            .unwrap();
        files
            .iter()
            .map(|(_, meta, _)| {
                let name = meta.location.filename().unwrap();
                std::fs::read_to_string(dir.join(name)).unwrap()
            })
            .collect()
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The write dies here: its lock stays, naming a process that is gone.
    fn die(sink: Sink, dir: &std::path::Path) {
        let mut holder = crate::writer_lock::Holder::me(&sink.run);
        holder.pid = u32::MAX - 1;
        std::fs::write(dir.join(LOCK), serde_json::to_vec(&holder).unwrap()).unwrap();
        drop(sink);
    }

    async fn write(dir: &std::path::Path, contents: &[&str], overwrite: bool) -> Result<()> {
        let sink = Sink::prepare(dir.to_str().unwrap(), overwrite).await?;
        let parts = stage(&sink, contents);
        sink.commit(parts, "[]".into(), Vec::new(), serde_json::Value::Null)
            .await
            .map(drop)
    }

    #[tokio::test]
    async fn a_kill_at_any_step_of_an_overwrite_leaves_one_complete_output() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("out");
        write(&dir, &["old 0", "old 1"], false).await.unwrap();
        assert_eq!(read_back(&dir).await, ["old 0", "old 1"]);

        // Killed after moving its parts in, before the manifest: the old
        // output is what the manifest names and what readers read.
        let sink = Sink::prepare(dir.to_str().unwrap(), true).await.unwrap();
        let parts = stage(&sink, &["new 0"]);
        sink.move_parts(parts).await.unwrap();
        die(sink, &dir);
        assert_eq!(read_back(&dir).await, ["old 0", "old 1"]);
        // The next write takes over and removes what the dead one left; the
        // old output still refuses a write without overwrite.
        let refused = write(&dir, &["x"], false).await.unwrap_err().to_string();
        assert!(refused.contains("is not empty"), "{refused}");
        assert_eq!(names(&dir).len(), 3, "{:?}", names(&dir));
        assert_eq!(read_back(&dir).await, ["old 0", "old 1"]);

        // Killed after the new manifest, before retiring the old parts: the
        // new output is what readers read.
        let sink = Sink::prepare(dir.to_str().unwrap(), true).await.unwrap();
        let parts = stage(&sink, &["new 0", "new 1", "new 2"]);
        let published = sink.move_parts(parts).await.unwrap();
        let manifest = serde_json::json!({ "parts": published });
        sink.write_manifest(serde_json::to_vec(&manifest).unwrap())
            .await
            .unwrap();
        die(sink, &dir);
        assert_eq!(read_back(&dir).await, ["new 0", "new 1", "new 2"]);
        // The manifest, the lock, the staging, 2 old parts and 3 new.
        assert_eq!(
            names(&dir).len(),
            8,
            "old parts still there: {:?}",
            names(&dir)
        );

        // A finished overwrite leaves only its own output.
        write(&dir, &["last"], true).await.unwrap();
        assert_eq!(read_back(&dir).await, ["last"]);
        let left = names(&dir);
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left[0] == MANIFEST && is_run_part(&left[1]), "{left:?}");
    }

    #[tokio::test]
    async fn a_second_writer_is_refused_naming_the_first() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("out");
        let first = Sink::prepare(dir.to_str().unwrap(), false).await.unwrap();
        let refused = write(&dir, &["second"], true)
            .await
            .unwrap_err()
            .to_string();
        let pid = std::process::id().to_string();
        assert!(
            refused.contains("is being written by") && refused.contains(&pid),
            "{refused}"
        );
        assert!(
            refused.contains(LOCK),
            "it says what to remove if the writer is gone: {refused}"
        );
        let parts = stage(&first, &["first"]);
        first
            .commit(parts, "[]".into(), Vec::new(), serde_json::Value::Null)
            .await
            .unwrap();
        assert_eq!(read_back(&dir).await, ["first"]);
        assert!(!dir.join(LOCK).exists(), "released at the commit");
    }

    #[test]
    fn run_parts_are_told_from_other_files() {
        assert!(is_run_part("part-00007-1a2b3c.parquet"));
        assert!(!is_run_part("part-00007.parquet"));
        assert!(!is_run_part("part-7-1a2b.parquet"));
        assert!(!is_run_part("part-00007-xyz.parquet"));
        assert!(!is_run_part("notes.txt"));
        assert_eq!(
            published_name("part-00007.parquet", "1a2b"),
            "part-00007-1a2b.parquet"
        );
    }
}
