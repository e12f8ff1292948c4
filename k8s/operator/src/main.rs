//! `photon-operator`: watches `PhotonCluster` resources in every namespace
//! and reconciles each into a head, worker pods and a token Secret; runs
//! each `PhotonJob` on its cluster. Serves
//! `/healthz`, `/readyz` and `/metrics` on port 8080 (`PHOTON_OPERATOR_PORT`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use photon_operator::job::{job_error_policy, reconcile_job};
use photon_operator::reconcile::{Context, error_policy, reconcile};
use photon_operator::types::{PhotonCluster, PhotonJob};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PHOTON_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let client = Client::try_default().await.map_err(|e| {
        format!("cannot reach the Kubernetes API (in a pod, or with a kubeconfig): {e}")
    })?;
    let port: u16 = std::env::var("PHOTON_OPERATOR_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let readiness = photon_ops::Readiness::default();
    let reconciled = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let listener = photon_ops::bind(([0, 0, 0, 0], port).into(), "PHOTON_OPERATOR_PORT").await?;
    let metrics = {
        let (reconciled, failed) = (reconciled.clone(), failed.clone());
        move || {
            let mut metrics = photon_ops::Metrics::default();
            metrics
                .counter(
                    "photon_operator_reconciles",
                    "Reconciles of PhotonClusters and PhotonJobs that succeeded",
                    [(Vec::new(), reconciled.load(Ordering::Relaxed))],
                )
                .counter(
                    "photon_operator_reconcile_errors",
                    "Reconciles of PhotonClusters and PhotonJobs that failed (retried)",
                    [(Vec::new(), failed.load(Ordering::Relaxed))],
                );
            metrics
        }
    };
    tokio::spawn(photon_ops::serve(
        listener,
        photon_ops::router(readiness.clone(), metrics),
        None,
        std::future::pending(),
    ));

    let clusters: Api<PhotonCluster> = Api::all(client.clone());
    let context = Arc::new(Context::new(client.clone()));
    readiness.set(true);
    tracing::info!(
        port,
        "photon-operator watching PhotonClusters and PhotonJobs"
    );
    let count = |ok: bool| {
        let counter = if ok { &reconciled } else { &failed };
        counter.fetch_add(1, Ordering::Relaxed);
    };
    let config = watcher::Config::default;
    let cluster_controller = Controller::new(clusters.clone(), config())
        .owns(Api::<Pod>::all(client.clone()), config())
        .owns(Api::<Deployment>::all(client.clone()), config())
        .owns(Api::<Service>::all(client.clone()), config())
        .shutdown_on_signal()
        .run(reconcile, error_policy, context.clone())
        .for_each(|outcome| {
            count(outcome.is_ok());
            async {}
        });
    let job_controller = Controller::new(Api::<PhotonJob>::all(client.clone()), config())
        .owns(clusters, config())
        .shutdown_on_signal()
        .run(reconcile_job, job_error_policy, context)
        .for_each(|outcome| {
            count(outcome.is_ok());
            async {}
        });
    futures::join!(cluster_controller, job_controller);
    Ok(())
}
