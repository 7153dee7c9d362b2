//! slimforge: builds slim container images from multi-stage builds inside a
//! Kubernetes cluster, without a Docker daemon.

pub mod api;
pub mod assemble;
pub mod cache;
pub mod contract;
pub mod controller;
pub mod dockerfile;
pub mod git;
pub mod local;
pub mod oci;
pub mod plan;
pub mod recipe;
pub mod rootfs;
pub mod schema;
pub mod stage;

/// Resolves on SIGTERM (a kubelet or CI stopping us) or Ctrl-C, with the
/// signal's number.
pub async fn shutdown_signal() -> i32 {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = terminate => SIGTERM,
        _ = tokio::signal::ctrl_c() => SIGINT,
    }
}

/// The signals [`shutdown_signal`] answers, by number.
pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;
