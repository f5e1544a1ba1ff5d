//! The wire contract: Rust generated from `proto/` (rust-protobuf 2 messages, grpcio
//! services), and nothing else. Every other crate speaks these types; this crate depends on
//! no other part of Flotilla.

#![allow(warnings, missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/modules.rs"));
