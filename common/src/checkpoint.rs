//! Checkpoint layout in object storage, shared by the workers (which write checkpoints) and the
//! coordinator and samplers (which find and read them).
//!
//! ```text
//! <checkpoints>/ckpt-0000001234/weights.safetensors
//!                              /optimizer.safetensors
//!                              /dataset.json      (preprocessing: the training dataset's manifest)
//!                              /config.toml
//!                              /state.json
//!                              /manifest.json     (written last, create-only: the commit marker)
//! <checkpoints>/latest                             (name of the newest committed checkpoint)
//! ```
//!
//! Rename is not atomic on object stores, so a checkpoint is committed by writing its manifest,
//! which lists every file with its sha256, with a create-only put. Readers ignore directories
//! without a manifest, verify every file against it, and skip (with a warning) a corrupt one.
//!
//! `latest` is a convenience for people and scripts (readers find checkpoints by listing). It
//! only ever moves forward: it is moved by compare-and-swap on its ETag (see [`advance_latest`]),
//! so two writers racing (a job restarted while its old rank 0 still runs) cannot move it back
//! to an older step.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::manifest::DatasetManifest;
use crate::store::{Location, SwapOutcome};

pub const CHECKPOINT_MANIFEST: &str = "manifest.json";
pub const LATEST: &str = "latest";
const PREFIX: &str = "ckpt-";
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The commit marker of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointManifest {
    pub format_version: u32,
    #[serde(flatten)]
    pub meta: CheckpointMeta,
    pub created_unix_ms: i64,
    pub files: Vec<CheckpointFile>,
}

/// A checkpoint read back and verified.
#[derive(Debug, Clone)]
pub struct LoadedCheckpoint {
    /// URL of the checkpoint directory.
    pub url: String,
    pub manifest: CheckpointManifest,
    pub files: BTreeMap<String, Bytes>,
    /// Newer committed checkpoints passed over because they did not verify (truncated or
    /// altered files): each as "URL: reason", newest first.
    pub skipped: Vec<String>,
}

impl LoadedCheckpoint {
    pub fn file(&self, name: &str) -> Result<&Bytes> {
        self.files
            .get(name)
            .ok_or_else(|| Error::InvalidCheckpoint {
                location: self.url.clone(),
                reason: format!("no file `{name}`"),
            })
    }

    /// The training dataset's manifest stored with the checkpoint.
    pub fn dataset(&self) -> Result<DatasetManifest> {
        DatasetManifest::from_json(
            self.file("dataset.json")?,
            &format!("{}/dataset.json", self.url),
        )
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Directory name of the checkpoint at `step` (zero-padded so names sort by step).
pub fn dir_name(step: u64) -> String {
    format!("{PREFIX}{step:010}")
}

/// The step of a checkpoint directory name (`ckpt-0000001234` -> 1234).
pub fn step_of(dir_name: &str) -> Option<u64> {
    dir_name.trim().strip_prefix(PREFIX)?.parse().ok()
}

/// How many times [`advance_latest`] re-reads the pointer after losing a race. Every lost race
/// means another writer moved the pointer forward, so this bounds the number of concurrent
/// writers, not the time spent.
const LATEST_CAS_ATTEMPTS: usize = 16;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What a checkpoint is: where training stood and on which data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Global optimisation step at which the checkpoint was taken.
    pub step: u64,
    /// `vae`, `diffusion` or `done`: `done` checkpoints are complete models.
    pub stage: String,
    pub epoch_in_stage: u64,
    pub job_id: String,
    /// The job's generation that wrote it (a job restarted after losing a worker runs as a
    /// newer generation); 0 in checkpoints written before generations were recorded.
    #[serde(default)]
    pub generation: u32,
    pub dataset_url: String,
    pub dataset_content_hash: String,
}

/// Writes the files, then commits the manifest (create-only), moves `latest` and deletes all but
/// the newest `keep` committed checkpoints. Returns the checkpoint's URL.
pub async fn commit(
    root: &Location,
    meta: CheckpointMeta,
    files: Vec<(String, Bytes)>,
    keep: usize,
) -> Result<String> {
    let step = meta.step;
    let dir = root.join(&dir_name(step));
    if dir.exists(CHECKPOINT_MANIFEST).await? {
        // A damaged checkpoint at this step (training resumed from an older one because this
        // one did not verify) is replaced, and so is one an older generation of the same job
        // wrote (a rank of the world before a restart, which the job has passed by); any other
        // sound one is never overwritten.
        let superseded = |old: &CheckpointManifest| {
            old.meta.job_id == meta.job_id && old.meta.generation < meta.generation
        };
        match load_dir(&dir).await {
            Ok(old) if superseded(&old.manifest) => {
                tracing::warn!(
                    "replacing checkpoint {} of generation {} with generation {}",
                    dir.url(),
                    old.manifest.meta.generation,
                    meta.generation
                );
                dir.delete(CHECKPOINT_MANIFEST).await?;
                root.delete_all(&dir_name(step)).await?;
            }
            Ok(_) => {
                return Err(Error::AlreadyExists {
                    location: dir.display(CHECKPOINT_MANIFEST),
                });
            }
            Err(e) => {
                tracing::warn!("replacing damaged checkpoint {}: {e}", dir.url());
                // Manifest first, as in `prune`: a half-deleted checkpoint must not look committed.
                dir.delete(CHECKPOINT_MANIFEST).await?;
                root.delete_all(&dir_name(step)).await?;
            }
        }
    }
    let mut listed = Vec::with_capacity(files.len());
    for (file, bytes) in &files {
        listed.push(CheckpointFile {
            name: file.clone(),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(bytes),
        });
        dir.put(file, bytes.clone()).await?;
    }
    let manifest = CheckpointManifest {
        format_version: CHECKPOINT_FORMAT_VERSION,
        meta,
        created_unix_ms: now_ms(),
        files: listed,
    };
    let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    if !dir
        .put_if_absent(CHECKPOINT_MANIFEST, Bytes::from(json))
        .await?
    {
        return Err(Error::AlreadyExists {
            location: dir.display(CHECKPOINT_MANIFEST),
        });
    }
    advance_latest(root, step).await?;
    prune(root, keep).await?;
    Ok(dir.url().to_string())
}

/// Moves the `latest` pointer below `root` to the checkpoint at `step`, unless it already names
/// that step or a later one; returns the step it names afterwards.
///
/// Compare-and-swap: read the pointer with its ETag, then write with `PutMode::Update` (S3
/// `If-Match`), or `PutMode::Create` (`If-None-Match: *`) when there is none; a writer that
/// lost the race re-reads and tries again (at most [`LATEST_CAS_ATTEMPTS`] times). A pointer that
/// does not parse is replaced. object_store's local filesystem store cannot write conditionally
/// on a version: there the pointer is compared, then written with a plain (atomic) put, which
/// is enough for the one writer (rank 0) a job has, but two concurrent writers on one local
/// directory could move it back.
pub async fn advance_latest(root: &Location, step: u64) -> Result<u64> {
    let name = dir_name(step);
    for _ in 0..LATEST_CAS_ATTEMPTS {
        let Some(current) = root.get_versioned(LATEST).await? else {
            if root
                .put_if_absent(LATEST, Bytes::from(name.clone()))
                .await?
            {
                return Ok(step);
            }
            continue;
        };
        let current_step = std::str::from_utf8(&current.bytes).ok().and_then(step_of);
        if let Some(current_step) = current_step.filter(|&s| s >= step) {
            return Ok(current_step);
        }
        match root
            .put_if_version(LATEST, Bytes::from(name.clone()), &current.version)
            .await?
        {
            SwapOutcome::Swapped => return Ok(step),
            SwapOutcome::Conflict => continue,
            SwapOutcome::Unsupported => {
                root.put(LATEST, Bytes::from(name.clone())).await?;
                return Ok(step);
            }
        }
    }
    Err(Error::store(
        root.display(LATEST),
        object_store::Error::Precondition {
            path: root.path(LATEST).to_string(),
            source: format!(
                "gave up moving it to {name}: it changed under {LATEST_CAS_ATTEMPTS} attempts in a \
                 row; is another job writing checkpoints to {root}?"
            )
            .into(),
        },
    ))
}

/// Names of committed checkpoint directories below `root`, oldest first.
pub async fn committed(root: &Location) -> Result<Vec<String>> {
    let mut names: Vec<String> = root
        .list("")
        .await?
        .iter()
        .filter_map(|m| {
            let rel = root.relative(&m.location);
            let (dir, file) = rel.split_once('/')?;
            (dir.starts_with(PREFIX) && file == CHECKPOINT_MANIFEST).then(|| dir.to_string())
        })
        .collect();
    names.sort();
    Ok(names)
}

async fn prune(root: &Location, keep: usize) -> Result<()> {
    let names = committed(root).await?;
    if names.len() > keep {
        for old in &names[..names.len() - keep] {
            // Manifest first: a half-deleted checkpoint must not look committed.
            root.join(old).delete(CHECKPOINT_MANIFEST).await?;
            root.delete_all(old).await?;
        }
    }
    Ok(())
}

/// Parses a checkpoint's `manifest.json` (of the checkpoint at `url`, which errors name): the
/// format version must be this build's, and every listed file a plain name inside the
/// checkpoint (no folders, no `..`), so a tampered manifest cannot make a reader fetch objects
/// elsewhere in the store.
pub fn parse_manifest(raw: &[u8], url: &str) -> Result<CheckpointManifest> {
    let invalid = |reason: String| Error::InvalidCheckpoint {
        location: url.to_string(),
        reason,
    };
    let manifest: CheckpointManifest =
        serde_json::from_slice(raw).map_err(|e| invalid(format!("manifest.json: {e}")))?;
    if manifest.format_version != CHECKPOINT_FORMAT_VERSION {
        return Err(invalid(format!(
            "format version {} is not supported",
            manifest.format_version
        )));
    }
    for f in &manifest.files {
        let plain = !f.name.is_empty()
            && f.name != "."
            && f.name != ".."
            && !f.name.contains(['/', '\\', '\0']);
        if !plain {
            return Err(invalid(format!(
                "manifest.json lists `{}`, which is not a file name inside the checkpoint",
                f.name.escape_debug()
            )));
        }
    }
    Ok(manifest)
}

/// Reads and verifies the checkpoint directory at `dir`.
pub async fn load_dir(dir: &Location) -> Result<LoadedCheckpoint> {
    let url = dir.url().to_string();
    let raw = dir
        .get_opt(CHECKPOINT_MANIFEST)
        .await?
        .ok_or_else(|| Error::InvalidCheckpoint {
            location: url.clone(),
            reason: "no manifest.json (not a committed checkpoint)".into(),
        })?;
    let manifest = parse_manifest(&raw, &url)?;
    let mut files = BTreeMap::new();
    for f in &manifest.files {
        let bytes = dir.get(&f.name).await?;
        let sha = sha256_hex(&bytes);
        if sha != f.sha256 || bytes.len() as u64 != f.bytes {
            return Err(Error::InvalidCheckpoint {
                location: url,
                reason: format!(
                    "file `{}` does not match its sha256 in manifest.json",
                    f.name
                ),
            });
        }
        files.insert(f.name.clone(), bytes);
    }
    Ok(LoadedCheckpoint {
        url,
        manifest,
        files,
        skipped: Vec::new(),
    })
}

/// Resolves a user-given checkpoint URL: a checkpoint directory itself, or a checkpoints prefix
/// (then its newest committed checkpoint that verifies; corrupt ones are skipped with a warning).
pub async fn resolve(url: &str) -> Result<LoadedCheckpoint> {
    resolve_at(&Location::parse(url)?).await
}

/// [`resolve`] for a location already opened (for instance with explicit store options).
pub async fn resolve_at(loc: &Location) -> Result<LoadedCheckpoint> {
    if loc.exists(CHECKPOINT_MANIFEST).await? {
        return load_dir(loc).await;
    }
    latest(loc).await?.ok_or_else(|| Error::InvalidCheckpoint {
        location: loc.url().to_string(),
        reason: "no committed checkpoint here; train first (`flowsynth train`)".into(),
    })
}

/// The newest committed checkpoint below `root` that verifies, if any; the damaged newer ones it
/// passed over are in its `skipped`.
pub async fn latest(root: &Location) -> Result<Option<LoadedCheckpoint>> {
    let mut skipped = Vec::new();
    for name in committed(root).await?.iter().rev() {
        match load_dir(&root.join(name)).await {
            Ok(mut c) => {
                c.skipped = skipped;
                return Ok(Some(c));
            }
            Err(e) => {
                tracing::warn!("skipping checkpoint {}: {e}", root.display(name));
                skipped.push(format!("{}: {e}", root.display(name)));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn meta(step: u64) -> CheckpointMeta {
        CheckpointMeta {
            step,
            stage: "vae".into(),
            epoch_in_stage: 1,
            job_id: "j".into(),
            generation: 1,
            dataset_url: "d".into(),
            dataset_content_hash: "h".into(),
        }
    }

    #[tokio::test]
    async fn newest_checkpoint_wins_old_ones_are_pruned_and_corrupt_ones_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = Location::parse(dir.path().to_str().unwrap()).unwrap();
        for step in [10, 20, 30] {
            let files = vec![("w.bin".to_string(), Bytes::from(vec![step as u8; 8]))];
            commit(&root, meta(step), files, 2).await.unwrap();
        }
        assert_eq!(
            committed(&root).await.unwrap(),
            vec![dir_name(20), dir_name(30)]
        );
        assert_eq!(resolve(root.url()).await.unwrap().manifest.meta.step, 30);
        // Corrupt the newest: the reader falls back to the previous one.
        root.join(&dir_name(30))
            .put("w.bin", Bytes::from_static(b"garbage!"))
            .await
            .unwrap();
        let c = resolve(root.url()).await.unwrap();
        assert_eq!(c.manifest.meta.step, 20);
        assert_eq!(c.file("w.bin").unwrap().as_ref(), &[20u8; 8]);
        // A directory without manifest is not a checkpoint.
        root.join(&dir_name(40))
            .put("w.bin", Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(resolve(root.url()).await.unwrap().manifest.meta.step, 20);
        // A specific checkpoint URL resolves to itself.
        let url = root.display(&dir_name(20));
        assert_eq!(resolve(&url).await.unwrap().manifest.meta.step, 20);
    }

    #[tokio::test]
    async fn committing_the_same_step_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = Location::parse(dir.path().to_str().unwrap()).unwrap();
        commit(&root, meta(1), vec![], 3).await.unwrap();
        let err = commit(&root, meta(1), vec![], 3).await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_newer_generation_replaces_an_older_ones_checkpoint_and_never_the_reverse() {
        let dir = tempfile::tempdir().unwrap();
        let root = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let at = |generation: u32, job: &str| CheckpointMeta {
            generation,
            job_id: job.into(),
            ..meta(7)
        };
        let files = |b: u8| vec![("w.bin".to_string(), Bytes::from(vec![b; 4]))];
        commit(&root, at(1, "j"), files(1), 3).await.unwrap();
        // The restarted job reaches step 7 again: its checkpoint wins.
        commit(&root, at(2, "j"), files(2), 3).await.unwrap();
        let c = resolve(root.url()).await.unwrap();
        assert_eq!(c.manifest.meta.generation, 2);
        assert_eq!(c.file("w.bin").unwrap().as_ref(), &[2u8; 4]);
        // The stale generation (or another job on the same location) cannot take it back.
        for stale in [at(1, "j"), at(2, "j"), at(3, "other")] {
            let err = commit(&root, stale, files(9), 3).await.unwrap_err();
            assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        }
        assert_eq!(
            resolve(root.url()).await.unwrap().manifest.meta.generation,
            2
        );
    }
}
