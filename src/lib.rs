//! girder: a Kubernetes operator for physical datacenter operations.

pub mod agent;
pub mod api;
pub mod bmc;
pub mod controller;
pub mod crdgen;
pub mod dns;
pub mod graph;
pub mod ipam;
pub mod k8s;
pub mod operator;
pub mod plan;
pub mod pxe;
pub mod tls;
