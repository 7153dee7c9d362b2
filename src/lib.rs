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
pub mod stage;
