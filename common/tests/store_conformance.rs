//! One conformance suite for object-store locations, run against every kind of location a user
//! can give: a plain local path, a `file://` URL, and `s3://bucket/prefix` on a real S3 endpoint
//! (moto's server on loopback; `make setup` installs it). Then the checkpoint layout (commit,
//! resolve, keep-K, corruption) and the compare-and-swap `latest` pointer on the same three.
//!
//! The S3 location gets its endpoint and credentials through `StoreOptions`, never through this
//! process's environment, so the tests run in parallel without racing on it.

#![allow(clippy::unwrap_used)]

#[path = "support/moto.rs"]
mod moto;

use bytes::Bytes;
use flowsynth_common::Error;
use flowsynth_common::checkpoint::{
    self, CHECKPOINT_MANIFEST, CheckpointMeta, LATEST, advance_latest, dir_name,
};
use flowsynth_common::store::{Location, MULTIPART_THRESHOLD, StoreOptions, SwapOutcome};
use object_store::ObjectStoreExt;

use moto::Moto;

const BUCKET: &str = "flowsynth-conformance";

/// A location under test and what keeps it alive (a temp dir or a moto server).
struct Backend {
    loc: Location,
    options: StoreOptions,
    kind: Kind,
    _dir: Option<tempfile::TempDir>,
    _moto: Option<Moto>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    LocalPath,
    FileUrl,
    S3,
}

impl Backend {
    fn new(kind: Kind) -> Backend {
        match kind {
            Kind::LocalPath | Kind::FileUrl => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("store root");
                let spec = if kind == Kind::FileUrl {
                    url::Url::from_directory_path(&path).unwrap().to_string()
                } else {
                    path.to_str().unwrap().to_string()
                };
                let options = StoreOptions::default();
                Backend {
                    loc: Location::parse_with(&spec, &options).unwrap(),
                    options,
                    kind,
                    _dir: Some(dir),
                    _moto: None,
                }
            }
            Kind::S3 => {
                let moto = Moto::with_bucket(BUCKET);
                let options = StoreOptions::from_iter(moto.env());
                let loc =
                    Location::parse_with(&format!("s3://{BUCKET}/runs/r1/"), &options).unwrap();
                assert_eq!(loc.url(), format!("s3://{BUCKET}/runs/r1"));
                Backend {
                    loc,
                    options,
                    kind,
                    _dir: None,
                    _moto: Some(moto),
                }
            }
        }
    }

    /// Opens `url` the way a second process would, with the same settings.
    fn reopen(&self, url: &str) -> Location {
        Location::parse_with(url, &self.options).unwrap()
    }
}

/// Deterministic bytes that no two offsets' blocks repeat (a misplaced part would show).
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn names_below(loc: &Location, rel: &str) -> Vec<String> {
    let mut names: Vec<String> = loc
        .list(rel)
        .await
        .unwrap()
        .iter()
        .map(|m| loc.relative(&m.location))
        .collect();
    names.sort();
    names
}

// ---- the store suite -------------------------------------------------------------------------

async fn store_suite(b: &Backend) {
    let loc = &b.loc;

    // put / get round trip, overwrite, exists.
    loc.put("a/b.txt", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(loc.get("a/b.txt").await.unwrap(), &b"hello"[..]);
    loc.put("a/b.txt", Bytes::from_static(b"hello again"))
        .await
        .unwrap();
    assert_eq!(loc.get("a/b.txt").await.unwrap(), &b"hello again"[..]);
    assert!(loc.exists("a/b.txt").await.unwrap());
    assert_eq!(
        loc.get_opt("a/b.txt").await.unwrap().as_deref(),
        Some(&b"hello again"[..])
    );
    loc.put("empty", Bytes::new()).await.unwrap();
    assert_eq!(loc.get("empty").await.unwrap().len(), 0);

    // Missing objects: None from get_opt, an error naming the URL from get.
    assert!(loc.get_opt("no/such/object").await.unwrap().is_none());
    assert!(!loc.exists("no/such/object").await.unwrap());
    let err = loc.get("no/such/object").await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&format!("{}/no/such/object", loc.url())),
        "{message}"
    );
    assert!(
        matches!(
            err,
            Error::ObjectStore {
                source: object_store::Error::NotFound { .. },
                ..
            }
        ),
        "{err:?}"
    );

    // Create-only put: the second writer is told the object exists and changes nothing.
    assert!(
        loc.put_if_absent("commit.json", Bytes::from_static(b"first"))
            .await
            .unwrap()
    );
    assert!(
        !loc.put_if_absent("commit.json", Bytes::from_static(b"second"))
            .await
            .unwrap()
    );
    assert_eq!(loc.get("commit.json").await.unwrap(), &b"first"[..]);

    // Listing is recursive, by whole path segments (`tree` does not match `treetop`), and
    // relative names are relative to the location listed from.
    for key in [
        "tree/x/1",
        "tree/x/2",
        "tree/y/deep/3",
        "tree/z",
        "treetop/other",
    ] {
        loc.put(key, Bytes::from(key.to_string())).await.unwrap();
    }
    assert_eq!(
        names_below(loc, "tree").await,
        ["tree/x/1", "tree/x/2", "tree/y/deep/3", "tree/z"]
    );
    assert_eq!(names_below(loc, "tree/x").await, ["tree/x/1", "tree/x/2"]);
    assert!(names_below(loc, "nothing/here").await.is_empty());
    let everything = names_below(loc, "").await;
    for key in ["a/b.txt", "commit.json", "empty", "tree/z", "treetop/other"] {
        assert!(
            everything.iter().any(|n| n == key),
            "{key} in {everything:?}"
        );
    }

    // join / relative / display: a sub-location is the same store under a longer prefix, and
    // its URL opens the same objects from scratch (as another process would).
    let sub = loc.join("tree/y/");
    assert_eq!(sub.url(), format!("{}/tree/y", loc.url()));
    assert_eq!(
        sub.display("deep/3"),
        format!("{}/tree/y/deep/3", loc.url())
    );
    assert_eq!(sub.get("deep/3").await.unwrap(), &b"tree/y/deep/3"[..]);
    assert_eq!(names_below(&sub, "").await, ["deep/3"]);
    assert_eq!(sub.relative(&loc.path("tree/y/deep/3")), "deep/3");
    let reopened = b.reopen(sub.url());
    assert_eq!(reopened.url(), sub.url());
    assert_eq!(reopened.get("deep/3").await.unwrap(), &b"tree/y/deep/3"[..]);
    assert_eq!(names_below(&reopened, "").await, ["deep/3"]);
    if b.kind != Kind::S3 {
        assert_eq!(
            loc.local_dir().unwrap().join("tree/y/deep/3"),
            reopened.local_dir().unwrap().join("deep/3")
        );
    } else {
        assert!(loc.local_dir().is_none());
    }

    // delete: one object; a missing one is fine; everything below a prefix, nothing beside it.
    loc.delete("tree/z").await.unwrap();
    assert!(!loc.exists("tree/z").await.unwrap());
    loc.delete("tree/z").await.unwrap();
    loc.delete_all("tree").await.unwrap();
    assert!(names_below(loc, "tree").await.is_empty());
    assert_eq!(names_below(loc, "treetop").await, ["treetop/other"]);
    loc.delete_all("nothing/here").await.unwrap();

    // Above the threshold objects go up in parts; they must come back byte-identical.
    let big = Bytes::from(pattern(MULTIPART_THRESHOLD + 1024 * 1024 + 123));
    loc.put("big/blob.bin", big.clone()).await.unwrap();
    let back = loc.get("big/blob.bin").await.unwrap();
    assert_eq!(back.len(), big.len());
    assert!(
        back == big,
        "multipart object differs from what was written"
    );
    if b.kind == Kind::S3 {
        // S3 gives a multipart object the ETag "<md5 of the part md5s>-<parts>".
        let meta = loc.store().head(&loc.path("big/blob.bin")).await.unwrap();
        let etag = meta.e_tag.unwrap_or_default();
        assert!(
            etag.trim_matches('"').ends_with("-3"),
            "expected a 3-part upload, ETag {etag}"
        );
    }
    let listed = loc.list("big").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, big.len() as u64);
}

// ---- the checkpoint suite --------------------------------------------------------------------

fn meta(step: u64) -> CheckpointMeta {
    CheckpointMeta {
        step,
        stage: "vae".into(),
        epoch_in_stage: step / 10,
        job_id: "job-1".into(),
        generation: 1,
        dataset_url: "s3://data/nsl".into(),
        dataset_content_hash: "abc".into(),
    }
}

fn files(step: u64) -> Vec<(String, Bytes)> {
    vec![
        (
            "weights.bin".to_string(),
            Bytes::from(pattern(1000 + step as usize)),
        ),
        (
            "state.json".to_string(),
            Bytes::from(format!("{{\"step\":{step}}}")),
        ),
    ]
}

async fn pointer(root: &Location) -> String {
    String::from_utf8(root.get(LATEST).await.unwrap().to_vec()).unwrap()
}

async fn checkpoint_suite(b: &Backend) {
    let root = b.loc.join("checkpoints");

    // Nothing committed yet: a clear error naming the location.
    let err = checkpoint::resolve_at(&root).await.unwrap_err().to_string();
    assert!(
        err.contains(root.url()) && err.contains("train first"),
        "{err}"
    );
    assert!(checkpoint::latest(&root).await.unwrap().is_none());

    // Commit three, keep two: the oldest is pruned whole, `latest` names the newest.
    for step in [10, 20, 30] {
        let url = checkpoint::commit(&root, meta(step), files(step), 2)
            .await
            .unwrap();
        assert_eq!(url, root.display(&dir_name(step)));
    }
    assert_eq!(
        checkpoint::committed(&root).await.unwrap(),
        [dir_name(20), dir_name(30)]
    );
    assert!(names_below(&root, &dir_name(10)).await.is_empty());
    assert_eq!(pointer(&root).await, dir_name(30));
    let newest = checkpoint::resolve_at(&root).await.unwrap();
    assert_eq!(newest.manifest.meta, meta(30));
    assert_eq!(newest.url, root.display(&dir_name(30)));
    assert_eq!(
        newest.file("weights.bin").unwrap().as_ref(),
        &pattern(1030)[..]
    );
    // The same through the user-facing URL, opened from scratch.
    let reopened = b.reopen(root.url());
    assert_eq!(
        checkpoint::latest(&reopened)
            .await
            .unwrap()
            .unwrap()
            .manifest
            .meta
            .step,
        30
    );

    // The same step twice is refused (the manifest is written create-only).
    let err = checkpoint::commit(&root, meta(30), files(30), 2)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");

    // A corrupt file is detected by its sha256 and the checkpoint skipped.
    root.join(&dir_name(30))
        .put("weights.bin", Bytes::from_static(b"bit rot"))
        .await
        .unwrap();
    let err = checkpoint::load_dir(&root.join(&dir_name(30)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("weights.bin") && err.contains("sha256"),
        "{err}"
    );
    let fallback = checkpoint::resolve_at(&root).await.unwrap();
    assert_eq!(fallback.manifest.meta.step, 20);
    assert_eq!(
        fallback.file("weights.bin").unwrap().as_ref(),
        &pattern(1020)[..]
    );
    // So is one whose manifest does not parse; one without a manifest is no checkpoint at all.
    root.join(&dir_name(50))
        .put(
            CHECKPOINT_MANIFEST,
            Bytes::from_static(b"{\"format_version\": 1, "),
        )
        .await
        .unwrap();
    root.join(&dir_name(60))
        .put("weights.bin", Bytes::from_static(b"half written"))
        .await
        .unwrap();
    assert_eq!(
        checkpoint::committed(&root).await.unwrap(),
        [dir_name(20), dir_name(30), dir_name(50)]
    );
    assert_eq!(
        checkpoint::resolve_at(&root)
            .await
            .unwrap()
            .manifest
            .meta
            .step,
        20
    );
    // A checkpoint directory's own URL resolves to that checkpoint.
    let at = b.reopen(&root.display(&dir_name(20)));
    assert_eq!(
        checkpoint::resolve_at(&at)
            .await
            .unwrap()
            .manifest
            .meta
            .step,
        20
    );

    // Committing an older step (a late writer) never moves `latest` back.
    checkpoint::commit(&root, meta(5), files(5), 10)
        .await
        .unwrap();
    assert_eq!(pointer(&root).await, dir_name(30));
}

// ---- the `latest` pointer --------------------------------------------------------------------

async fn latest_pointer_suite(b: &Backend) {
    let root = b.loc.join("pointer");
    assert_eq!(advance_latest(&root, 7).await.unwrap(), 7);
    assert_eq!(pointer(&root).await, dir_name(7));
    assert_eq!(advance_latest(&root, 3).await.unwrap(), 7);
    assert_eq!(advance_latest(&root, 7).await.unwrap(), 7);
    assert_eq!(pointer(&root).await, dir_name(7));
    assert_eq!(advance_latest(&root, 9).await.unwrap(), 9);
    assert_eq!(pointer(&root).await, dir_name(9));
    // A pointer that does not parse is replaced.
    root.put(LATEST, Bytes::from_static(b"not a checkpoint"))
        .await
        .unwrap();
    assert_eq!(advance_latest(&root, 2).await.unwrap(), 2);
    assert_eq!(pointer(&root).await, dir_name(2));

    // The primitives: a versioned read, then a write conditional on that version.
    assert!(root.get_versioned("cas").await.unwrap().is_none());
    root.put("cas", Bytes::from_static(b"v1")).await.unwrap();
    let v1 = root.get_versioned("cas").await.unwrap().unwrap();
    assert_eq!(v1.bytes, &b"v1"[..]);
    assert!(v1.version.e_tag.is_some(), "{:?}", v1.version);
    let outcome = root
        .put_if_version("cas", Bytes::from_static(b"v2"), &v1.version)
        .await
        .unwrap();
    if b.kind == Kind::S3 {
        assert_eq!(outcome, SwapOutcome::Swapped);
        assert_eq!(root.get("cas").await.unwrap(), &b"v2"[..]);
        // The server really checks If-Match: a write against the old version is refused
        // and leaves the object alone; so is one against an object that is gone.
        let stale = root
            .put_if_version("cas", Bytes::from_static(b"v3"), &v1.version)
            .await
            .unwrap();
        assert_eq!(stale, SwapOutcome::Conflict);
        assert_eq!(root.get("cas").await.unwrap(), &b"v2"[..]);
        let v2 = root.get_versioned("cas").await.unwrap().unwrap();
        root.delete("cas").await.unwrap();
        let gone = root
            .put_if_version("cas", Bytes::from_static(b"v4"), &v2.version)
            .await
            .unwrap();
        assert_eq!(gone, SwapOutcome::Conflict);
        assert!(!root.exists("cas").await.unwrap());
    } else {
        // object_store's local store cannot; nothing is written and the pointer falls back
        // to compare-then-put (above).
        assert_eq!(outcome, SwapOutcome::Unsupported);
        assert_eq!(root.get("cas").await.unwrap(), &b"v1"[..]);
    }
}

/// Writers racing to move the pointer: whatever the interleaving it ends at the highest step,
/// and every writer is told a step at least as high as its own. Only a store with conditional
/// writes can promise that.
async fn racing_writers_leave_the_highest_step(root: Location) {
    const WRITERS: u64 = 6;
    for round in 0..3u64 {
        let base = 100 * (round + 1);
        let tasks: Vec<_> = (0..WRITERS)
            .map(|i| {
                let root = root.clone();
                // Interleave the steps so that low writers often go last.
                let step = base + (i * 5) % WRITERS;
                tokio::spawn(async move { (step, advance_latest(&root, step).await.unwrap()) })
            })
            .collect();
        for task in tasks {
            let (step, now) = task.await.unwrap();
            assert!(now >= step, "writer of step {step} was told {now}");
        }
        assert_eq!(pointer(&root).await, dir_name(base + WRITERS - 1));
    }
}

macro_rules! conformance {
    ($suite:ident: $($name:ident => $kind:expr),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let backend = Backend::new($kind);
                $suite(&backend).await;
            }
        )+
    };
}

conformance!(store_suite:
    local_path_store_conforms => Kind::LocalPath,
    file_url_store_conforms => Kind::FileUrl,
    s3_store_on_moto_conforms => Kind::S3,
);

conformance!(checkpoint_suite:
    local_path_checkpoints_commit_resolve_prune_and_skip_corrupt => Kind::LocalPath,
    file_url_checkpoints_commit_resolve_prune_and_skip_corrupt => Kind::FileUrl,
    s3_checkpoints_commit_resolve_prune_and_skip_corrupt => Kind::S3,
);

conformance!(latest_pointer_suite:
    local_path_latest_pointer_only_moves_forward => Kind::LocalPath,
    file_url_latest_pointer_only_moves_forward => Kind::FileUrl,
    s3_latest_pointer_moves_by_compare_and_swap_only_forward => Kind::S3,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_racing_latest_pointer_writers_end_at_the_highest_step() {
    let backend = Backend::new(Kind::S3);
    racing_writers_leave_the_highest_step(backend.loc.join("race")).await;
}

#[test]
fn store_options_come_from_the_given_settings_not_the_environment() {
    let options = StoreOptions::from_iter([
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("AWS_ACCESS_KEY_ID", "id"),
        ("AWS_SECRET_ACCESS_KEY", "do-not-print"),
    ])
    .with("AWS_ALLOW_HTTP", "true");
    assert_eq!(options.get("AWS_ALLOW_HTTP"), Some("true"));
    let shown = format!("{options:?}");
    assert!(
        shown.contains("AWS_SECRET_ACCESS_KEY") && !shown.contains("do-not-print"),
        "{shown}"
    );
    let loc = Location::parse_with("s3://bucket/a/b/", &options).unwrap();
    assert_eq!(loc.url(), "s3://bucket/a/b");
    assert_eq!(loc.path("c/d").as_ref(), "a/b/c/d");
    let err = Location::parse_with("s3:///nobucket", &options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("s3:///nobucket"), "{err}");
}
