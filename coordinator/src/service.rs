//! The coordinator's state machine and its two gRPC services.
//!
//! All state sits behind one mutex: the control plane handles a few calls per second per worker,
//! so simplicity beats fine-grained locking. Long-polls (assignment, rendezvous) wait on a
//! `Notify` outside the lock. Every job change is persisted to the object store (one writer task,
//! in order) so a restarted coordinator lists old jobs and re-queues unfinished ones.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flowsynth_common::checkpoint;
use flowsynth_common::config::JobConfig;
use flowsynth_common::dataset;
use flowsynth_common::manifest::{
    MANIFEST_FORMAT_VERSION, SAMPLE_MANIFEST_NAME, SUCCESS_MARKER, SampleManifest, SamplePart,
};
use flowsynth_common::store::Location;
use flowsynth_proto::job_service_server::JobService;
use flowsynth_proto::job_spec::Kind;
use flowsynth_proto::worker_service_server::WorkerService;
use flowsynth_proto::*;
use futures::Stream;
use prost::Message;
use tokio::sync::{Notify, mpsc, watch};
use tonic::{Request, Response, Status};

use crate::plan;
use flowsynth_common::auth::{Token, WORKER_SESSION, same_secret};

/// Tunables of the coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// How often workers are asked to heartbeat.
    pub heartbeat_interval: Duration,
    /// A worker silent for this long is considered dead; its job fails.
    pub heartbeat_timeout: Duration,
    /// Longest a long-poll call is held.
    pub max_wait: Duration,
    /// Token clients must present (JobService); `None`: no check.
    pub client_token: Option<Token>,
    /// Token workers must present (WorkerService); `None`: the client token, if any.
    pub worker_token: Option<Token>,
    /// TLS certificate chain and private key (PEM): with them, the coordinator speaks only TLS.
    pub tls_identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(2),
            heartbeat_timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(20),
            client_token: None,
            worker_token: None,
            tls_identity: None,
        }
    }
}

/// How a job's work is split, prepared at submission (needs I/O) so scheduling stays in memory.
#[derive(Debug, Clone)]
enum WorkPlan {
    Train {
        groups: Vec<plan::RowGroup>,
        /// Rows one epoch draws from the dataset-wide training set (after the held-out split
        /// and `max_rows`; `train.epoch_rows` when set).
        train_rows: u64,
        batch_size: u64,
    },
    Sample {
        chunks: Vec<SampleChunk>,
        manifest: Box<SampleManifest>,
        out_url: String,
    },
}

struct JobEntry {
    job: Job,
    plan: Option<WorkPlan>,
    /// Worker id -> its assignment in the current generation.
    assignments: BTreeMap<String, Assignment>,
    /// Rendezvous of the current generation: rank -> collective address.
    arrived: BTreeMap<u32, String>,
    nccl_id: Vec<u8>,
    /// Ranks that reported success, with what they wrote.
    done: BTreeMap<u32, DoneReport>,
    /// Sampling: chunks finished in earlier generations (by index), which a restart does not
    /// give out again, and those the current generation reported so far.
    chunks_carried: BTreeMap<u32, ChunkDone>,
    chunks_now: BTreeMap<u32, ChunkDone>,
    tx: watch::Sender<Job>,
}

impl JobEntry {
    fn new(job: Job, plan: Option<WorkPlan>) -> Self {
        let (tx, _) = watch::channel(job.clone());
        Self {
            job,
            plan,
            assignments: BTreeMap::new(),
            arrived: BTreeMap::new(),
            nccl_id: Vec::new(),
            done: BTreeMap::new(),
            chunks_carried: BTreeMap::new(),
            chunks_now: BTreeMap::new(),
            tx,
        }
    }
}

struct WorkerEntry {
    hostname: String,
    /// The registration's secret ([`WORKER_SESSION`]): calls naming this worker must present it.
    session: String,
    last_seen: Instant,
    job: Option<String>,
    /// Whether the worker has asked for work since its last job. A worker that died during a
    /// job still heartbeats-as-alive until its timeout; waiting for it to ask again keeps the
    /// next job from being given to a dead worker in that window.
    ready: bool,
    /// Registration order, used to give ranks deterministically.
    seq: u64,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<String, JobEntry>,
    /// Submission order of job ids.
    order: Vec<String>,
    workers: HashMap<String, WorkerEntry>,
    next_seq: u64,
}

impl Inner {
    /// Marks `members` idle again if they are still busy with `job_id`.
    fn free_workers(&mut self, members: &[String], job_id: &str) {
        for w in members {
            if let Some(worker) = self.workers.get_mut(w)
                && worker.job.as_deref() == Some(job_id)
            {
                worker.job = None;
            }
        }
    }
}

/// The coordinator: clone-able handle over shared state.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
    persist: mpsc::UnboundedSender<Job>,
    /// The task that writes job records, in order; [`Coordinator::close`] waits for it.
    writer: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    store: Location,
    config: CoordinatorConfig,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn is_terminal(state: i32) -> bool {
    matches!(
        JobState::try_from(state),
        Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    )
}

/// The worker session a call presents (empty when none).
fn session_of<T>(req: &Request<T>) -> String {
    req.metadata()
        .get(WORKER_SESSION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Refuses a call that names a registered worker without presenting that registration's
/// session: only the process that registered a worker acts for it. An unknown worker passes
/// (each call has its own answer for those: register again, or a stale report ignored).
fn check_session(inner: &Inner, worker_id: &str, session: &str) -> Result<(), Status> {
    match inner.workers.get(worker_id) {
        Some(w) if !same_secret(session.as_bytes(), w.session.as_bytes()) => {
            Err(Status::permission_denied(format!(
                "worker `{worker_id}` was registered by another process: a worker acts only for \
                 itself (present the session its registration returned in `{WORKER_SESSION}`)"
            )))
        }
        _ => Ok(()),
    }
}

fn job_path(id: &str) -> String {
    format!("jobs/{id}.pb")
}

impl Coordinator {
    /// Opens the coordinator's state in `store`: previous jobs are listed again, unfinished ones
    /// are re-queued (training resumes from its last committed checkpoint).
    pub async fn open(store: Location, config: CoordinatorConfig) -> crate::Result<Self> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let writer_store = store.clone();
        let writer = tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let bytes = Bytes::from(job.encode_to_vec());
                if let Err(e) = writer_store.put(&job_path(&job.id), bytes).await {
                    tracing::error!("cannot persist job {}: {e}", job.id);
                }
            }
        });
        let coordinator = Self {
            inner: Arc::new(Mutex::new(Inner::default())),
            changed: Arc::new(Notify::new()),
            persist: tx,
            writer: Arc::new(std::sync::Mutex::new(Some(writer))),
            store,
            config,
        };
        coordinator.recover().await?;
        Ok(coordinator)
    }

    /// Waits (at most `within`) until the job records queued so far are written, once every
    /// other handle of this coordinator is gone (the services of a stopped server): a process
    /// that exits right after would otherwise cancel a write half done.
    pub async fn close(self, within: Duration) {
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        drop(self);
        if let Some(w) = writer
            && tokio::time::timeout(within, w).await.is_err()
        {
            tracing::warn!("job records still being written after {within:?}; not waiting longer");
        }
    }

    async fn recover(&self) -> crate::Result<()> {
        let mut metas = self.store.list("jobs").await?;
        metas.sort_by_key(|m| m.last_modified);
        let mut recovered = Vec::new();
        for m in metas {
            let rel = self.store.relative(&m.location);
            let bytes = self.store.get(&rel).await?;
            match Job::decode(bytes) {
                Ok(job) => recovered.push(job),
                Err(e) => tracing::warn!("ignoring unreadable job record {rel}: {e}"),
            }
        }
        recovered.sort_by_key(|j| j.created_unix_ms);
        for mut job in recovered {
            let mut plan = None;
            if !is_terminal(job.state) {
                job.state = JobState::Pending as i32;
                job.generation += 1;
                job.workers.clear();
                job.message = "re-queued after coordinator restart".into();
                job.events.push(format!(
                    "re-queued after a coordinator restart (generation {})",
                    job.generation
                ));
                match prepare(&job).await {
                    Ok(p) => plan = Some(p),
                    Err(status) => {
                        job.state = JobState::Failed as i32;
                        job.message = format!("cannot re-queue: {}", status.message());
                    }
                }
                let _ = self.persist.send(job.clone());
            }
            tracing::info!(
                "recovered job {} ({:?})",
                job.id,
                JobState::try_from(job.state)
            );
            let mut inner = self.lock();
            inner.order.push(job.id.clone());
            inner.jobs.insert(job.id.clone(), JobEntry::new(job, plan));
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a job change: watchers, persistence, waiting long-polls.
    fn publish(&self, entry: &mut JobEntry) {
        entry.job.updated_unix_ms = now_ms();
        entry.tx.send_replace(entry.job.clone());
        let _ = self.persist.send(entry.job.clone());
        self.changed.notify_waiters();
    }

    /// Fails the worker's job (if running) and frees the other ranks.
    fn fail_job(&self, inner: &mut Inner, job_id: &str, message: String) {
        if let Some(entry) = inner.jobs.get_mut(job_id) {
            if is_terminal(entry.job.state) {
                return;
            }
            entry.job.state = JobState::Failed as i32;
            entry.job.message = message;
            let members: Vec<String> = entry.assignments.keys().cloned().collect();
            self.publish(entry);
            inner.free_workers(&members, job_id);
        }
    }

    /// After losing a rank (`retryable`: a worker lost, a peer's collective broken, a rank stopped
    /// for a new generation), restarts the job as a new generation from its last committed
    /// checkpoint while `max_restarts` allows: the old ranks are freed (the survivors abort on
    /// their next heartbeat or progress report, their late reports are ignored as stale) and the
    /// scheduler forms the new world from the live workers, as for a new job. Otherwise, or for
    /// a failure of the job itself, fails it.
    fn restart_or_fail(&self, inner: &mut Inner, job_id: &str, reason: String, retryable: bool) {
        let Some(entry) = inner.jobs.get_mut(job_id) else {
            return;
        };
        if is_terminal(entry.job.state) {
            return;
        }
        let max = entry.job.spec.as_ref().map_or(0, |s| s.max_restarts);
        if !retryable || entry.job.restarts >= max {
            let message = if retryable && max > 0 {
                format!("{reason} (after {max} restart(s), the most the job allows)")
            } else {
                reason
            };
            self.fail_job(inner, job_id, message);
            return;
        }
        entry.job.restarts += 1;
        entry.job.generation += 1;
        // Sampling parts are named by chunk and a chunk's rows depend only on its seed: what
        // the old world finished is kept, the rest is given to the new one.
        let finished = std::mem::take(&mut entry.chunks_now);
        entry.chunks_carried.extend(finished);
        let kept = match &entry.plan {
            Some(WorkPlan::Sample { chunks, .. }) => format!(
                "; {} of {} chunks finished are kept",
                entry.chunks_carried.len(),
                chunks.len()
            ),
            _ => String::new(),
        };
        let event = format!(
            "restart {}/{max} (generation {}): {reason}{kept}",
            entry.job.restarts, entry.job.generation
        );
        tracing::warn!("job {job_id}: {event}");
        entry.job.events.push(event);
        entry.job.state = JobState::Pending as i32;
        entry.job.message = if kept.is_empty() {
            format!("restarting from the last checkpoint after: {reason}; waiting for workers")
        } else {
            format!("re-running the unfinished chunks after: {reason}; waiting for workers")
        };
        entry.job.workers.clear();
        let members: Vec<String> = std::mem::take(&mut entry.assignments).into_keys().collect();
        entry.arrived.clear();
        entry.nccl_id.clear();
        entry.done.clear();
        self.publish(entry);
        inner.free_workers(&members, job_id);
    }

    /// Drops workers that stopped heartbeating; restarts (or fails) the jobs they were running.
    pub fn reap(&self) {
        let mut inner = self.lock();
        let timeout = self.config.heartbeat_timeout;
        let dead: Vec<(String, Option<String>, String)> = inner
            .workers
            .iter()
            .filter(|(_, w)| w.last_seen.elapsed() > timeout)
            .map(|(id, w)| (id.clone(), w.job.clone(), w.hostname.clone()))
            .collect();
        for (id, job, host) in dead {
            tracing::warn!("worker {id} on {host} stopped heartbeating; removing it");
            inner.workers.remove(&id);
            if let Some(job) = job {
                self.restart_or_fail(
                    &mut inner,
                    &job,
                    format!("worker {id} on {host} stopped heartbeating"),
                    true,
                );
            }
        }
        self.schedule(&mut inner);
    }

    /// Forms rank groups for pending jobs from idle workers (oldest job first).
    fn schedule(&self, inner: &mut Inner) {
        let order = inner.order.clone();
        for job_id in order {
            let Some(entry) = inner.jobs.get(&job_id) else {
                continue;
            };
            if entry.job.state != JobState::Pending as i32 {
                continue;
            }
            let Some(work) = entry.plan.clone() else {
                continue;
            };
            let spec = entry.job.spec.clone().unwrap_or_default();
            let min = spec.min_workers.max(1) as usize;
            let max = spec.max_workers.max(spec.min_workers).max(1) as usize;
            let mut idle: Vec<(u64, String)> = inner
                .workers
                .iter()
                .filter(|(_, w)| w.job.is_none() && w.ready)
                .map(|(id, w)| (w.seq, id.clone()))
                .collect();
            if idle.len() < min {
                // Oldest job first: a big job waiting is not overtaken by smaller ones.
                return;
            }
            idle.sort();
            idle.truncate(max);
            let world = idle.len();
            let token = uuid::Uuid::new_v4().simple().to_string();
            let Some(entry) = inner.jobs.get_mut(&job_id) else {
                continue;
            };
            let generation = entry.job.generation;
            // Per rank: its shards and the lockstep step count (training), its chunks (sampling).
            let per_rank: Vec<(Vec<Shard>, u64, Vec<SampleChunk>)> = match &work {
                WorkPlan::Train {
                    groups,
                    train_rows,
                    batch_size,
                } => {
                    let shards = plan::shard(groups, world);
                    let steps = plan::steps_per_epoch(*train_rows, world, *batch_size);
                    shards
                        .into_iter()
                        .map(|(s, _)| (s, steps, vec![]))
                        .collect()
                }
                WorkPlan::Sample { chunks, .. } => {
                    let left: Vec<SampleChunk> = chunks
                        .iter()
                        .filter(|c| !entry.chunks_carried.contains_key(&c.index))
                        .cloned()
                        .collect();
                    (0..world)
                        .map(|rank| (vec![], 0, plan::chunks_for_rank(&left, rank, world)))
                        .collect()
                }
            };
            let mut assignments = BTreeMap::new();
            for (rank, ((shards, steps_per_epoch, chunks), (_, worker))) in
                per_rank.into_iter().zip(&idle).enumerate()
            {
                assignments.insert(
                    worker.clone(),
                    Assignment {
                        job_id: job_id.clone(),
                        generation,
                        rank: rank as u32,
                        world_size: world as u32,
                        spec: Some(spec.clone()),
                        shards,
                        steps_per_epoch,
                        chunks,
                        auth_token: token.clone(),
                    },
                );
            }
            entry.job.workers = idle.iter().map(|(_, w)| w.clone()).collect();
            entry.job.state = JobState::Running as i32;
            entry.job.message = format!("running on {world} worker(s)");
            entry.assignments = assignments;
            entry.arrived.clear();
            entry.done.clear();
            entry.chunks_now.clear();
            self.publish(entry);
            for (_, w) in &idle {
                if let Some(worker) = inner.workers.get_mut(w) {
                    worker.job = Some(job_id.clone());
                    worker.ready = false;
                }
            }
            tracing::info!("job {job_id} starts on {world} worker(s)");
        }
    }

    /// Holds a call up to `wait_ms` (capped) until `check` has an answer. `check` runs under the
    /// lock, first at once and then after every state change; `Ok(None)` means "timed out".
    /// It must not wake waiters unless it changed something, or the wait becomes a spin.
    async fn long_poll<T>(
        &self,
        wait_ms: u32,
        mut check: impl FnMut(&mut Inner) -> Option<Result<T, Status>>,
    ) -> Result<Option<T>, Status> {
        let wait = Duration::from_millis(wait_ms as u64).min(self.config.max_wait);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            if let Some(answer) = check(&mut self.lock()) {
                return answer.map(Some);
            }
            if tokio::time::Instant::now() >= deadline
                || tokio::time::timeout_at(deadline, notified).await.is_err()
            {
                return Ok(None);
            }
        }
    }

    fn job_snapshot(&self, id: &str) -> Result<Job, Status> {
        self.lock()
            .jobs
            .get(id)
            .map(|e| e.job.clone())
            .ok_or_else(|| Status::not_found(format!("no job `{id}`")))
    }

    /// Writes the sample manifest and success marker once every rank of the last generation is
    /// done: its parts are those of the last generation's ranks and the chunks `carried` from
    /// earlier generations (a restart re-runs only unfinished chunks).
    async fn finish_sampling(&self, job_id: String, finish: SampleFinish) {
        let SampleFinish {
            out_url,
            mut manifest,
            reports,
            carried,
        } = finish;
        let result = async {
            let out = Location::parse(&out_url)?;
            // outputs are "path:rows:synthetic"; a path reported twice (a chunk finished by a
            // stale rank and again) is one part.
            let mut parts: BTreeMap<String, SamplePart> = BTreeMap::new();
            let outputs = reports
                .iter()
                .flat_map(|r| r.outputs.iter())
                .chain(carried.iter().map(|c| &c.output));
            for o in outputs {
                let mut it = o.rsplitn(3, ':');
                let synthetic = it.next() == Some("true");
                let rows = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                let path = it.next().unwrap_or_default().to_string();
                parts.insert(
                    path.clone(),
                    SamplePart {
                        path,
                        rows,
                        synthetic,
                    },
                );
            }
            let parts: Vec<SamplePart> = parts.into_values().collect();
            manifest.synthetic_rows = parts.iter().filter(|p| p.synthetic).map(|p| p.rows).sum();
            manifest.real_rows = parts.iter().filter(|p| !p.synthetic).map(|p| p.rows).sum();
            manifest.parts = parts;
            let (sum, rows) = reports
                .iter()
                .map(|r| (r.coherence_sum, r.coherence_rows))
                .chain(carried.iter().map(|c| (c.coherence_sum, c.coherence_rows)))
                .fold((0.0, 0u64), |(s, n), (cs, cn)| (s + cs, n + cn));
            manifest.cross_modal_coherence = (rows > 0).then(|| sum / rows as f64);
            manifest.image_view = reports
                .iter()
                .find_map(|r| serde_json::from_str(&r.image_view_json).ok());
            manifest.generation_seconds = (manifest.synthetic_rows > 0).then(|| {
                reports
                    .iter()
                    .map(|r| r.generation_seconds)
                    .fold(0.0, f64::max)
            });
            let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
            out.put(SAMPLE_MANIFEST_NAME, Bytes::from(json)).await?;
            out.put(SUCCESS_MARKER, Bytes::new()).await?;
            Ok::<String, flowsynth_common::Error>(out.url().to_string())
        }
        .await;
        let mut inner = self.lock();
        let Some(entry) = inner.jobs.get_mut(&job_id) else {
            return;
        };
        match result {
            Ok(url) => {
                entry.job.state = JobState::Succeeded as i32;
                entry.job.message = "sampling finished".into();
                entry.job.result_url = url;
                if let Some(p) = entry.job.progress.as_mut() {
                    p.stage = "done".into();
                }
            }
            Err(e) => {
                entry.job.state = JobState::Failed as i32;
                entry.job.message = format!("cannot publish the sample manifest: {e}");
            }
        }
        self.publish(entry);
    }
}

/// What publishing a finished sampling job needs, taken from its entry under the lock.
struct SampleFinish {
    out_url: String,
    manifest: SampleManifest,
    reports: Vec<DoneReport>,
    carried: Vec<ChunkDone>,
}

/// The most rows one sampling job may generate: far beyond any augmentation (a billion rows of
/// flows are hundreds of GB of Parquet), and far below what would overflow the plan.
pub const MAX_SAMPLE_ROWS: u64 = 1_000_000_000;

/// Refuses a sampling request no client of ours sends: absurd counts, non-finite or
/// out-of-range sampler settings (0 means "the checkpoint's setting").
fn check_sample_spec(s: &SampleSpec) -> Result<(), Status> {
    let mut total: u64 = 0;
    for c in &s.classes {
        if c.class_name.trim().is_empty() {
            return Err(Status::invalid_argument("a class name is empty"));
        }
        total = total.saturating_add(c.count);
    }
    if total > MAX_SAMPLE_ROWS {
        return Err(Status::invalid_argument(format!(
            "{total} rows requested; a sampling job generates at most {MAX_SAMPLE_ROWS} \
             (split the request into several jobs)"
        )));
    }
    if !(s.guidance_scale.is_finite() && s.guidance_scale >= 0.0) {
        return Err(Status::invalid_argument(format!(
            "guidance scale {} must be a positive number",
            s.guidance_scale
        )));
    }
    if !(s.strength.is_finite() && (0.0..=1.0).contains(&s.strength)) {
        return Err(Status::invalid_argument(format!(
            "strength {} must be in (0, 1]",
            s.strength
        )));
    }
    if s.steps == 1 {
        return Err(Status::invalid_argument("sampler steps must be at least 2"));
    }
    Ok(())
}

/// Validates a spec and prepares its work plan (reads the dataset or checkpoint).
async fn prepare(job: &Job) -> Result<WorkPlan, Status> {
    let spec = job
        .spec
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("job has no spec"))?;
    match spec.kind.as_ref() {
        Some(Kind::Train(t)) => {
            let cfg = JobConfig::from_toml(&t.config_toml, "job config")
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let loc = Location::parse(&t.data_url)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let manifest = dataset::load_manifest(&loc)
                .await
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            Location::parse(&t.checkpoints_url)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let (used, held_out) = cfg.train.split_sizes(manifest.total_rows);
            Ok(WorkPlan::Train {
                groups: plan::row_groups(&manifest),
                train_rows: cfg.train.rows_per_epoch(used - held_out),
                batch_size: cfg.train.batch_size as u64,
            })
        }
        Some(Kind::Sample(s)) => {
            check_sample_spec(s)?;
            let ckpt = checkpoint::resolve(&s.checkpoint_url)
                .await
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            let ds = ckpt
                .dataset()
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            let classes_known = ds
                .classes()
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            if s.classes.is_empty() && !s.with_real {
                return Err(Status::invalid_argument(
                    "no classes requested (e.g. --classes 'neptune=2000,satan=500')",
                ));
            }
            let mut classes = Vec::new();
            for c in &s.classes {
                if !classes_known.contains(&c.class_name) {
                    return Err(Status::invalid_argument(format!(
                        "class `{}` is not in the training data; known classes: {}",
                        c.class_name,
                        classes_known.join(", ")
                    )));
                }
                classes.push((c.class_name.clone(), c.count));
            }
            let out =
                Location::parse(&s.out_url).map_err(|e| Status::invalid_argument(e.to_string()))?;
            for marker in [SUCCESS_MARKER, SAMPLE_MANIFEST_NAME] {
                if out
                    .exists(marker)
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?
                {
                    return Err(Status::already_exists(format!(
                        "{} already holds a finished sample; remove it or choose another --out",
                        s.out_url
                    )));
                }
            }
            let chunks = plan::sample_chunks(&classes, s.seed);
            let manifest = SampleManifest {
                format_version: MANIFEST_FORMAT_VERSION,
                job_id: job.id.clone(),
                checkpoint_url: ckpt.url.clone(),
                seed: s.seed,
                classes,
                with_real: s.with_real,
                synthetic_rows: 0,
                real_rows: 0,
                label_column: ds.label_column.clone(),
                columns: ds.columns.clone(),
                parts: vec![],
                cross_modal_coherence: None,
                image_view: None,
                generation_seconds: None,
            };
            Ok(WorkPlan::Sample {
                chunks,
                manifest: Box::new(manifest),
                out_url: s.out_url.clone(),
            })
        }
        None => Err(Status::invalid_argument(
            "job spec names neither train nor sample",
        )),
    }
}

type JobStream = Pin<Box<dyn Stream<Item = Result<Job, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for Coordinator {
    async fn submit_job(&self, req: Request<SubmitJobRequest>) -> Result<Response<Job>, Status> {
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("missing spec"))?;
        if spec.max_workers != 0 && spec.max_workers < spec.min_workers {
            return Err(Status::invalid_argument("max_workers is below min_workers"));
        }
        if !matches!(spec.collective.as_str(), "" | "auto" | "tcp" | "nccl") {
            return Err(Status::invalid_argument(format!(
                "collective `{}` is not one of auto, tcp, nccl",
                spec.collective
            )));
        }
        let now = now_ms();
        let mut job = Job {
            id: format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            spec: Some(spec),
            state: JobState::Pending as i32,
            message: "waiting for workers".into(),
            progress: Some(Progress {
                stage: "waiting".into(),
                ..Default::default()
            }),
            created_unix_ms: now,
            updated_unix_ms: now,
            result_url: String::new(),
            generation: 1,
            workers: vec![],
            restarts: 0,
            events: vec![],
        };
        let plan = prepare(&job).await?;
        job.updated_unix_ms = now_ms();
        let mut inner = self.lock();
        let mut entry = JobEntry::new(job.clone(), Some(plan));
        self.publish(&mut entry);
        inner.order.push(job.id.clone());
        inner.jobs.insert(job.id.clone(), entry);
        self.schedule(&mut inner);
        tracing::info!("accepted job {}", job.id);
        let snapshot = inner
            .jobs
            .get(&job.id)
            .map(|e| e.job.clone())
            .unwrap_or(job);
        Ok(Response::new(snapshot))
    }

    async fn get_job(&self, req: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        Ok(Response::new(self.job_snapshot(&req.into_inner().job_id)?))
    }

    async fn list_jobs(
        &self,
        _req: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let inner = self.lock();
        let jobs = inner
            .order
            .iter()
            .filter_map(|id| inner.jobs.get(id).map(|e| e.job.clone()))
            .collect();
        Ok(Response::new(ListJobsResponse { jobs }))
    }

    async fn cancel_job(&self, req: Request<CancelJobRequest>) -> Result<Response<Job>, Status> {
        let id = req.into_inner().job_id;
        let mut inner = self.lock();
        let members: Vec<String> = {
            let entry = inner
                .jobs
                .get_mut(&id)
                .ok_or_else(|| Status::not_found(format!("no job `{id}`")))?;
            if is_terminal(entry.job.state) {
                return Err(Status::failed_precondition(format!(
                    "job `{id}` already ended ({})",
                    entry.job.state().as_str_name()
                )));
            }
            entry.job.state = JobState::Cancelled as i32;
            entry.job.message = "cancelled by user".into();
            self.publish(entry);
            entry.assignments.keys().cloned().collect()
        };
        inner.free_workers(&members, &id);
        self.schedule(&mut inner);
        Ok(Response::new(inner.jobs[&id].job.clone()))
    }

    type WatchJobStream = JobStream;

    async fn watch_job(
        &self,
        req: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = req.into_inner().job_id;
        let mut rx = {
            let inner = self.lock();
            inner
                .jobs
                .get(&id)
                .ok_or_else(|| Status::not_found(format!("no job `{id}`")))?
                .tx
                .subscribe()
        };
        let stream = async_stream(move |tx: mpsc::Sender<Result<Job, Status>>| async move {
            loop {
                let job = rx.borrow_and_update().clone();
                let end = is_terminal(job.state);
                if tx.send(Ok(job)).await.is_err() || end {
                    break;
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a spawned producer.
fn async_stream<F, Fut>(producer: F) -> JobStream
where
    F: FnOnce(mpsc::Sender<Result<Job, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(producer(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl WorkerService for Coordinator {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let r = req.into_inner();
        let id = format!("w-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let session = uuid::Uuid::new_v4().simple().to_string();
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.workers.insert(
            id.clone(),
            WorkerEntry {
                hostname: r.hostname.clone(),
                session: session.clone(),
                last_seen: Instant::now(),
                job: None,
                ready: false,
                seq,
            },
        );
        tracing::info!("worker {id} registered from {} ({})", r.hostname, r.device);
        self.schedule(&mut inner);
        self.changed.notify_waiters();
        // At least four heartbeats per timeout: a worker's lease (half the timeout) is renewed
        // about twice before it lapses.
        let interval = self
            .config
            .heartbeat_interval
            .min(self.config.heartbeat_timeout / 4);
        Ok(Response::new(RegisterResponse {
            worker_id: id,
            heartbeat_interval_ms: interval.as_millis() as u32,
            heartbeat_timeout_ms: self.config.heartbeat_timeout.as_millis() as u32,
            session,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let session = session_of(&req);
        let r = req.into_inner();
        let id = r.worker_id;
        let mut inner = self.lock();
        check_session(&inner, &id, &session)?;
        let Some(w) = inner.workers.get_mut(&id) else {
            return Ok(Response::new(HeartbeatResponse {
                known: false,
                stop_job_ids: vec![],
            }));
        };
        w.last_seen = Instant::now();
        // Jobs that ended while this worker still runs them, and a generation it runs that is no
        // longer the job's (the job restarted without it or is forming a new world).
        let mut stop_job_ids: Vec<String> = inner
            .jobs
            .values()
            .filter(|e| {
                is_terminal(e.job.state)
                    && e.assignments.contains_key(&id)
                    && !e.done.values().any(|d| d.worker_id == id)
            })
            .map(|e| e.job.id.clone())
            .collect();
        if let Some(e) = inner.jobs.get(&r.job_id)
            && (e.job.generation != r.generation || !e.assignments.contains_key(&id))
            && !stop_job_ids.contains(&r.job_id)
        {
            stop_job_ids.push(r.job_id.clone());
        }
        Ok(Response::new(HeartbeatResponse {
            known: true,
            stop_job_ids,
        }))
    }

    async fn get_assignment(
        &self,
        req: Request<GetAssignmentRequest>,
    ) -> Result<Response<GetAssignmentResponse>, Status> {
        let session = session_of(&req);
        let r = req.into_inner();
        check_session(&self.lock(), &r.worker_id, &session)?;
        let left_job_state = if r.left_job_id.is_empty() {
            JobState::Unspecified
        } else {
            self.lock()
                .jobs
                .get(&r.left_job_id)
                .map_or(JobState::Unspecified, |e| e.job.state())
        };
        let assignment = self
            .long_poll(r.wait_ms, |inner| {
                let Some(w) = inner.workers.get_mut(&r.worker_id) else {
                    return Some(Err(Status::not_found(format!(
                        "unknown worker `{}`; register again",
                        r.worker_id
                    ))));
                };
                w.last_seen = Instant::now();
                if w.job.is_none() {
                    w.ready = true;
                    self.schedule(inner);
                }
                let job = inner.workers.get(&r.worker_id)?.job.clone()?;
                let a = inner.jobs.get(&job)?.assignments.get(&r.worker_id)?;
                Some(Ok(a.clone()))
            })
            .await?;
        Ok(Response::new(GetAssignmentResponse {
            assignment,
            left_job_state: left_job_state as i32,
        }))
    }

    async fn rendezvous(
        &self,
        req: Request<RendezvousRequest>,
    ) -> Result<Response<RendezvousResponse>, Status> {
        let session = session_of(&req);
        let r = req.into_inner();
        check_session(&self.lock(), &r.worker_id, &session)?;
        let outcome = self
            .long_poll(r.wait_ms, |inner| {
                let entry = match inner.jobs.get_mut(&r.job_id) {
                    Some(e) => e,
                    None => return Some(Err(Status::not_found(format!("no job `{}`", r.job_id)))),
                };
                let abort = |message: String| {
                    Some(Ok(RendezvousResponse {
                        complete: false,
                        peers: vec![],
                        nccl_unique_id: vec![],
                        abort: true,
                        message,
                    }))
                };
                if is_terminal(entry.job.state) {
                    return abort(format!("job ended: {}", entry.job.message));
                }
                if entry.job.generation != r.generation {
                    return abort(format!(
                        "generation {} is stale (now {})",
                        r.generation, entry.job.generation
                    ));
                }
                match entry.assignments.get(&r.worker_id) {
                    Some(a) if a.rank == r.rank => {}
                    _ => {
                        return Some(Err(Status::permission_denied(format!(
                            "worker `{}` is not rank {} of job `{}`",
                            r.worker_id, r.rank, r.job_id
                        ))));
                    }
                }
                // Re-arrival (a retried call) just refreshes the address. Only a change wakes
                // the other waiters: waking ourselves would turn the long-poll into a spin.
                let mut changed = entry.arrived.get(&r.rank) != Some(&r.collective_address);
                entry.arrived.insert(r.rank, r.collective_address.clone());
                if r.rank == 0 && !r.nccl_unique_id.is_empty() && entry.nccl_id != r.nccl_unique_id
                {
                    entry.nccl_id = r.nccl_unique_id.clone();
                    changed = true;
                }
                if changed {
                    self.changed.notify_waiters();
                }
                if entry.arrived.len() == entry.assignments.len() {
                    let peers = entry
                        .arrived
                        .iter()
                        .map(|(&rank, address)| Peer {
                            rank,
                            address: address.clone(),
                        })
                        .collect();
                    let nccl_unique_id = entry.nccl_id.clone();
                    return Some(Ok(RendezvousResponse {
                        complete: true,
                        peers,
                        nccl_unique_id,
                        abort: false,
                        message: String::new(),
                    }));
                }
                None
            })
            .await?;
        Ok(Response::new(outcome.unwrap_or_else(|| {
            RendezvousResponse {
                complete: false,
                peers: vec![],
                nccl_unique_id: vec![],
                abort: false,
                message: "waiting for the other ranks".into(),
            }
        })))
    }

    async fn report_progress(
        &self,
        req: Request<ProgressReport>,
    ) -> Result<Response<ProgressAck>, Status> {
        let session = session_of(&req);
        let r = req.into_inner();
        let mut inner = self.lock();
        check_session(&inner, &r.worker_id, &session)?;
        if let Some(w) = inner.workers.get_mut(&r.worker_id) {
            w.last_seen = Instant::now();
        }
        let entry = inner
            .jobs
            .get_mut(&r.job_id)
            .ok_or_else(|| Status::not_found(format!("no job `{}`", r.job_id)))?;
        let Some(assigned) = entry
            .assignments
            .get(&r.worker_id)
            .filter(|_| !is_terminal(entry.job.state) && entry.job.generation == r.generation)
        else {
            return Ok(Response::new(ProgressAck { stop: true }));
        };
        // Only chunks given to this rank count (a confused or hostile worker cannot mark
        // another rank's chunks finished).
        if let Some(c) = r
            .chunks_done
            .iter()
            .find(|c| !assigned.chunks.iter().any(|a| a.index == c.index))
        {
            return Err(Status::permission_denied(format!(
                "chunk {} of job `{}` is not assigned to worker `{}`",
                c.index, r.job_id, r.worker_id
            )));
        }
        entry
            .chunks_now
            .extend(r.chunks_done.into_iter().map(|c| (c.index, c)));
        // Rank 0 speaks for the job's progress; any rank may add events.
        let events = !r.events.is_empty();
        entry.job.events.extend(
            r.events
                .into_iter()
                .map(|e| format!("rank {}: {e}", r.rank)),
        );
        if r.rank == 0 {
            entry.job.progress = r.progress;
        }
        if r.rank == 0 || events {
            self.publish(entry);
        }
        Ok(Response::new(ProgressAck { stop: false }))
    }

    async fn report_done(&self, req: Request<DoneReport>) -> Result<Response<DoneAck>, Status> {
        let session = session_of(&req);
        let r = req.into_inner();
        let mut finish: Option<(String, SampleFinish)> = None;
        {
            let mut inner = self.lock();
            check_session(&inner, &r.worker_id, &session)?;
            let current = inner
                .jobs
                .get(&r.job_id)
                .is_some_and(|e| e.job.generation == r.generation);
            if let Some(w) = inner.workers.get_mut(&r.worker_id) {
                w.last_seen = Instant::now();
                if current && w.job.as_deref() == Some(r.job_id.as_str()) {
                    w.job = None;
                }
            }
            let Some(entry) = inner.jobs.get_mut(&r.job_id) else {
                return Err(Status::not_found(format!("no job `{}`", r.job_id)));
            };
            // A stale generation's report (a rank of the world before a restart) changes nothing.
            if !entry.assignments.contains_key(&r.worker_id)
                || is_terminal(entry.job.state)
                || entry.job.generation != r.generation
            {
                self.changed.notify_waiters();
                return Ok(Response::new(DoneAck {}));
            }
            if !r.success {
                let msg = format!("rank {} ({}) failed: {}", r.rank, r.worker_id, r.message);
                tracing::warn!("job {}: {msg}", r.job_id);
                let id = r.job_id.clone();
                self.restart_or_fail(&mut inner, &id, msg, r.retryable);
                self.schedule(&mut inner);
                return Ok(Response::new(DoneAck {}));
            }
            entry.done.insert(r.rank, r.clone());
            if entry.done.len() == entry.assignments.len() {
                match &entry.plan {
                    Some(WorkPlan::Sample {
                        manifest, out_url, ..
                    }) => {
                        entry.job.message = "publishing the sample manifest".into();
                        finish = Some((
                            entry.job.id.clone(),
                            SampleFinish {
                                out_url: out_url.clone(),
                                manifest: (**manifest).clone(),
                                reports: entry.done.values().cloned().collect(),
                                carried: entry.chunks_carried.values().cloned().collect(),
                            },
                        ));
                    }
                    _ => {
                        entry.job.state = JobState::Succeeded as i32;
                        entry.job.message = "training finished".into();
                        entry.job.result_url = entry
                            .done
                            .get(&0)
                            .map(|d| d.result_url.clone())
                            .unwrap_or_default();
                        if let Some(p) = entry.job.progress.as_mut() {
                            p.stage = "done".into();
                        }
                    }
                }
                self.publish(entry);
            }
            self.schedule(&mut inner);
        }
        if let Some((id, finish)) = finish {
            self.finish_sampling(id, finish).await;
        }
        Ok(Response::new(DoneAck {}))
    }
}
