//! slimforge: builds slim container images from multi-stage builds inside a
//! Kubernetes cluster, without a Docker daemon.

pub mod assemble;
pub mod dockerfile;
pub mod oci;
pub mod plan;
pub mod recipe;
pub mod stage;
