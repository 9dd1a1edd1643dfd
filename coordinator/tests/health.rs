//! The standard gRPC health service (grpc.health.v1), which Kubernetes probes call: served on the
//! coordinator's own port, over the wire, SERVING for the server and for both services by name.

#![allow(clippy::unwrap_used)]

use flowsynth_common::store::Location;
use flowsynth_coordinator::CoordinatorConfig;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn health_service_reports_serving_once_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Location::parse(dir.path().to_str().unwrap()).unwrap();
    let listener = flowsynth_coordinator::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(flowsynth_coordinator::serve(
        listener,
        store,
        CoordinatorConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    let mut health = HealthClient::new(channel);
    for service in ["", "flowsynth.v1.JobService", "flowsynth.v1.WorkerService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "service `{service}`");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "flowsynth.v1.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
