//! The gRPC services of `proto/`: grpcio clients and service traits for `tikvpb.Tikv`,
//! `pdpb.PD` and `pd_memberpb.PdMember`, generated from the descriptors `proto` built. The message modules are
//! re-exported so that the generated code finds them where it expects (`super::kvrpcpb`).
//! Depends on `proto` and nothing else of Flotilla.

#![allow(warnings, missing_docs, clippy::all)]

pub use proto::*;

include!(concat!(env!("OUT_DIR"), "/modules.rs"));
