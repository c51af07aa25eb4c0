//! girder: a Kubernetes operator for physical datacenter operations.

pub mod api;
pub mod controller;
pub mod crdgen;
pub mod graph;
pub mod k8s;
pub mod operator;
