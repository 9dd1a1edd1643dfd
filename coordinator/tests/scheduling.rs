//! The coordinator's state machine driven through its gRPC service traits (no network: the
//! end-to-end tests cover the wire). A tiny dataset manifest in a temporary directory stands in
//! for a converted dataset; the coordinator reads nothing else of it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use flowsynth_common::auth::WORKER_SESSION;
use flowsynth_common::manifest::*;
use flowsynth_common::store::Location;
use flowsynth_coordinator::{Coordinator, CoordinatorConfig};
use flowsynth_proto::job_service_server::JobService;
use flowsynth_proto::worker_service_server::WorkerService;
use flowsynth_proto::*;
use tonic::Request;

fn manifest(parts: &[&[u64]]) -> DatasetManifest {
    let parts: Vec<PartInfo> = parts
        .iter()
        .enumerate()
        .map(|(i, groups)| PartInfo {
            path: format!("part-{i:05}.parquet"),
            rows: groups.iter().sum(),
            bytes: 1,
            sha256: "00".into(),
            row_groups: groups.to_vec(),
        })
        .collect();
    let total = parts.iter().map(|p| p.rows).sum();
    DatasetManifest {
        format_version: MANIFEST_FORMAT_VERSION,
        source: SourceInfo {
            preset: "generic".into(),
            files: vec![],
            non_finite_policy: NonFinitePolicy::Drop,
            dedup: false,
            label_rewrites: BTreeMap::new(),
        },
        label_column: "label".into(),
        columns: vec![
            ColumnInfo {
                name: "x".into(),
                source_name: "x".into(),
                role: ColumnRole::Numeric,
                dtype: DType::Float64,
                stats: Some(NumericStats {
                    whole_numbers: false,
                    min: 0.0,
                    max: 1.0,
                    mean: 0.5,
                    std: 0.1,
                    distinct: 10,
                    quantiles: vec![0.0, 1.0],
                }),
                vocabulary: None,
            },
            ColumnInfo {
                name: "label".into(),
                source_name: "label".into(),
                role: ColumnRole::Label,
                dtype: DType::String,
                stats: None,
                vocabulary: Some(vec!["a".into(), "b".into()]),
            },
        ],
        dropped_columns: vec![],
        class_counts: BTreeMap::new(),
        total_rows: total,
        rows_dropped: RowDrops::default(),
        quantile_sample_rows: total,
        parts,
        content_hash: "h".into(),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    data: String,
    coordinator: Coordinator,
}

async fn fixture(config: CoordinatorConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let loc = Location::parse(data.to_str().unwrap()).unwrap();
    loc.put(
        MANIFEST_NAME,
        manifest(&[&[100, 100, 40], &[100, 60]]).to_json().into(),
    )
    .await
    .unwrap();
    let store = Location::parse(dir.path().join("state").to_str().unwrap()).unwrap();
    let coordinator = Coordinator::open(store, config).await.unwrap();
    Fixture {
        data: data.to_str().unwrap().to_string(),
        _dir: dir,
        coordinator,
    }
}

fn train_spec(data: &str, workers: u32) -> JobSpec {
    JobSpec {
        kind: Some(job_spec::Kind::Train(TrainSpec {
            data_url: data.into(),
            checkpoints_url: format!("{data}-ckpt"),
            config_toml: "[train]\nbatch_size = 50\n".into(),
        })),
        min_workers: workers,
        max_workers: workers,
        collective: "auto".into(),
        max_restarts: 0,
    }
}

/// The session each registered worker's calls present, by worker id.
static SESSIONS: std::sync::Mutex<BTreeMap<String, String>> =
    std::sync::Mutex::new(BTreeMap::new());

/// A worker call, presenting the session of the worker it names (as the worker's connection
/// does).
trait WorkerCall {
    fn worker(&self) -> &str;
}

macro_rules! worker_call {
    ($($t:ty),*) => {$(
        impl WorkerCall for $t {
            fn worker(&self) -> &str {
                &self.worker_id
            }
        }
    )*};
}
worker_call!(
    HeartbeatRequest,
    GetAssignmentRequest,
    RendezvousRequest,
    ProgressReport,
    DoneReport
);

fn signed<T: WorkerCall>(call: T) -> Request<T> {
    let session = SESSIONS
        .lock()
        .unwrap()
        .get(call.worker())
        .cloned()
        .unwrap_or_default();
    let mut req = Request::new(call);
    req.metadata_mut()
        .insert(WORKER_SESSION, session.parse().unwrap());
    req
}

/// Registers a worker and, as a real worker does right away, asks for work once (only a worker
/// that has asked is given a job).
async fn register(c: &Coordinator) -> String {
    let r = c
        .register(Request::new(RegisterRequest {
            hostname: "test".into(),
            device: "cpu".into(),
            collective_address: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    SESSIONS
        .lock()
        .unwrap()
        .insert(r.worker_id.clone(), r.session);
    let _ = assignment(c, &r.worker_id).await;
    r.worker_id
}

async fn assignment(c: &Coordinator, worker: &str) -> Option<Assignment> {
    c.get_assignment(signed(GetAssignmentRequest {
        worker_id: worker.into(),
        wait_ms: 50,
        ..Default::default()
    }))
    .await
    .unwrap()
    .into_inner()
    .assignment
}

async fn submit(c: &Coordinator, spec: JobSpec) -> Job {
    c.submit_job(Request::new(SubmitJobRequest { spec: Some(spec) }))
        .await
        .unwrap()
        .into_inner()
}

async fn job(c: &Coordinator, id: &str) -> Job {
    c.get_job(Request::new(GetJobRequest { job_id: id.into() }))
        .await
        .unwrap()
        .into_inner()
}

fn done(worker: &str, a: &Assignment, success: bool) -> DoneReport {
    DoneReport {
        worker_id: worker.into(),
        job_id: a.job_id.clone(),
        rank: a.rank,
        success,
        message: if success {
            String::new()
        } else {
            "boom".into()
        },
        result_url: format!("ckpt-of-rank-{}", a.rank),
        outputs: vec![],
        rows_written: 0,
        generation: a.generation,
        ..Default::default()
    }
}

#[tokio::test]
async fn two_rank_job_waits_for_both_workers_shards_every_row_group_once_and_succeeds() {
    let f = fixture(CoordinatorConfig::default()).await;
    let c = &f.coordinator;
    let j = submit(c, train_spec(&f.data, 2)).await;
    assert_eq!(j.state(), JobState::Pending);

    let w0 = register(c).await;
    assert!(
        assignment(c, &w0).await.is_none(),
        "one worker is not enough"
    );
    let w1 = register(c).await;
    let a0 = assignment(c, &w0).await.expect("rank group formed");
    let a1 = assignment(c, &w1).await.expect("rank group formed");
    assert_eq!((a0.rank, a1.rank, a0.world_size), (0, 1, 2));
    assert_eq!(a0.generation, a1.generation);
    let rows: Vec<u64> = [&a0, &a1]
        .iter()
        .map(|a| a.shards.iter().map(|s| s.rows).sum())
        .collect();
    assert_eq!(rows.iter().sum::<u64>(), 400);
    assert_eq!(
        a0.steps_per_epoch, 4,
        "lockstep: 380 training rows (400 less 5% held out) in global batches of 2 x 50"
    );
    let mut groups: Vec<(String, u32)> = [&a0, &a1]
        .iter()
        .flat_map(|a| a.shards.iter())
        .flat_map(|s| s.row_groups.iter().map(move |&g| (s.part_path.clone(), g)))
        .collect();
    groups.sort();
    groups.dedup();
    assert_eq!(groups.len(), 5);
    assert_eq!(job(c, &j.id).await.state(), JobState::Running);

    // Rendezvous completes only once both ranks arrived.
    let rv = |w: &str, a: &Assignment| RendezvousRequest {
        worker_id: w.into(),
        job_id: a.job_id.clone(),
        generation: a.generation,
        rank: a.rank,
        collective_address: format!("10.0.0.{}:1", a.rank),
        nccl_unique_id: vec![],
        wait_ms: 50,
    };
    let first = c
        .rendezvous(signed(rv(&w0, &a0)))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.complete && !first.abort);
    let second = c
        .rendezvous(signed(rv(&w1, &a1)))
        .await
        .unwrap()
        .into_inner();
    assert!(second.complete);
    assert_eq!(second.peers.len(), 2);
    assert_eq!(second.peers[1].address, "10.0.0.1:1");
    // A stale generation is told to abort.
    let mut stale = rv(&w0, &a0);
    stale.generation += 7;
    assert!(
        c.rendezvous(signed(stale))
            .await
            .unwrap()
            .into_inner()
            .abort
    );

    // Progress from rank 0 shows on the job.
    let ack = c
        .report_progress(signed(ProgressReport {
            worker_id: w0.clone(),
            job_id: j.id.clone(),
            rank: 0,
            progress: Some(Progress {
                stage: "vae".into(),
                epoch: 2,
                ..Default::default()
            }),
            generation: a0.generation,
            events: vec![],
            chunks_done: vec![],
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!ack.stop);
    assert_eq!(job(c, &j.id).await.progress.unwrap().epoch, 2);

    // Only the process that registered a worker speaks for it: w1's session (or none) naming
    // w0 is refused, and changes nothing.
    let mut forged = Request::new(ProgressReport {
        worker_id: w0.clone(),
        job_id: j.id.clone(),
        rank: 0,
        progress: Some(Progress {
            stage: "vae".into(),
            epoch: 9,
            ..Default::default()
        }),
        generation: a0.generation,
        ..Default::default()
    });
    let w1_session = SESSIONS.lock().unwrap()[&w1].clone();
    forged
        .metadata_mut()
        .insert(WORKER_SESSION, w1_session.parse().unwrap());
    let err = c.report_progress(forged).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains(&w0), "{err}");
    let err = c
        .report_done(Request::new(done(&w0, &a0, false)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let now = job(c, &j.id).await;
    assert_eq!(now.state(), JobState::Running);
    assert_eq!(now.progress.unwrap().epoch, 2);

    c.report_done(signed(done(&w1, &a1, true))).await.unwrap();
    assert_eq!(job(c, &j.id).await.state(), JobState::Running);
    c.report_done(signed(done(&w0, &a0, true))).await.unwrap();
    let end = job(c, &j.id).await;
    assert_eq!(end.state(), JobState::Succeeded);
    assert_eq!(end.result_url, "ckpt-of-rank-0");
}

#[tokio::test]
async fn a_failing_rank_fails_the_job_and_tells_the_other_rank_to_stop() {
    let f = fixture(CoordinatorConfig::default()).await;
    let c = &f.coordinator;
    let j = submit(c, train_spec(&f.data, 2)).await;
    let (w0, w1) = (register(c).await, register(c).await);
    let (a0, a1) = (
        assignment(c, &w0).await.unwrap(),
        assignment(c, &w1).await.unwrap(),
    );
    c.report_done(signed(done(&w1, &a1, false))).await.unwrap();
    let failed = job(c, &j.id).await;
    assert_eq!(failed.state(), JobState::Failed);
    assert!(failed.message.contains("boom"), "{}", failed.message);
    let hb = c
        .heartbeat(signed(HeartbeatRequest {
            worker_id: w0.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hb.stop_job_ids, vec![j.id.clone()]);
    let ack = c
        .report_progress(signed(ProgressReport {
            worker_id: w0.clone(),
            job_id: j.id.clone(),
            rank: a0.rank,
            progress: Some(Progress::default()),
            generation: a0.generation,
            events: vec![],
            chunks_done: vec![],
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(ack.stop);

    // The next job goes only to a worker that asks for work again: rank 0 (first registered)
    // may have died with the job and not be reaped yet, so the asking rank 1 gets it.
    let next = submit(c, train_spec(&f.data, 1)).await;
    let a = assignment(c, &w1)
        .await
        .expect("the asking worker gets the job");
    assert_eq!(a.job_id, next.id);
    assert_eq!(job(c, &next.id).await.workers, vec![w1.clone()]);
}

#[tokio::test]
async fn a_silent_worker_is_reaped_and_its_job_fails() {
    let f = fixture(CoordinatorConfig {
        heartbeat_timeout: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let c = &f.coordinator;
    let j = submit(c, train_spec(&f.data, 1)).await;
    let w = register(c).await;
    assert!(assignment(c, &w).await.is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.reap();
    let failed = job(c, &j.id).await;
    assert_eq!(failed.state(), JobState::Failed);
    assert!(
        failed.message.contains("stopped heartbeating"),
        "{}",
        failed.message
    );
    let hb = c
        .heartbeat(signed(HeartbeatRequest {
            worker_id: w,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!hb.known);
}

#[tokio::test]
async fn bad_submissions_are_rejected_with_a_reason() {
    let f = fixture(CoordinatorConfig::default()).await;
    let c = &f.coordinator;
    let missing = c
        .submit_job(Request::new(SubmitJobRequest {
            spec: Some(train_spec("/nonexistent/dataset", 1)),
        }))
        .await
        .unwrap_err();
    assert!(
        missing.message().contains("flowsynth convert"),
        "{}",
        missing.message()
    );
    let mut spec = train_spec(&f.data, 1);
    if let Some(job_spec::Kind::Train(t)) = spec.kind.as_mut() {
        t.config_toml = "[train]\nbatch_size = 0\n".into();
    }
    let bad = c
        .submit_job(Request::new(SubmitJobRequest { spec: Some(spec) }))
        .await
        .unwrap_err();
    assert!(bad.message().contains("batch_size"), "{}", bad.message());
}

#[tokio::test]
async fn cancel_ends_a_pending_job_and_a_restarted_coordinator_remembers_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let loc = Location::parse(data.to_str().unwrap()).unwrap();
    loc.put(MANIFEST_NAME, manifest(&[&[10]]).to_json().into())
        .await
        .unwrap();
    let state = dir.path().join("state");
    let (cancelled, queued) = {
        let store = Location::parse(state.to_str().unwrap()).unwrap();
        let c = Coordinator::open(store, CoordinatorConfig::default())
            .await
            .unwrap();
        let a = submit(&c, train_spec(data.to_str().unwrap(), 1)).await;
        let b = submit(&c, train_spec(data.to_str().unwrap(), 1)).await;
        let after = c
            .cancel_job(Request::new(CancelJobRequest {
                job_id: a.id.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(after.state(), JobState::Cancelled);
        // Give the persistence task a moment to write both records.
        tokio::time::sleep(Duration::from_millis(300)).await;
        (a.id, b.id)
    };
    let store = Location::parse(state.to_str().unwrap()).unwrap();
    let c = Coordinator::open(store, CoordinatorConfig::default())
        .await
        .unwrap();
    assert_eq!(job(&c, &cancelled).await.state(), JobState::Cancelled);
    let q = job(&c, &queued).await;
    assert_eq!(q.state(), JobState::Pending);
    assert_eq!(q.generation, 2, "a re-queued job starts a new generation");
    let w = register(&c).await;
    assert_eq!(assignment(&c, &w).await.unwrap().job_id, queued);
}

#[tokio::test]
async fn a_lost_rank_restarts_the_job_as_a_new_generation_until_the_budget_is_spent() {
    let f = fixture(CoordinatorConfig::default()).await;
    let c = &f.coordinator;
    let spec = JobSpec {
        max_restarts: 1,
        ..train_spec(&f.data, 2)
    };
    let j = submit(c, spec).await;
    let (w0, w1, w2) = (register(c).await, register(c).await, register(c).await);
    let (a0, a1) = (
        assignment(c, &w0).await.unwrap(),
        assignment(c, &w1).await.unwrap(),
    );
    assert_eq!((a0.generation, a1.generation), (1, 1));
    // Rank 1 loses its peer: a retryable failure restarts the job as generation 2.
    c.report_done(signed(DoneReport {
        retryable: true,
        ..done(&w1, &a1, false)
    }))
    .await
    .unwrap();
    let restarted = job(c, &j.id).await;
    assert_eq!(restarted.restarts, 1);
    assert_eq!(restarted.generation, 2);
    assert_eq!(restarted.events.len(), 1, "{:?}", restarted.events);
    assert!(restarted.events[0].starts_with("restart 1/1 (generation 2): rank 1"));
    // Rank 0 still runs generation 1: its heartbeat and progress are told to stop, its late
    // report changes nothing.
    let hb = c
        .heartbeat(signed(HeartbeatRequest {
            worker_id: w0.clone(),
            job_id: j.id.clone(),
            generation: 1,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hb.stop_job_ids, vec![j.id.clone()]);
    c.report_done(signed(done(&w0, &a0, true))).await.unwrap();
    assert_eq!(job(c, &j.id).await.state(), JobState::Pending);
    // The new world: the spare and the old rank 0 once it asks again (min_workers = 2: the
    // spare alone waits).
    assert!(
        assignment(c, &w2).await.is_none(),
        "one worker is below min_workers"
    );
    let b0 = assignment(c, &w0).await.expect("the survivor rejoins");
    let b2 = assignment(c, &w2).await.expect("the spare joins");
    assert_eq!((b0.generation, b2.generation), (2, 2));
    assert_eq!(job(c, &j.id).await.state(), JobState::Running);
    // A second loss spends the budget: the job fails and says why.
    c.report_done(signed(DoneReport {
        retryable: true,
        ..done(&w2, &b2, false)
    }))
    .await
    .unwrap();
    let failed = job(c, &j.id).await;
    assert_eq!(failed.state(), JobState::Failed);
    assert!(
        failed.message.contains("after 1 restart(s)"),
        "{}",
        failed.message
    );
}

#[tokio::test]
async fn a_failure_of_the_job_itself_is_not_retried() {
    let f = fixture(CoordinatorConfig::default()).await;
    let c = &f.coordinator;
    let spec = JobSpec {
        max_restarts: 3,
        ..train_spec(&f.data, 1)
    };
    let j = submit(c, spec).await;
    let w = register(c).await;
    let a = assignment(c, &w).await.unwrap();
    c.report_done(signed(done(&w, &a, false))).await.unwrap();
    let failed = job(c, &j.id).await;
    assert_eq!(failed.state(), JobState::Failed);
    assert_eq!(failed.restarts, 0);
}

/// Malformed RPCs (part of the bad-input corpus, tests/bad_inputs/README.md): each is refused
/// with a clean status naming the field, before any checkpoint or store is touched.
#[tokio::test]
async fn malformed_requests_get_a_clean_error_naming_the_field() {
    let f = fixture(CoordinatorConfig::default()).await;
    let c = &f.coordinator;
    let sample = |edit: fn(&mut SampleSpec)| {
        let mut s = SampleSpec {
            checkpoint_url: "/nonexistent/ckpt".into(),
            classes: vec![ClassCount {
                class_name: "a".into(),
                count: 10,
            }],
            out_url: "/nonexistent/out".into(),
            ..Default::default()
        };
        edit(&mut s);
        JobSpec {
            kind: Some(job_spec::Kind::Sample(s)),
            min_workers: 1,
            max_workers: 1,
            ..Default::default()
        }
    };
    let cases: Vec<(&str, JobSpec, &str)> = vec![
        (
            "10^12 rows",
            sample(|s| s.classes[0].count = 1_000_000_000_000),
            "at most",
        ),
        (
            "NaN guidance",
            sample(|s| s.guidance_scale = f64::NAN),
            "guidance",
        ),
        (
            "negative guidance",
            sample(|s| s.guidance_scale = -1.0),
            "guidance",
        ),
        ("strength above 1", sample(|s| s.strength = 1.5), "strength"),
        (
            "NaN strength",
            sample(|s| s.strength = f64::NAN),
            "strength",
        ),
        ("one sampler step", sample(|s| s.steps = 1), "steps"),
        (
            "an empty class name",
            sample(|s| s.classes[0].class_name = " ".into()),
            "class name",
        ),
        ("no kind", JobSpec::default(), "neither train nor sample"),
    ];
    for (case, spec, needle) in cases {
        let err = c
            .submit_job(Request::new(SubmitJobRequest { spec: Some(spec) }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{case}: {err:?}");
        assert!(err.message().contains(needle), "{case}: {}", err.message());
    }
    for id in ["", "job-nope"] {
        let err = c
            .get_job(Request::new(GetJobRequest { job_id: id.into() }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "get `{id}`");
        let err = c
            .cancel_job(Request::new(CancelJobRequest { job_id: id.into() }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "cancel `{id}`");
    }
    // A worker id nobody registered is told to register, not served.
    let err = c
        .get_assignment(signed(GetAssignmentRequest {
            worker_id: String::new(),
            wait_ms: 10,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}
