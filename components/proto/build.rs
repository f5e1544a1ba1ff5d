//! Generates Rust for `proto/*.proto`: messages with rust-protobuf 2 (pure Rust parser, so
//! no `protoc` is needed) and gRPC services with grpcio-compiler.

use std::{env, fs, path::PathBuf};

const FILES: &[&str] = &[
    "metapb",
    "errorpb",
    "kvrpcpb",
    "raft_serverpb",
    "raft_cmdpb",
    "pdpb",
    "tikvpb",
];
const SERVICES: &[&str] = &["pdpb", "tikvpb"];

fn main() {
    let proto_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("../../proto")
        .canonicalize()
        .expect("proto/ directory at the workspace root");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let inputs: Vec<PathBuf> = FILES
        .iter()
        .map(|f| proto_dir.join(format!("{f}.proto")))
        .collect();
    for input in &inputs {
        println!("cargo:rerun-if-changed={}", input.display());
    }

    protobuf_codegen_pure::Codegen::new()
        .out_dir(&out_dir)
        .include(&proto_dir)
        .inputs(&inputs)
        .run()
        .expect("generate protobuf messages");

    let input_refs: Vec<&std::path::Path> = inputs.iter().map(|p| p.as_path()).collect();
    let parsed = protobuf_codegen_pure::parse_and_typecheck(&[proto_dir.as_path()], &input_refs)
        .expect("parse protos for gRPC codegen");
    let to_generate: Vec<String> = SERVICES.iter().map(|s| format!("{s}.proto")).collect();
    for file in grpcio_compiler::codegen::gen(&parsed.file_descriptors, &to_generate) {
        fs::write(out_dir.join(&file.name), &file.content).expect("write gRPC service code");
    }

    let mut modules = String::new();
    for name in FILES
        .iter()
        .map(|f| f.to_string())
        .chain(SERVICES.iter().map(|s| format!("{s}_grpc")))
    {
        let path = out_dir.join(format!("{name}.rs"));
        modules.push_str(&format!(
            "#[path = {:?}]\npub mod {name};\n",
            path.to_str().expect("OUT_DIR is valid UTF-8")
        ));
    }
    fs::write(out_dir.join("modules.rs"), modules).expect("write module list");
}
