//! The gRPC services of `proto/`: grpcio clients and service traits for `tikvpb.Tikv` and
//! `pdpb.PD`, generated from the descriptors `proto` built. The message modules are
//! re-exported so that the generated code finds them where it expects (`super::kvrpcpb`).
//! Depends on `proto` and nothing else of Flotilla.

#![allow(warnings, missing_docs, clippy::all)]

pub use proto::{errorpb, kvrpcpb, metapb, mvccpb, pdpb, raft_cmdpb, raft_serverpb, tikvpb};

include!(concat!(env!("OUT_DIR"), "/modules.rs"));
