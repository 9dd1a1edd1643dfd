//! Client side of the CLI: job submission, status, cancellation, progress display, and the
//! embedded mode that runs a coordinator and a worker on loopback inside this process.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use flowsynth_proto::job_service_client::JobServiceClient;
use flowsynth_proto::{
    CancelJobRequest, GetJobRequest, Job, JobSpec, JobState, ListJobsRequest, SubmitJobRequest,
    WatchJobRequest, job_spec::Kind,
};
use flowsynth_worker::runtime::{Access, Conn};
use indicatif::{ProgressBar, ProgressStyle};

/// A coordinator, and how this client proves itself to it and checks it back.
pub struct Remote {
    pub url: String,
    pub access: Access,
}

type Client = JobServiceClient<Conn>;

async fn connect(remote: &Remote) -> Result<Client> {
    let channel =
        flowsynth_worker::runtime::connect(&remote.url, Duration::from_secs(10), &remote.access)
            .await?;
    Ok(JobServiceClient::new(channel))
}

fn state_name(job: &Job) -> &'static str {
    match job.state() {
        JobState::Pending => "pending",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Unspecified => "unknown",
    }
}

fn kind_name(job: &Job) -> &'static str {
    match job.spec.as_ref().and_then(|s| s.kind.as_ref()) {
        Some(Kind::Train(_)) => "train",
        Some(Kind::Sample(_)) => "sample",
        None => "?",
    }
}

/// The last finished epoch's loss; a dash while the stage's first epoch runs (the worker
/// reports a loss per epoch, and 0 means none yet).
fn loss_text(p: &flowsynth_proto::Progress) -> String {
    if p.loss == 0.0 {
        "loss -".to_string()
    } else {
        format!("loss {:.4}", p.loss)
    }
}

fn progress_line(job: &Job) -> String {
    let Some(p) = &job.progress else {
        return String::new();
    };
    match p.stage.as_str() {
        "vae" | "diffusion" => format!(
            "{} epoch {}/{} step {}/{} {} {:.0} rows/s",
            p.stage,
            p.epoch,
            p.epochs,
            p.step,
            p.steps_per_epoch,
            loss_text(p),
            p.rows_per_second
        ),
        "sampling" => format!("sampling {}/{} rows", p.rows_done, p.rows_total),
        other => other.to_string(),
    }
}

/// Submits a job; with `wait`, follows it to the end.
pub async fn submit(coordinator: &Remote, spec: JobSpec, wait: bool) -> Result<()> {
    let mut client = connect(coordinator).await?;
    let job = client
        .submit_job(SubmitJobRequest { spec: Some(spec) })
        .await
        .map_err(|s| anyhow::anyhow!("job rejected: {}", s.message()))?
        .into_inner();
    println!("submitted {} ({})", job.id, state_name(&job));
    if wait {
        let job = follow(coordinator, &mut client, &job.id).await?;
        finish(&job)?;
    }
    Ok(())
}

/// Prints one job or a table of all jobs.
pub async fn status(coordinator: &Remote, job: Option<&str>, verbose: bool) -> Result<()> {
    let mut client = connect(coordinator).await?;
    match job {
        Some(id) => {
            let job = client
                .get_job(GetJobRequest { job_id: id.into() })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            if verbose {
                println!("{job:#?}");
            } else {
                println!("job:      {}", job.id);
                println!("kind:     {}", kind_name(&job));
                println!("state:    {}", state_name(&job));
                println!("message:  {}", job.message);
                println!("progress: {}", progress_line(&job));
                println!("workers:  {}", job.workers.join(", "));
                let max = job.spec.as_ref().map_or(0, |s| s.max_restarts);
                if max > 0 || job.restarts > 0 {
                    println!("restarts: {} of {max}", job.restarts);
                }
                if !job.result_url.is_empty() {
                    println!("result:   {}", job.result_url);
                }
                for e in &job.events {
                    println!("event:    {e}");
                }
            }
        }
        None => {
            let jobs = client
                .list_jobs(ListJobsRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner()
                .jobs;
            if jobs.is_empty() {
                println!("no jobs");
                return Ok(());
            }
            println!("{:<18} {:<7} {:<10} PROGRESS", "JOB", "KIND", "STATE");
            for job in jobs {
                println!(
                    "{:<18} {:<7} {:<10} {}",
                    job.id,
                    kind_name(&job),
                    state_name(&job),
                    progress_line(&job)
                );
            }
        }
    }
    Ok(())
}

pub async fn cancel(coordinator: &Remote, id: &str) -> Result<()> {
    let mut client = connect(coordinator).await?;
    let job = client
        .cancel_job(CancelJobRequest { job_id: id.into() })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    println!("{} {}", job.id, state_name(&job));
    Ok(())
}

/// How long `--wait` keeps trying to reach a coordinator that went away (it may be restarting:
/// the job's record survives in its store) before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(600);

/// Follows a job with a progress bar until it reaches a terminal state; returns that state. A
/// lost coordinator is reconnected to (with backoff, for up to [`RECONNECT_FOR`]), and the watch
/// resumes where the job is then.
async fn follow(remote: &Remote, client: &mut Client, id: &str) -> Result<Job> {
    let mut display = Display::default();
    let mut lost_since: Option<std::time::Instant> = None;
    let mut pause = Duration::from_millis(250);
    loop {
        let reason = match client
            .watch_job(WatchJobRequest { job_id: id.into() })
            .await
        {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(job)) => {
                            lost_since = None;
                            pause = Duration::from_millis(250);
                            display.show(&job);
                            if is_terminal(&job) {
                                return Ok(display.finish(job));
                            }
                        }
                        Ok(None) => break "the watch ended early".to_string(),
                        Err(s) => break s.message().to_string(),
                    }
                }
            }
            // The coordinator answered and does not know the job: nothing to wait for.
            Err(s) if s.code() == tonic::Code::NotFound => bail!("{}", s.message()),
            Err(s) => s.message().to_string(),
        };
        let since = *lost_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() > RECONNECT_FOR {
            bail!(
                "lost the coordinator at {} for {} s ({reason}); job {id} may still run: \
                 `flowsynth status {id}` tells",
                remote.url,
                RECONNECT_FOR.as_secs()
            );
        }
        display.note(&format!("lost the coordinator ({reason}); reconnecting"));
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
        if let Ok(c) = connect(remote).await {
            *client = c;
        }
    }
}

fn is_terminal(job: &Job) -> bool {
    matches!(
        job.state(),
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

/// The progress bar of a followed job, and the job's events printed above it.
#[derive(Default)]
struct Display {
    bar: Option<(String, ProgressBar)>,
    events_seen: usize,
}

impl Display {
    /// A line above the bar (a hidden bar, off a terminal, would swallow it).
    fn note(&self, line: &str) {
        match &self.bar {
            Some((_, b)) if !b.is_hidden() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }

    fn finish(&mut self, job: Job) -> Job {
        if let Some((_, b)) = self.bar.take() {
            b.finish();
        }
        job
    }

    fn show(&mut self, job: &Job) {
        // Restarts and other events, as they happen, above the bar.
        for e in job.events.iter().skip(self.events_seen) {
            self.note(&format!("{}: {e}", job.id));
        }
        self.events_seen = self.events_seen.max(job.events.len());
        let Some(p) = &job.progress else {
            return;
        };
        let (len, pos, msg) = match p.stage.as_str() {
            "vae" | "diffusion" => (
                p.epochs as u64 * p.steps_per_epoch,
                (p.epoch.saturating_sub(1)) as u64 * p.steps_per_epoch + p.step,
                format!(
                    "epoch {}/{} {} {:.0} rows/s",
                    p.epoch,
                    p.epochs,
                    loss_text(p),
                    p.rows_per_second
                ),
            ),
            "sampling" => (p.rows_total, p.rows_done, "rows".to_string()),
            _ => (0, 0, String::new()),
        };
        if len == 0 {
            return;
        }
        if self.bar.as_ref().is_none_or(|(s, _)| s != &p.stage) {
            if let Some((_, b)) = self.bar.take() {
                b.finish();
            }
            let style = ProgressStyle::with_template(
                "{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            let b = ProgressBar::new(len).with_style(style);
            b.set_prefix(p.stage.clone());
            self.bar = Some((p.stage.clone(), b));
        }
        if let Some((_, b)) = &self.bar {
            b.set_length(len);
            b.set_position(pos.min(len));
            b.set_message(msg);
        }
    }
}

fn finish(job: &Job) -> Result<()> {
    match job.state() {
        JobState::Succeeded => {
            println!("{} succeeded: {}", job.id, job.result_url);
            Ok(())
        }
        _ => bail!("{} {}: {}", job.id, state_name(job), job.message),
    }
}

/// Workers of an embedded run: one in this process, or N child processes (`flowsynth worker`),
/// each with its own libtorch thread pool, as on N machines.
enum LocalWorkers {
    InProcess(tokio::task::JoinHandle<flowsynth_worker::Result<flowsynth_worker::RunSummary>>),
    Processes(Vec<tokio::process::Child>),
}

impl LocalWorkers {
    fn start(n: usize, url: &str, device: &str) -> Result<Self> {
        if n <= 1 {
            return Ok(Self::InProcess(tokio::spawn(flowsynth_worker::run(
                flowsynth_worker::WorkerOptions {
                    coordinator: url.to_string(),
                    device: device.to_string(),
                    max_jobs: 1,
                    ..Default::default()
                },
                std::future::pending(),
            ))));
        }
        let exe =
            std::env::current_exe().context("cannot find this executable to start workers")?;
        let mut children = Vec::with_capacity(n);
        for _ in 0..n {
            let child = tokio::process::Command::new(&exe)
                .args(["worker", "--coordinator", url, "--device", device])
                .args(["--max-jobs", "1"])
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start a worker process ({})", exe.display()))?;
            children.push(child);
        }
        Ok(Self::Processes(children))
    }

    /// Lets the workers finish reporting (they exit after their one job), then stops them.
    async fn finish(self, clean: bool) {
        match self {
            Self::InProcess(mut worker) => {
                if clean {
                    match tokio::time::timeout(Duration::from_secs(30), &mut worker).await {
                        Ok(Ok(Err(e))) => tracing::warn!("worker ended with: {e}"),
                        Ok(Err(e)) => tracing::warn!("worker task failed: {e}"),
                        _ => {}
                    }
                }
                worker.abort();
            }
            Self::Processes(children) => {
                for mut child in children {
                    if clean {
                        match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                            Ok(Ok(status)) if !status.success() => {
                                tracing::warn!("a worker process ended with {status}")
                            }
                            Ok(Ok(_)) => continue,
                            _ => {}
                        }
                    }
                    let _ = child.kill().await;
                }
            }
        }
    }
}

/// Runs one job on this machine: a coordinator on 127.0.0.1 (state in a temporary directory)
/// and `workers` workers connected to it over real gRPC, exactly as on a cluster.
pub async fn run_embedded(mut spec: JobSpec, device: &str, workers: usize) -> Result<()> {
    let workers = workers.max(1);
    spec.min_workers = workers as u32;
    spec.max_workers = workers as u32;
    let state = tempfile::tempdir().context("cannot create a temporary directory")?;
    let store = flowsynth_common::store::Location::parse(
        state
            .path()
            .to_str()
            .context("temporary directory is not UTF-8")?,
    )?;
    let listener = flowsynth_coordinator::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr().context("no local address")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(flowsynth_coordinator::serve(
        listener,
        store,
        flowsynth_coordinator::CoordinatorConfig::default(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let url = format!("http://{addr}");
    let local = LocalWorkers::start(workers, &url, device)?;
    let outcome = async {
        let remote = Remote {
            url: url.clone(),
            access: Access::default(),
        };
        let mut client = connect(&remote).await?;
        let job = client
            .submit_job(SubmitJobRequest { spec: Some(spec) })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        tracing::info!(
            "job {} submitted to the embedded coordinator at {url} ({workers} worker(s))",
            job.id
        );
        tokio::select! {
            r = follow(&remote, &mut client, &job.id) => r,
            _ = tokio::signal::ctrl_c() => {
                let _ = client.cancel_job(CancelJobRequest { job_id: job.id.clone() }).await;
                Err(anyhow::anyhow!("interrupted"))
            }
        }
    }
    .await;
    local.finish(outcome.is_ok()).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    finish(&outcome?)
}
