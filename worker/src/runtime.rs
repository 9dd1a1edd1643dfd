//! The worker process loop: register with the coordinator, heartbeat, take assignments, run
//! them on a blocking thread, forward progress, report completion.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowsynth_common::auth::{AUTHORIZATION, Token, WORKER_SESSION};
use flowsynth_proto::job_spec::Kind;
use flowsynth_proto::worker_service_client::WorkerServiceClient;
use flowsynth_proto::*;
use tokio::sync::watch;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::jobs::{self, JobContext, JobOutcome, Lease, Peers, Pending};
use flowsynth_collective::{Nccl, TcpListenerHandle};
use std::net::ToSocketAddrs;

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
    /// Address the TCP collective listens on; empty: `127.0.0.1:0` when the coordinator is on
    /// loopback, else `0.0.0.0:0` (any interface, a free port).
    pub collective_listen: String,
    /// Host or IP peers use to reach this worker's collective; empty: the local address of the
    /// route to the coordinator (in Kubernetes, pass the pod IP).
    pub advertise_host: String,
    /// Collective for multi-worker jobs that ask for `auto`: `auto` (NCCL on CUDA devices when
    /// libnccl loads, else TCP), `tcp` or `nccl`.
    pub collective: String,
    /// How this worker proves itself to the coordinator and checks it back.
    pub access: Access,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            coordinator: "http://127.0.0.1:7070".into(),
            device: "auto".into(),
            max_jobs: 0,
            connect_timeout: Duration::from_secs(30),
            collective_listen: String::new(),
            advertise_host: String::new(),
            collective: "auto".into(),
            access: Access::default(),
        }
    }
}

/// What a connection to the coordinator presents and trusts.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Bearer token for every call (the coordinator's client or worker token).
    pub token: Option<Token>,
    /// PEM certificate(s) of the authority that signed the coordinator's TLS certificate: with
    /// it, the connection is TLS (`https://`) and the coordinator must prove its name.
    pub tls_ca: Option<Vec<u8>>,
}

/// Normalises `host:port` to `http://host:port`.
pub fn endpoint_url(s: &str) -> String {
    if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

/// Adds the bearer token (if any) and, on a worker's connection, its registration's session to
/// every call.
#[derive(Clone)]
pub struct Auth {
    token: Option<MetadataValue<Ascii>>,
    session: SessionSlot,
}

/// The session secret a worker's calls present; set by each registration.
#[derive(Clone, Default)]
pub struct SessionSlot(Arc<Mutex<Option<MetadataValue<Ascii>>>>);

impl SessionSlot {
    fn set(&self, session: &str) -> Result<()> {
        let mut v: MetadataValue<Ascii> = session.parse().map_err(|_| Error::Connect {
            url: String::new(),
            message: "the coordinator gave a session a gRPC header cannot carry".into(),
        })?;
        v.set_sensitive(true);
        if let Ok(mut s) = self.0.lock() {
            *s = Some(v);
        }
        Ok(())
    }
}

impl Auth {
    fn new(token: Option<&Token>, session: SessionSlot) -> Result<Self> {
        let Some(t) = token else {
            return Ok(Self {
                token: None,
                session,
            });
        };
        let mut v: MetadataValue<Ascii> = t.header_value().parse().map_err(|_| Error::Connect {
            url: String::new(),
            message: "the token holds characters a gRPC header cannot carry (use ASCII)".into(),
        })?;
        // Never indexed by HPACK or shown by the HTTP layer's debug output.
        v.set_sensitive(true);
        Ok(Self {
            token: Some(v),
            session,
        })
    }
}

impl Interceptor for Auth {
    fn call(
        &mut self,
        mut r: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.token {
            r.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
        if let Some(v) = self.session.0.lock().ok().and_then(|s| s.clone()) {
            r.metadata_mut().insert(WORKER_SESSION, v);
        }
        Ok(r)
    }
}

/// A connection to the coordinator that presents this process's token.
pub type Conn = InterceptedService<Channel, Auth>;

/// Connects to the coordinator, retrying until `timeout` (it may still be starting); every call
/// on the connection presents the access token, over TLS when a CA is given.
pub async fn connect(url: &str, timeout: Duration, access: &Access) -> Result<Conn> {
    connect_with(url, timeout, access, SessionSlot::default()).await
}

async fn connect_with(
    url: &str,
    timeout: Duration,
    access: &Access,
    session: SessionSlot,
) -> Result<Conn> {
    let auth = Auth::new(access.token.as_ref(), session)?;
    let channel = connect_channel(url, timeout, access.tls_ca.as_deref()).await?;
    Ok(InterceptedService::new(channel, auth))
}

async fn connect_channel(url: &str, timeout: Duration, tls_ca: Option<&[u8]>) -> Result<Channel> {
    let mut url = endpoint_url(url);
    if tls_ca.is_some()
        && let Some(rest) = url.strip_prefix("http://")
    {
        url = format!("https://{rest}");
    }
    let invalid = |message: String| Error::Connect {
        url: url.clone(),
        message,
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| invalid(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(ca) = tls_ca {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca));
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| invalid(format!("TLS settings: {e}")))?;
    } else if url.starts_with("https://") {
        return Err(invalid(
            "an https:// coordinator needs --tls-ca FILE (the CA that signed its certificate)"
                .into(),
        ));
    }
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

/// The coordinator's `host:port` from its URL.
fn host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hp = rest.split('/').next()?;
    (!hp.is_empty()).then(|| hp.to_string())
}

/// Binds the TCP collective's listener and works out the address peers should dial.
fn bind_collective(opts: &WorkerOptions) -> Result<(Arc<TcpListenerHandle>, String)> {
    let coordinator = host_port(&endpoint_url(&opts.coordinator)).unwrap_or_default();
    let resolved: Option<std::net::SocketAddr> = coordinator
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next());
    let loopback = resolved.is_some_and(|a| a.ip().is_loopback());
    let listen = if !opts.collective_listen.is_empty() {
        opts.collective_listen.clone()
    } else if loopback {
        "127.0.0.1:0".to_string()
    } else {
        "0.0.0.0:0".to_string()
    };
    let listener = TcpListenerHandle::bind(&listen)?;
    let bound = listener.local_addr();
    let host = if !opts.advertise_host.is_empty() {
        opts.advertise_host.clone()
    } else if !bound.ip().is_unspecified() {
        bound.ip().to_string()
    } else {
        // The local address of the route to the coordinator: what a peer on that network sees.
        resolved
            .and_then(|target| {
                let any = if target.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let s = std::net::UdpSocket::bind(any).ok()?;
                s.connect(target).ok()?;
                s.local_addr().ok().map(|a| a.ip().to_string())
            })
            .unwrap_or_else(hostname)
    };
    let address = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", bound.port())
    } else {
        format!("{host}:{}", bound.port())
    };
    Ok((Arc::new(listener), address))
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// What a worker did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Assignments this worker took part in.
    pub jobs: usize,
    /// Of those, the ones whose part did not succeed (failed, cancelled, or aborted rendezvous).
    pub failed: usize,
}

/// Runs the worker until `shutdown` resolves or `max_jobs` jobs are done.
pub async fn run(
    opts: WorkerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<RunSummary> {
    if !flowsynth_model::reuse_freed_memory() {
        tracing::debug!("malloc settings left as they are (not glibc)");
    }
    let shared = Shared::default();
    let channel = connect_with(
        &opts.coordinator,
        opts.connect_timeout,
        &opts.access,
        shared.session.clone(),
    )
    .await?;
    let mut client = WorkerServiceClient::new(channel);
    let (listener, collective_address) = bind_collective(&opts)?;
    tracing::info!("collective listener on {collective_address}");
    let mut session = Session::start(&mut client, &opts, &collective_address, &shared)
        .await
        .map_err(Error::rpc("register"))?;

    tokio::pin!(shutdown);
    let mut summary = RunSummary::default();
    // A job this worker left after a retryable failure: it may come back as a new generation;
    // it counts towards `max_jobs` once it ends without this worker.
    let mut left: Option<String> = None;
    let mut backoff = Backoff::default();
    let result = loop {
        // The coordinator forgot this worker (it restarted): register again, as a new worker.
        if session.lost() {
            session.hb.abort();
            let started = tokio::select! {
                _ = &mut shutdown => break Ok(summary),
                r = Session::start(&mut client, &opts, &collective_address, &shared) => r,
            };
            match started {
                Ok(s) => {
                    session = s;
                    backoff.reset();
                }
                Err(status) => {
                    tracing::warn!("cannot register again yet: {}", status.message());
                    backoff.wait().await;
                    continue;
                }
            }
        }
        let call = client.get_assignment(GetAssignmentRequest {
            worker_id: session.worker_id.clone(),
            wait_ms: 10_000,
            left_job_id: left.clone().unwrap_or_default(),
        });
        let resp = tokio::select! {
            _ = &mut shutdown => break Ok(summary),
            r = call => r,
        };
        let (assignment, left_state) = match resp {
            Ok(r) => {
                backoff.reset();
                let r = r.into_inner();
                let state = r.left_job_state();
                (r.assignment, state)
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                tracing::warn!("{}", status.message());
                session.lose();
                continue;
            }
            Err(status) if is_transient(&status) => {
                tracing::warn!(
                    "the coordinator is unreachable ({}); retrying",
                    status.message()
                );
                backoff.wait().await;
                continue;
            }
            Err(status) => break Err(Error::rpc("get_assignment")(status)),
        };
        let Some(a) = assignment else {
            // The job this worker left ended without it.
            if left.is_some()
                && matches!(
                    left_state,
                    JobState::Succeeded | JobState::Failed | JobState::Cancelled
                )
            {
                left = None;
                summary.jobs += 1;
                summary.failed += usize::from(left_state != JobState::Succeeded);
                if opts.max_jobs > 0 && summary.jobs >= opts.max_jobs {
                    break Ok(summary);
                }
            }
            continue;
        };
        if left.as_deref() == Some(a.job_id.as_str()) {
            left = None;
        }
        shared.begin(&a);
        let job_id = a.job_id.clone();
        let me = Me {
            worker_id: &session.worker_id,
            opts: &opts,
            listener: &listener,
            collective_address: &collective_address,
        };
        let outcome = run_assignment(&mut client, &me, a, &shared).await;
        shared.end();
        match outcome {
            Ok(Part::Succeeded) => summary.jobs += 1,
            Ok(Part::Failed) => {
                summary.jobs += 1;
                summary.failed += 1;
            }
            Ok(Part::Left) => {
                left = Some(job_id);
                continue;
            }
            // The report did not reach the coordinator (it is down or restarted): the job's
            // record there says what happens next (a restarted coordinator re-queues it).
            Err(Error::Rpc { call, status })
                if is_transient(&status) || status.code() == tonic::Code::NotFound =>
            {
                tracing::warn!(
                    "job {job_id}: `{call}` failed ({}); the coordinator decides what follows",
                    status.message()
                );
                left = Some(job_id);
                continue;
            }
            Err(e) => break Err(e),
        }
        if opts.max_jobs > 0 && summary.jobs >= opts.max_jobs {
            break Ok(summary);
        }
    };
    session.hb.abort();
    result
}

/// Longest a heartbeat or progress report is waited for: on a network that drops packets (a
/// partition) a call would otherwise hang for minutes, and with it the loop that notices the
/// job's end.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors that a coordinator restart or a network blip produce; worth retrying.
fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Aborted
    )
}

/// Exponential backoff between retries of an unreachable coordinator: 0.25 s doubling to 5 s.
#[derive(Default)]
struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    async fn wait(&mut self) {
        let d = self.next.unwrap_or(Duration::from_millis(250));
        tokio::time::sleep(d).await;
        self.next = Some((d * 2).min(Duration::from_secs(5)));
    }

    fn reset(&mut self) {
        self.next = None;
    }
}

/// State the heartbeat task shares with the worker loop.
#[derive(Clone)]
struct Shared {
    /// Jobs to stop (cancelled, failed elsewhere, or a generation left behind).
    stops: Arc<Mutex<HashSet<String>>>,
    /// The job and generation being run, which heartbeats carry.
    running: Arc<Mutex<Option<(String, u32)>>>,
    /// The running generation's lease, renewed by answered heartbeats and progress reports.
    lease: Lease,
    /// The session of the current registration, which every call presents.
    session: SessionSlot,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            stops: Arc::default(),
            running: Arc::default(),
            // Until a registration says: half the coordinator's default heartbeat timeout.
            lease: Lease::new(Duration::from_secs(15)),
            session: SessionSlot::default(),
        }
    }
}

impl Shared {
    fn begin(&self, a: &Assignment) {
        self.lease.reset(None);
        if let Ok(mut r) = self.running.lock() {
            *r = Some((a.job_id.clone(), a.generation));
        }
        // A stop heard for an earlier generation of this job does not stop this one.
        if let Ok(mut s) = self.stops.lock() {
            s.remove(&a.job_id);
        }
    }

    fn end(&self) {
        if let Ok(mut r) = self.running.lock() {
            *r = None;
        }
    }

    fn running(&self) -> Option<(String, u32)> {
        self.running.lock().ok().and_then(|r| r.clone())
    }
}

/// One registration with the coordinator and its heartbeat task.
struct Session {
    worker_id: String,
    hb: tokio::task::JoinHandle<()>,
    /// Set when the coordinator says it does not know this worker (it restarted).
    lost: Arc<AtomicBool>,
}

impl Session {
    async fn start(
        client: &mut WorkerServiceClient<Conn>,
        opts: &WorkerOptions,
        collective_address: &str,
        shared: &Shared,
    ) -> std::result::Result<Self, tonic::Status> {
        let reg = client
            .register(RegisterRequest {
                hostname: hostname(),
                device: opts.device.clone(),
                collective_address: collective_address.to_string(),
            })
            .await?
            .into_inner();
        let worker_id = reg.worker_id.clone();
        shared
            .session
            .set(&reg.session)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        if reg.heartbeat_timeout_ms > 0 {
            shared.lease.reset(Some(Duration::from_millis(
                u64::from(reg.heartbeat_timeout_ms) / 2,
            )));
        }
        tracing::info!("registered as {worker_id} with {}", opts.coordinator);
        let lost = Arc::new(AtomicBool::new(false));
        let every = Duration::from_millis(reg.heartbeat_interval_ms.max(100) as u64);
        let hb = tokio::spawn(heartbeats(
            client.clone(),
            worker_id.clone(),
            every,
            shared.clone(),
            lost.clone(),
        ));
        Ok(Self {
            worker_id,
            hb,
            lost,
        })
    }

    fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    fn lose(&self) {
        self.lost.store(true, Ordering::Relaxed);
    }
}

/// Heartbeats run independently of job work so a long epoch never looks like a dead worker.
/// They carry the job and generation being run, so a rank of a generation that the job left
/// behind (it restarted without this worker) hears that it must stop; a coordinator that no
/// longer knows this worker stops its job too (a restarted coordinator re-queued it).
async fn heartbeats(
    mut client: WorkerServiceClient<Conn>,
    id: String,
    every: Duration,
    shared: Shared,
    lost: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let reported = shared.running();
        let (job_id, generation) = reported.clone().unwrap_or_default();
        let sent = std::time::Instant::now();
        let call = client.heartbeat(HeartbeatRequest {
            worker_id: id.clone(),
            job_id,
            generation,
        });
        let r = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(e)) => {
                tracing::warn!("heartbeat failed: {}", e.message());
                continue;
            }
            Err(_) => {
                tracing::warn!("heartbeat unanswered for {CALL_TIMEOUT:?}");
                continue;
            }
        };
        let now = shared.running();
        let Ok(mut stops) = shared.stops.lock() else {
            continue;
        };
        if !r.known {
            if !lost.swap(true, Ordering::Relaxed) {
                tracing::warn!("the coordinator no longer knows worker {id}: registering again");
            }
            stops.extend(now.map(|(job, _)| job));
            continue;
        }
        // The generation ran when the call was sent: its lease is renewed from then.
        if reported.is_some()
            && now == reported
            && !r
                .stop_job_ids
                .iter()
                .any(|j| Some(j) == now.as_ref().map(|(j, _)| j))
        {
            shared.lease.confirm(sent);
        }
        // A stop that answers another generation than the one running now (the worker moved
        // on while the call was out) is not for it.
        stops.extend(
            r.stop_job_ids
                .into_iter()
                .filter(|j| now.as_ref().is_none_or(|(job, _)| job != j) || now == reported),
        );
    }
}

/// How this worker's part of one generation of a job ended.
enum Part {
    Succeeded,
    /// Failed by the job's own fault: the job fails.
    Failed,
    /// Aborted with the generation (a peer lost, a rendezvous voided, stopped for a restart): the
    /// job may go on, in a new generation, with or without this worker.
    Left,
}

/// This worker, as an assignment needs it.
struct Me<'a> {
    worker_id: &'a str,
    opts: &'a WorkerOptions,
    listener: &'a Arc<TcpListenerHandle>,
    collective_address: &'a str,
}

/// Which collective this rank proposes for a multi-rank training job (rank 0's choice wins:
/// it travels as the presence of an NCCL id in the rendezvous).
fn choose_collective(a: &Assignment, me: &Me<'_>) -> Result<&'static str> {
    let Some(Kind::Train(t)) = a.spec.as_ref().and_then(|s| s.kind.clone()) else {
        return Ok("none");
    };
    if a.world_size <= 1 {
        return Ok("none");
    }
    let cfg = flowsynth_common::config::JobConfig::from_toml(&t.config_toml, "job config")?;
    let device = jobs::train_device(&cfg, &me.opts.device)?;
    let asked = match a.spec.as_ref().map(|s| s.collective.as_str()) {
        Some("tcp") => "tcp",
        Some("nccl") => "nccl",
        _ => match me.opts.collective.as_str() {
            "tcp" => "tcp",
            "nccl" => "nccl",
            _ if device.is_cuda() && Nccl::available() => "nccl",
            _ => "tcp",
        },
    };
    if asked == "nccl" && !(device.is_cuda() && Nccl::available()) {
        return Err(Error::Device {
            device: format!("{device:?}"),
            reason: "the job asks for NCCL, which needs a CUDA device and a loadable libnccl \
                     (set FLOWSYNTH_NCCL_LIB to libnccl.so.2)"
                .into(),
        });
    }
    Ok(asked)
}

/// Runs the rendezvous of the assignment's generation; `None` when the coordinator aborted it.
async fn rendezvous(
    client: &mut WorkerServiceClient<Conn>,
    me: &Me<'_>,
    a: &Assignment,
) -> Result<Option<Peers>> {
    let collective = choose_collective(a, me)?;
    let nccl_unique_id = if collective == "nccl" && a.rank == 0 {
        Nccl::unique_id()?.0
    } else {
        Vec::new()
    };
    loop {
        let r = client
            .rendezvous(RendezvousRequest {
                worker_id: me.worker_id.to_string(),
                job_id: a.job_id.clone(),
                generation: a.generation,
                rank: a.rank,
                collective_address: me.collective_address.to_string(),
                nccl_unique_id: nccl_unique_id.clone(),
                wait_ms: 10_000,
            })
            .await
            .map_err(Error::rpc("rendezvous"))?
            .into_inner();
        if r.abort {
            tracing::warn!("job {}: rendezvous aborted: {}", a.job_id, r.message);
            return Ok(None);
        }
        if !r.complete {
            continue;
        }
        if collective == "none" {
            return Ok(Some(Peers::Alone));
        }
        if !r.nccl_unique_id.is_empty() {
            // Rank 0 chose NCCL; this rank must follow or fail clearly.
            if collective != "nccl" && !Nccl::available() {
                return Err(Error::Assignment {
                    reason: "rank 0 chose NCCL but libnccl cannot be loaded on this worker".into(),
                });
            }
            return Ok(Some(Peers::Nccl {
                unique_id: r.nccl_unique_id,
            }));
        }
        let mut addresses = vec![String::new(); a.world_size as usize];
        for p in &r.peers {
            if let Some(slot) = addresses.get_mut(p.rank as usize) {
                *slot = p.address.clone();
            }
        }
        if let Some(missing) = addresses.iter().position(String::is_empty) {
            return Err(Error::Assignment {
                reason: format!("the rendezvous gave no collective address for rank {missing}"),
            });
        }
        return Ok(Some(Peers::Tcp {
            listener: me.listener.clone(),
            addresses,
        }));
    }
}

fn take_pending(pending: &Mutex<Pending>) -> Pending {
    pending
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default()
}

/// Sends one progress report (renewing the lease when answered); true when the coordinator
/// says to stop.
async fn report_progress(
    client: &mut WorkerServiceClient<Conn>,
    worker_id: &str,
    a: &Assignment,
    progress: Progress,
    pending: Pending,
    lease: &Lease,
) -> bool {
    let report = ProgressReport {
        worker_id: worker_id.to_string(),
        job_id: a.job_id.clone(),
        rank: a.rank,
        progress: Some(progress),
        generation: a.generation,
        events: pending.events,
        chunks_done: pending.chunks,
    };
    let sent = std::time::Instant::now();
    match tokio::time::timeout(CALL_TIMEOUT, client.report_progress(report)).await {
        Ok(Ok(ack)) => {
            let stop = ack.get_ref().stop;
            if !stop {
                lease.confirm(sent);
            }
            stop
        }
        Ok(Err(e)) => {
            tracing::warn!("progress report failed: {}", e.message());
            false
        }
        Err(_) => {
            tracing::warn!("progress report unanswered for {CALL_TIMEOUT:?}");
            false
        }
    }
}

/// What a rank reports when its part of a job failed.
fn failure_report(worker_id: &str, a: &Assignment, e: &Error) -> DoneReport {
    DoneReport {
        worker_id: worker_id.to_string(),
        job_id: a.job_id.clone(),
        rank: a.rank,
        generation: a.generation,
        success: false,
        retryable: e.is_retryable(),
        message: e.to_string(),
        ..Default::default()
    }
}

/// Runs one assignment to its end and reports it.
async fn run_assignment(
    client: &mut WorkerServiceClient<Conn>,
    me: &Me<'_>,
    a: Assignment,
    shared: &Shared,
) -> Result<Part> {
    let worker_id = me.worker_id;
    tracing::info!(
        "job {}: rank {}/{} (generation {})",
        a.job_id,
        a.rank,
        a.world_size,
        a.generation
    );
    // Rendezvous: every rank of the generation must arrive before work starts.
    let peers = match rendezvous(client, me, &a).await {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(Part::Left),
        Err(e) => {
            tracing::error!("job {} failed before it started: {e}", a.job_id);
            let report = failure_report(worker_id, &a, &e);
            client
                .report_done(report)
                .await
                .map_err(Error::rpc("report_done"))?;
            return Ok(if e.is_retryable() {
                Part::Left
            } else {
                Part::Failed
            });
        }
    };

    let (ptx, mut prx) = watch::channel(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let pending: Arc<Mutex<Pending>> = Arc::default();
    let lease = shared.lease.clone();
    let ctx = JobContext {
        progress: ptx,
        stop: stop.clone(),
        device: me.opts.device.clone(),
        peers,
        pending: pending.clone(),
        lease: lease.clone(),
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
                if shared.stops.lock().map(|s| s.contains(&a.job_id)).unwrap_or(false) {
                    stop.store(true, Ordering::Relaxed);
                }
                let new = take_pending(&pending);
                if prx.has_changed().unwrap_or(false) || !new.is_empty() {
                    let p = prx.borrow_and_update().clone();
                    if report_progress(client, worker_id, &a, p, new, &lease).await {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
    };
    // What the job's last moments produced goes before its end is reported.
    let last = take_pending(&pending);
    if !last.is_empty() {
        let p = prx.borrow().clone();
        report_progress(client, worker_id, &a, p, last, &lease).await;
    }
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
            generation: a.generation,
            success: true,
            retryable: false,
            message: String::new(),
            result_url: o.result_url.clone(),
            outputs: o.outputs.clone(),
            rows_written: o.rows_written,
            coherence_sum: o.coherence.0,
            coherence_rows: o.coherence.1,
            image_view_json: o.image_view.clone(),
            generation_seconds: o.generation_seconds,
        },
        Err(e) => {
            tracing::error!("job {} failed: {e}", a.job_id);
            failure_report(worker_id, &a, e)
        }
    };
    let part = match &outcome {
        Ok(_) => Part::Succeeded,
        Err(e) if e.is_retryable() => Part::Left,
        Err(_) => Part::Failed,
    };
    client
        .report_done(report)
        .await
        .map_err(Error::rpc("report_done"))?;
    Ok(part)
}
