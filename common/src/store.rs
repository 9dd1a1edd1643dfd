//! Object-store locations: one type for "a prefix in some store", whatever the backend.
//!
//! A location is given by the user as a URL (`s3://bucket/prefix`, `gs://...`, `az://...`,
//! `file:///abs/dir`) or as a plain local path (`out/nsl`, `/data/x`). Local paths use the
//! file-backed store, the embedded default. Credentials and endpoints come from
//! [`StoreOptions`]: by default the usual environment variables (for S3 `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT` and
//! `AWS_ALLOW_HTTP=true` for a local server such as moto or MinIO).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
    WriteMultipart,
};
use url::Url;

use crate::error::{Error, Result};

/// Objects larger than this are uploaded with multipart upload.
pub const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;

/// Size of the parts of a multipart upload (S3 wants at least 5 MiB for all but the last).
const MULTIPART_CHUNK: usize = 8 * 1024 * 1024;

/// Region used for S3 when neither `AWS_REGION` nor `AWS_DEFAULT_REGION` is given.
pub const DEFAULT_S3_REGION: &str = "us-east-1";

/// Seconds a remote store request is retried (with exponential backoff) before its error
/// stands: an S3 server restarting, a network blip or a throttled bucket do not fail a job.
/// `FLOWSYNTH_STORE_RETRY_TIMEOUT` sets it.
pub const DEFAULT_RETRY_TIMEOUT_SECS: f64 = 180.0;

/// Retries of one request at most (`FLOWSYNTH_STORE_MAX_RETRIES`). High enough that the
/// retry timeout is what ends the retries: object_store's own default (10 retries, from 100 ms
/// apart) gives up after about 3 s, which a store restarting outlasts (measured in
/// `tests/s3.rs`).
pub const DEFAULT_MAX_RETRIES: usize = 100;

/// The retry settings flowsynth adds to object_store's (`NAME = value`, as the others).
const RETRY_TIMEOUT_VAR: &str = "FLOWSYNTH_STORE_RETRY_TIMEOUT";
const MAX_RETRIES_VAR: &str = "FLOWSYNTH_STORE_MAX_RETRIES";

/// Settings for opening remote locations, as `NAME = value` pairs named like the environment
/// variables they stand for: `AWS_*` for S3 (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`, ...), `GOOGLE_*` for GCS, `AZURE_*`
/// for Azure; `FLOWSYNTH_STORE_RETRY_TIMEOUT` (seconds) and `FLOWSYNTH_STORE_MAX_RETRIES` bound
/// the retries of every remote request. Names object_store does not know are ignored.
///
/// [`Location::parse`] reads them from the process environment ([`StoreOptions::from_env`]); a
/// program that talks to several stores, or a test that must not change its process's
/// environment (tests run in parallel threads), builds its own and calls
/// [`Location::parse_with`]. The values are never printed (`Debug` shows the names only).
#[derive(Clone, Default)]
pub struct StoreOptions {
    vars: BTreeMap<String, String>,
}

impl StoreOptions {
    /// The `AWS_*`, `GOOGLE_*` and `AZURE_*` variables of the process environment.
    pub fn from_env() -> Self {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| Self::is_store_var(k))
            .collect()
    }

    /// Adds (or replaces) one setting.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// The value of one setting.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Whether a store client uses the variable `name`: one of object_store's configuration
    /// keys for S3 (`AWS_*`), GCS (`GOOGLE_*`) or Azure (`AZURE_*`). A deployment checks the
    /// variables it sets with this (a misspelt key would be ignored without a word).
    pub fn applies(name: &str) -> bool {
        let key = name.to_ascii_lowercase();
        if name == RETRY_TIMEOUT_VAR || name == MAX_RETRIES_VAR {
            true
        } else if name.starts_with("AWS_") {
            key.parse::<AmazonS3ConfigKey>().is_ok()
        } else if name.starts_with("GOOGLE_") {
            key.parse::<object_store::gcp::GoogleConfigKey>().is_ok()
        } else if name.starts_with("AZURE_") {
            key.parse::<object_store::azure::AzureConfigKey>().is_ok()
        } else {
            false
        }
    }

    fn is_store_var(name: &str) -> bool {
        ["AWS_", "GOOGLE_", "AZURE_", "FLOWSYNTH_STORE_"]
            .iter()
            .any(|p| name.starts_with(p))
    }

    /// How remote requests are retried: exponential backoff from 100 ms (doubling, at most 15 s
    /// apart, with jitter) until [`DEFAULT_MAX_RETRIES`] retries or
    /// [`DEFAULT_RETRY_TIMEOUT_SECS`], unless set. Requests that did not reach the server
    /// (refused or reset connections) and server errors (5xx) are retried; others are not.
    pub fn retry(&self) -> Result<object_store::RetryConfig> {
        let bad = |name: &str, value: &str, what: &str| Error::Config {
            location: name.to_string(),
            message: format!("`{value}`: {what}"),
        };
        let mut retry = object_store::RetryConfig {
            max_retries: DEFAULT_MAX_RETRIES,
            retry_timeout: std::time::Duration::from_secs_f64(DEFAULT_RETRY_TIMEOUT_SECS),
            ..Default::default()
        };
        if let Some(v) = self.get(RETRY_TIMEOUT_VAR) {
            let secs: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s <= 3600.0)
                .ok_or_else(|| bad(RETRY_TIMEOUT_VAR, v, "give seconds from 0 to 3600"))?;
            retry.retry_timeout = std::time::Duration::from_secs_f64(secs);
        }
        if let Some(v) = self.get(MAX_RETRIES_VAR) {
            retry.max_retries = v
                .trim()
                .parse()
                .ok()
                .filter(|n| *n <= 1000)
                .ok_or_else(|| bad(MAX_RETRIES_VAR, v, "give a count from 0 to 1000"))?;
        }
        Ok(retry)
    }

    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.vars
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The settings named `PREFIX*` that are configuration keys `K` of one backend, in name
    /// order (unknown names are skipped).
    fn keys<'a, K: std::str::FromStr>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (K, &'a str)> + 'a {
        self.with_prefix(prefix)
            .filter_map(|(name, value)| Some((name.to_ascii_lowercase().parse().ok()?, value)))
    }

    /// An S3 client for `bucket`. Names sort, so `AWS_ENDPOINT_URL` (the AWS CLI's name) wins
    /// over `AWS_ENDPOINT` (object_store's) and `AWS_REGION` over `AWS_DEFAULT_REGION`.
    fn s3_builder(&self, bucket: &str) -> AmazonS3Builder {
        let mut builder = AmazonS3Builder::new().with_bucket_name(bucket);
        for (key, value) in self.keys::<AmazonS3ConfigKey>("AWS_") {
            builder = builder.with_config(key, value);
        }
        if self.get("AWS_REGION").is_none() && self.get("AWS_DEFAULT_REGION").is_none() {
            builder = builder.with_region(DEFAULT_S3_REGION);
        }
        builder
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for StoreOptions {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            vars: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("names", &self.vars.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// An object's content together with the version it was read at, for compare-and-swap.
#[derive(Debug, Clone)]
pub struct Versioned {
    pub bytes: Bytes,
    /// ETag (and version id, where the store has versioning) of what was read.
    pub version: UpdateVersion,
}

/// What [`Location::put_if_version`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapOutcome {
    /// The object still had the expected version and now holds the new bytes.
    Swapped,
    /// The object changed (or vanished) since it was read; nothing was written.
    Conflict,
    /// The store cannot write conditionally on a version (object_store's local filesystem
    /// store); nothing was written.
    Unsupported,
}

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

/// The path inside the store that a URL names (its bucket or container taken off as
/// object_store does).
fn url_prefix(url: &Url) -> std::result::Result<Path, String> {
    object_store::ObjectStoreScheme::parse(url)
        .map(|(_, path)| path)
        .map_err(|e| e.to_string())
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
    /// Opens a location from a URL or local path, with credentials and endpoints from the
    /// process environment. Local directories are created if missing.
    pub fn parse(spec: &str) -> Result<Self> {
        Self::parse_with(spec, &StoreOptions::from_env())
    }

    /// Opens a location from a URL or local path with explicit store settings; the process
    /// environment is not read. Local directories are created if missing.
    pub fn parse_with(spec: &str, options: &StoreOptions) -> Result<Self> {
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
        let invalid = |reason: String| Error::InvalidUrl {
            url: spec.into(),
            reason,
        };
        let url = Url::parse(spec).map_err(|e| invalid(e.to_string()))?;
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = match url.scheme() {
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|_| invalid("file:// URLs must hold an absolute path".into()))?;
                return Self::local(&path);
            }
            "s3" | "s3a" => {
                let bucket = url
                    .host_str()
                    .ok_or_else(|| invalid("missing bucket name".into()))?;
                let store = options
                    .s3_builder(bucket)
                    .with_retry(options.retry()?)
                    .build()
                    .map_err(|e| invalid(e.to_string()))?;
                let prefix = Path::from_url_path(url.path().trim_matches('/'))
                    .map_err(|e| invalid(e.to_string()))?;
                (Arc::new(store), prefix)
            }
            "gs" => {
                let mut builder = GoogleCloudStorageBuilder::new()
                    .with_url(spec)
                    .with_retry(options.retry()?);
                for (key, value) in options.keys::<GoogleConfigKey>("GOOGLE_") {
                    builder = builder.with_config(key, value);
                }
                let store = builder.build().map_err(|e| invalid(e.to_string()))?;
                (Arc::new(store), url_prefix(&url).map_err(invalid)?)
            }
            "az" | "adl" | "azure" | "abfs" | "abfss" => {
                let mut builder = MicrosoftAzureBuilder::new()
                    .with_url(spec)
                    .with_retry(options.retry()?);
                for (key, value) in options.keys::<AzureConfigKey>("AZURE_") {
                    builder = builder.with_config(key, value);
                }
                let store = builder.build().map_err(|e| invalid(e.to_string()))?;
                (Arc::new(store), url_prefix(&url).map_err(invalid)?)
            }
            _ => {
                let opts = options
                    .with_prefix("GOOGLE_")
                    .chain(options.with_prefix("AZURE_"))
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()));
                let (store, prefix) =
                    object_store::parse_url_opts(&url, opts).map_err(|e| invalid(e.to_string()))?;
                (Arc::from(store), prefix)
            }
        };
        Ok(Self {
            store,
            prefix,
            url: spec.trim_end_matches('/').to_string(),
        })
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

    /// Reads bytes `range` of an object, failing if the object no longer has the ETag `e_tag`
    /// (when given): a file read piece by piece must not change between the pieces.
    pub async fn get_range(
        &self,
        rel: &str,
        range: std::ops::Range<u64>,
        e_tag: Option<&str>,
    ) -> Result<Bytes> {
        let opts = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(range)),
            if_match: e_tag.map(str::to_string),
            ..Default::default()
        };
        let r = self
            .store
            .get_opts(&self.path(rel), opts)
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
            // `finish` aborts the upload (deleting the parts sent) when a part fails.
            let mut w = WriteMultipart::new_with_chunk_size(upload, MULTIPART_CHUNK);
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

    /// Reads a whole object with its version (ETag), or `None` if it does not exist: the read
    /// half of a compare-and-swap with [`Location::put_if_version`].
    pub async fn get_versioned(&self, rel: &str) -> Result<Option<Versioned>> {
        let r = match self.store.get(&self.path(rel)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::store(self.display(rel), e)),
        };
        let version = UpdateVersion {
            e_tag: r.meta.e_tag.clone(),
            version: r.meta.version.clone(),
        };
        let bytes = r
            .bytes()
            .await
            .map_err(|e| Error::store(self.display(rel), e))?;
        Ok(Some(Versioned { bytes, version }))
    }

    /// Overwrites an object only if it still has `version` (S3: `If-Match` on the ETag; GCS
    /// and Azure: their generation / ETag preconditions), the write half of a
    /// compare-and-swap. Stores that cannot do this report [`SwapOutcome::Unsupported`] and
    /// write nothing: the caller decides whether a plain [`Location::put`] is good enough.
    pub async fn put_if_version(
        &self,
        rel: &str,
        bytes: Bytes,
        version: &UpdateVersion,
    ) -> Result<SwapOutcome> {
        let opts = PutOptions {
            mode: PutMode::Update(version.clone()),
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(rel), PutPayload::from_bytes(bytes), opts)
            .await
        {
            Ok(_) => Ok(SwapOutcome::Swapped),
            Err(object_store::Error::Precondition { .. }) => Ok(SwapOutcome::Conflict),
            Err(object_store::Error::NotImplemented { .. }) => Ok(SwapOutcome::Unsupported),
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
            return full.to_string();
        }
        match full.strip_prefix(pre) {
            Some("") => String::new(),
            Some(rest) if rest.starts_with('/') => rest[1..].to_string(),
            _ => full.to_string(),
        }
    }

    /// The user-facing URL of an object path of this store (for messages).
    fn url_of(&self, path: &Path) -> String {
        self.display(&self.relative(path))
    }

    /// Deletes one object; a missing object is not an error.
    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self.store.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store(self.display(rel), e)),
        }
    }

    /// Deletes every object below `rel` (recursively); nothing there is not an error.
    pub async fn delete_all(&self, rel: &str) -> Result<()> {
        for meta in self.list(rel).await? {
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::store(self.url_of(&meta.location), e)),
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
    fn s3_settings_prefer_the_aws_cli_names_and_default_the_region() {
        let value = |options: &StoreOptions, key: AmazonS3ConfigKey| {
            options.s3_builder("b").get_config_value(&key)
        };
        let both = StoreOptions::default()
            .with("AWS_ENDPOINT", "http://object-store-name:1")
            .with("AWS_ENDPOINT_URL", "http://aws-cli-name:2");
        assert_eq!(
            value(&both, AmazonS3ConfigKey::Endpoint).as_deref(),
            Some("http://aws-cli-name:2")
        );
        assert_eq!(
            value(&both, AmazonS3ConfigKey::Region).as_deref(),
            Some(DEFAULT_S3_REGION)
        );
        let default_only = StoreOptions::default().with("AWS_DEFAULT_REGION", "eu-west-1");
        assert_eq!(
            value(&default_only, AmazonS3ConfigKey::Region).as_deref(),
            Some("eu-west-1")
        );
        let regions = default_only.with("AWS_REGION", "ap-south-1");
        assert_eq!(
            value(&regions, AmazonS3ConfigKey::Region).as_deref(),
            Some("ap-south-1")
        );
        assert_eq!(
            value(&regions, AmazonS3ConfigKey::Bucket).as_deref(),
            Some("b")
        );
    }

    #[test]
    fn unknown_scheme_is_a_clear_error() {
        let err = Location::parse("ftp://host/x").unwrap_err().to_string();
        assert!(err.contains("ftp://host/x"), "{err}");
    }
}
