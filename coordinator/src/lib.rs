//! The flowsynth coordinator: the control plane of training and sampling jobs.
//!
//! It accepts jobs from clients (`JobService`), keeps a registry of workers (`WorkerService`),
//! waits until a job has enough free workers, gives each a rank and its share of the work
//! (dataset row groups balanced by rows for training, seeded chunks for sampling), runs the
//! rendezvous through which ranks find each other, and tracks progress, completion and failure.
//! Job records are persisted in an object store so a restarted coordinator picks up where it was.

pub mod auth;
mod error;
pub mod plan;
mod service;

use std::net::SocketAddr;

pub use error::{Error, Result};
use flowsynth_common::store::Location;
use flowsynth_proto::job_service_server::JobServiceServer;
use flowsynth_proto::worker_service_server::WorkerServiceServer;
pub use service::{Coordinator, CoordinatorConfig};
use tokio::net::TcpListener;

/// Binds `addr` (port 0 picks a free port).
pub async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        addr: addr.to_string(),
        source,
    })
}

/// Serves both services on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    store: Location,
    config: CoordinatorConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let local: Option<SocketAddr> = listener.local_addr().ok();
    let mut server = tonic::transport::Server::builder();
    if let Some((cert, key)) = &config.tls_identity {
        // A certificate or key that does not parse fails here, before anything is served.
        let identity = tonic::transport::Identity::from_pem(cert, key);
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| Error::Tls(e.to_string()))?;
    }
    let coordinator = Coordinator::open(store.clone(), config.clone()).await?;
    let closer = coordinator.clone();
    let reaper = coordinator.clone();
    let interval = config.heartbeat_interval;
    let reap_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            reaper.reap();
        }
    });
    tracing::info!(
        "coordinator listening on {} (state in {})",
        local.map(|a| a.to_string()).unwrap_or_default(),
        store
    );
    // grpc.health.v1 for Kubernetes probes and load balancers: serving only once the store is
    // open and the job records are loaded (`Coordinator::open` above), for the whole server ("")
    // and for each service by its full name.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<JobServiceServer<Coordinator>>().await;
    health
        .set_serving::<WorkerServiceServer<Coordinator>>()
        .await;
    // Tokens per scope; the health service stays open (probes carry no token).
    let tokens = auth::Tokens::new(config.client_token.clone(), config.worker_token.clone());
    let client_tokens = tokens.clone();
    let jobs = JobServiceServer::with_interceptor(coordinator.clone(), move |r| {
        client_tokens.check(auth::Scope::Client, &r).map(|()| r)
    });
    let workers = WorkerServiceServer::with_interceptor(coordinator, move |r| {
        tokens.check(auth::Scope::Worker, &r).map(|()| r)
    });
    let result = server
        .add_service(health_service)
        .add_service(jobs)
        .add_service(workers)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
        .map_err(Error::Serve);
    reap_task.abort();
    let _ = reap_task.await;
    closer.close(std::time::Duration::from_secs(5)).await;
    result
}
