//! Object-store locations: one type for "a prefix in some store", whatever the backend.
//!
//! A location is given by the user as a URL (`s3://bucket/prefix`, `gs://...`, `az://...`,
//! `file:///abs/dir`) or as a plain local path (`out/nsl`, `/data/x`). Local paths use the
//! file-backed store, the embedded default. S3 credentials and endpoint come from the usual AWS
//! environment variables (`AWS_ENDPOINT_URL` / `AWS_ENDPOINT`, `AWS_ALLOW_HTTP=true` for a local
//! server).

use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart,
};
use url::Url;

use crate::error::{Error, Result};

/// Objects larger than this are uploaded with multipart upload.
pub const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;

/// A prefix inside an object store.
#[derive(Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The URL as the user would write it (used in messages and to re-open the location).
    url: String,
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Location").field("url", &self.url).finish()
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

fn has_scheme(s: &str) -> bool {
    match s.find("://") {
        Some(i) => s[..i]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.'),
        None => false,
    }
}

impl Location {
    /// Opens a location from a URL or local path. Local directories are created if missing.
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(Error::InvalidUrl {
                url: spec.into(),
                reason: "empty location".into(),
            });
        }
        if !has_scheme(spec) {
            return Self::local(FsPath::new(spec));
        }
        let url = Url::parse(spec).map_err(|e| Error::InvalidUrl {
            url: spec.into(),
            reason: e.to_string(),
        })?;
        match url.scheme() {
            "file" => {
                let path = url.to_file_path().map_err(|_| Error::InvalidUrl {
                    url: spec.into(),
                    reason: "file:// URLs must hold an absolute path".into(),
                })?;
                Self::local(&path)
            }
            "s3" | "s3a" => {
                let bucket = url.host_str().ok_or_else(|| Error::InvalidUrl {
                    url: spec.into(),
                    reason: "missing bucket name".into(),
                })?;
                let mut builder =
                    object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                // `AWS_ENDPOINT_URL` is the name the AWS CLI and SDKs use; object_store reads
                // `AWS_ENDPOINT`. Accept both.
                if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
                    builder = builder.with_endpoint(endpoint);
                }
                if std::env::var("AWS_DEFAULT_REGION").is_err()
                    && std::env::var("AWS_REGION").is_err()
                {
                    builder = builder.with_region("us-east-1");
                } else if let Ok(region) = std::env::var("AWS_REGION") {
                    builder = builder.with_region(region);
                }
                let store = builder.build().map_err(|e| Error::InvalidUrl {
                    url: spec.into(),
                    reason: e.to_string(),
                })?;
                Ok(Self {
                    store: Arc::new(store),
                    prefix: Path::from(url.path().trim_matches('/')),
                    url: spec.trim_end_matches('/').to_string(),
                })
            }
            _ => {
                let env: Vec<(String, String)> = std::env::vars()
                    .filter(|(k, _)| k.starts_with("GOOGLE_") || k.starts_with("AZURE_"))
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect();
                let (store, prefix) =
                    object_store::parse_url_opts(&url, env).map_err(|e| Error::InvalidUrl {
                        url: spec.into(),
                        reason: e.to_string(),
                    })?;
                Ok(Self {
                    store: Arc::from(store),
                    prefix,
                    url: spec.trim_end_matches('/').to_string(),
                })
            }
        }
    }

    fn local(path: &FsPath) -> Result<Self> {
        std::fs::create_dir_all(path)
            .map_err(|e| Error::io(format!("creating directory {}", path.display()), e))?;
        let abs = std::fs::canonicalize(path)
            .map_err(|e| Error::io(format!("resolving {}", path.display()), e))?;
        let store =
            LocalFileSystem::new_with_prefix(&abs).map_err(|e| Error::store(abs.display(), e))?;
        Ok(Self {
            store: Arc::new(store.with_automatic_cleanup(true)),
            prefix: Path::default(),
            url: abs.display().to_string(),
        })
    }

    /// The local directory behind this location, when it is file-backed.
    pub fn local_dir(&self) -> Option<PathBuf> {
        if has_scheme(&self.url) {
            None
        } else {
            Some(PathBuf::from(&self.url))
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The object path of `rel` below this prefix.
    pub fn path(&self, rel: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    /// A sub-location `rel` below this one (same store).
    pub fn join(&self, rel: &str) -> Location {
        let rel = rel.trim_matches('/');
        Location {
            store: Arc::clone(&self.store),
            prefix: self.path(rel),
            url: format!("{}/{}", self.url.trim_end_matches('/'), rel),
        }
    }

    /// `url/rel`, for messages.
    pub fn display(&self, rel: &str) -> String {
        format!(
            "{}/{}",
            self.url.trim_end_matches('/'),
            rel.trim_matches('/')
        )
    }

    /// Reads a whole object.
    pub async fn get(&self, rel: &str) -> Result<Bytes> {
        let r = self
            .store
            .get(&self.path(rel))
            .await
            .map_err(|e| Error::store(self.display(rel), e))?;
        r.bytes()
            .await
            .map_err(|e| Error::store(self.display(rel), e))
    }

    /// Reads a whole object, or `None` if it does not exist.
    pub async fn get_opt(&self, rel: &str) -> Result<Option<Bytes>> {
        match self.store.get(&self.path(rel)).await {
            Ok(r) => Ok(Some(
                r.bytes()
                    .await
                    .map_err(|e| Error::store(self.display(rel), e))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store(self.display(rel), e)),
        }
    }

    pub async fn exists(&self, rel: &str) -> Result<bool> {
        match self.store.head(&self.path(rel)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::store(self.display(rel), e)),
        }
    }

    /// Writes (or overwrites) an object; large objects go up in parts.
    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(rel);
        if bytes.len() > MULTIPART_THRESHOLD {
            let upload = self
                .store
                .put_multipart(&path)
                .await
                .map_err(|e| Error::store(self.display(rel), e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024);
            w.write(&bytes);
            w.finish()
                .await
                .map_err(|e| Error::store(self.display(rel), e))?;
        } else {
            self.store
                .put(&path, PutPayload::from_bytes(bytes))
                .await
                .map_err(|e| Error::store(self.display(rel), e))?;
        }
        Ok(())
    }

    /// Writes an object only if none exists at that path (the commit primitive: a manifest
    /// written this way appears once, whole). Returns `false` when the object already existed.
    pub async fn put_if_absent(&self, rel: &str, bytes: Bytes) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(rel), PutPayload::from_bytes(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(Error::store(self.display(rel), e)),
        }
    }

    /// Lists every object below `rel` (recursively).
    pub async fn list(&self, rel: &str) -> Result<Vec<ObjectMeta>> {
        let prefix = self.path(rel);
        self.store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| Error::store(self.display(rel), e))
    }

    /// The object name relative to this location's prefix.
    pub fn relative(&self, path: &Path) -> String {
        let full = path.as_ref();
        let pre = self.prefix.as_ref();
        if pre.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(pre)
                .map(|s| s.trim_start_matches('/').to_string())
                .unwrap_or_else(|| full.to_string())
        }
    }

    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self.store.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store(self.display(rel), e)),
        }
    }

    /// Deletes every object below `rel`.
    pub async fn delete_all(&self, rel: &str) -> Result<()> {
        for meta in self.list(rel).await? {
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::store(meta.location, e)),
            }
        }
        Ok(())
    }
}

/// Runs an async store operation from synchronous code (conversion, training threads).
///
/// Uses the ambient Tokio runtime when there is one (from a blocking-capable context), else a
/// small current-thread runtime.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => tokio::task::block_in_place(|| handle.block_on(fut)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(fut))
            .unwrap_or_else(|e| panic!("cannot start a Tokio runtime: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_location_round_trips_and_create_only_put_refuses_second_write() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::parse(dir.path().join("a/b").to_str().unwrap()).unwrap();
        loc.put("x/y.txt", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(
            loc.get("x/y.txt").await.unwrap(),
            Bytes::from_static(b"hello")
        );
        assert!(loc.get_opt("nope").await.unwrap().is_none());
        assert!(
            loc.put_if_absent("m.json", Bytes::from_static(b"1"))
                .await
                .unwrap()
        );
        assert!(
            !loc.put_if_absent("m.json", Bytes::from_static(b"2"))
                .await
                .unwrap()
        );
        assert_eq!(loc.get("m.json").await.unwrap(), Bytes::from_static(b"1"));
        let sub = loc.join("x");
        let names: Vec<String> = sub
            .list("")
            .await
            .unwrap()
            .iter()
            .map(|m| sub.relative(&m.location))
            .collect();
        assert_eq!(names, vec!["y.txt".to_string()]);
        loc.delete_all("x").await.unwrap();
        assert!(!loc.exists("x/y.txt").await.unwrap());
    }

    #[test]
    fn file_url_and_plain_path_open_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let a = Location::parse(&url).unwrap();
        let b = Location::parse(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(a.url(), b.url());
        assert!(a.local_dir().is_some());
    }

    #[test]
    fn unknown_scheme_is_a_clear_error() {
        let err = Location::parse("ftp://host/x").unwrap_err().to_string();
        assert!(err.contains("ftp://host/x"), "{err}");
    }
}
