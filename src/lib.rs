//! slimforge: builds slim container images from multi-stage builds inside a
//! Kubernetes cluster, without a Docker daemon.

pub mod api;
pub mod assemble;
pub mod controller;
pub mod dockerfile;
pub mod local;
pub mod oci;
pub mod plan;
pub mod recipe;
pub mod schema;
pub mod stage;

/// Resolves on SIGTERM (a kubelet or CI stopping us) or Ctrl-C.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
