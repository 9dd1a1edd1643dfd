//! The worker process loop: register with the coordinator, heartbeat, take assignments, run
//! them on a blocking thread, forward progress, report completion.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowsynth_proto::job_spec::Kind;
use flowsynth_proto::worker_service_client::WorkerServiceClient;
use flowsynth_proto::*;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::jobs::{self, JobContext, JobOutcome};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Coordinator endpoint, e.g. `http://127.0.0.1:7070`.
    pub coordinator: String,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Stop after this many jobs (0 = run until shut down).
    pub max_jobs: usize,
    /// How long to keep retrying the first connection.
    pub connect_timeout: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            coordinator: "http://127.0.0.1:7070".into(),
            device: "auto".into(),
            max_jobs: 0,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// Normalises `host:port` to `http://host:port`.
pub fn endpoint_url(s: &str) -> String {
    if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

/// Connects to the coordinator, retrying until `timeout` (it may still be starting).
pub async fn connect(url: &str, timeout: Duration) -> Result<Channel> {
    let url = endpoint_url(url);
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| Error::Connect {
            url: url.clone(),
            message: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match endpoint.connect().await {
            Ok(ch) => return Ok(ch),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(Error::Connect {
                    url,
                    message: format!("{e} (is `flowsynth coordinator` running there?)"),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs the worker until `shutdown` resolves or `max_jobs` jobs are done.
pub async fn run(
    opts: WorkerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let channel = connect(&opts.coordinator, opts.connect_timeout).await?;
    let mut client = WorkerServiceClient::new(channel);
    let reg = client
        .register(RegisterRequest {
            hostname: hostname(),
            device: opts.device.clone(),
            collective_address: String::new(),
        })
        .await
        .map_err(Error::rpc("register"))?
        .into_inner();
    let worker_id = reg.worker_id.clone();
    tracing::info!("registered as {worker_id} with {}", opts.coordinator);

    // Heartbeats run independently of job work so a long epoch never looks like a dead worker.
    let stops: Arc<Mutex<HashSet<String>>> = Arc::default();
    let hb = {
        let mut client = client.clone();
        let id = worker_id.clone();
        let stops = stops.clone();
        let every = Duration::from_millis(reg.heartbeat_interval_ms.max(100) as u64);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match client
                    .heartbeat(HeartbeatRequest {
                        worker_id: id.clone(),
                    })
                    .await
                {
                    Ok(r) => {
                        let r = r.into_inner();
                        if !r.known {
                            tracing::error!("the coordinator no longer knows worker {id}");
                        }
                        if let Ok(mut s) = stops.lock() {
                            s.extend(r.stop_job_ids);
                        }
                    }
                    Err(e) => tracing::warn!("heartbeat failed: {e}"),
                }
            }
        })
    };

    tokio::pin!(shutdown);
    let mut jobs_done = 0usize;
    let result = loop {
        let call = client.get_assignment(GetAssignmentRequest {
            worker_id: worker_id.clone(),
            wait_ms: 10_000,
        });
        let resp = tokio::select! {
            _ = &mut shutdown => break Ok(()),
            r = call => r,
        };
        let assignment = match resp {
            Ok(r) => r.into_inner().assignment,
            Err(status) => break Err(Error::rpc("get_assignment")(status)),
        };
        let Some(a) = assignment else { continue };
        run_assignment(&mut client, &worker_id, &opts, a, &stops).await?;
        jobs_done += 1;
        if opts.max_jobs > 0 && jobs_done >= opts.max_jobs {
            break Ok(());
        }
    };
    hb.abort();
    result
}

async fn run_assignment(
    client: &mut WorkerServiceClient<Channel>,
    worker_id: &str,
    opts: &WorkerOptions,
    a: Assignment,
    stops: &Arc<Mutex<HashSet<String>>>,
) -> Result<()> {
    tracing::info!(
        "job {}: rank {}/{} (generation {})",
        a.job_id,
        a.rank,
        a.world_size,
        a.generation
    );
    // Rendezvous: every rank of the generation must arrive before work starts.
    loop {
        let r = client
            .rendezvous(RendezvousRequest {
                worker_id: worker_id.to_string(),
                job_id: a.job_id.clone(),
                generation: a.generation,
                rank: a.rank,
                collective_address: String::new(),
                nccl_unique_id: vec![],
                wait_ms: 10_000,
            })
            .await
            .map_err(Error::rpc("rendezvous"))?
            .into_inner();
        if r.abort {
            tracing::warn!("job {}: rendezvous aborted: {}", a.job_id, r.message);
            return Ok(());
        }
        if r.complete {
            break;
        }
    }

    let (ptx, mut prx) = watch::channel(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = JobContext {
        progress: ptx,
        stop: stop.clone(),
        device: opts.device.clone(),
    };
    let spec = a.spec.clone().unwrap_or_default();
    let job = a.clone();
    let work = tokio::task::spawn_blocking(move || -> Result<JobOutcome> {
        match spec.kind {
            Some(Kind::Train(t)) => jobs::train(&job, &t, &ctx),
            Some(Kind::Sample(s)) => jobs::sample(&job, &s, &ctx),
            None => Err(Error::Assignment {
                reason: "job spec names neither train nor sample".into(),
            }),
        }
    });
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let outcome = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tick.tick() => {
                if stops.lock().map(|s| s.contains(&a.job_id)).unwrap_or(false) {
                    stop.store(true, Ordering::Relaxed);
                }
                if prx.has_changed().unwrap_or(false) {
                    let p = prx.borrow_and_update().clone();
                    match client.report_progress(ProgressReport {
                        worker_id: worker_id.to_string(),
                        job_id: a.job_id.clone(),
                        rank: a.rank,
                        progress: Some(p),
                    }).await {
                        Ok(ack) if ack.get_ref().stop => stop.store(true, Ordering::Relaxed),
                        Ok(_) => {}
                        Err(e) => tracing::warn!("progress report failed: {e}"),
                    }
                }
            }
        }
    };
    let outcome = match outcome {
        Ok(r) => r,
        Err(join) => Err(Error::Assignment {
            reason: format!("job thread panicked: {join}"),
        }),
    };
    let report = match &outcome {
        Ok(o) => DoneReport {
            worker_id: worker_id.to_string(),
            job_id: a.job_id.clone(),
            rank: a.rank,
            success: true,
            message: String::new(),
            result_url: o.result_url.clone(),
            outputs: o.outputs.clone(),
            rows_written: o.rows_written,
        },
        Err(e) => {
            tracing::error!("job {} failed: {e}", a.job_id);
            DoneReport {
                worker_id: worker_id.to_string(),
                job_id: a.job_id.clone(),
                rank: a.rank,
                success: false,
                message: e.to_string(),
                ..Default::default()
            }
        }
    };
    client
        .report_done(report)
        .await
        .map_err(Error::rpc("report_done"))?;
    Ok(())
}
