//! The wire messages: Rust generated from `proto/` by rust-protobuf 2, and nothing else.
//! The gRPC services are in `proto_grpc`, so that crates which only store or pass
//! messages (raftstore, txn) link no gRPC. Depends on no other part of Flotilla.

#![allow(warnings, missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/modules.rs"));
