//! Generates Rust for `proto/*.proto`: `protoc` parses the files into descriptors, then
//! rust-protobuf 2 generates the messages. (rust-protobuf's pure-Rust parser drops service
//! definitions, so `protoc` is required; `PROTOC` may name it.) The descriptor set is
//! passed on to `proto_grpc`'s build (as `DEP_FLOTILLA_PROTO_DESCRIPTORS`), which
//! generates the services from it.

use std::{env, fs, path::PathBuf, process::Command};

use protobuf::Message;

const FILES: &[&str] = &[
    "metapb",
    "errorpb",
    "kvrpcpb",
    "raft_serverpb",
    "raft_cmdpb",
    "pdpb",
    "pd_memberpb",
    "tikvpb",
    "mvccpb",
    "authpb",
];

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
    // Relative to this package: the target directory is shared by every checkout (CI
    // clones anew each run), and an absolute path would tie reruns to whichever checkout
    // ran the script last.
    for f in FILES {
        println!("cargo:rerun-if-changed=../../proto/{f}.proto");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");

    let set_path = out_dir.join("descriptors.bin");
    let protoc = env::var("PROTOC").unwrap_or_else(|_| "protoc".into());
    let status = Command::new(&protoc)
        .arg(format!("-I{}", proto_dir.display()))
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", set_path.display()))
        .args(&inputs)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {protoc} (install protobuf-compiler): {e}"));
    assert!(status.success(), "{protoc} rejected the .proto files");
    let set = protobuf::descriptor::FileDescriptorSet::parse_from_bytes(
        &fs::read(&set_path).expect("read descriptor set"),
    )
    .expect("decode descriptor set");
    let descriptors = set.get_file();

    let messages: Vec<String> = FILES.iter().map(|f| format!("{f}.proto")).collect();
    let generated = protobuf_codegen::gen(descriptors, &messages, &Default::default());
    let mut modules = String::new();
    for file in generated {
        let path = out_dir.join(&file.name);
        fs::write(&path, &file.content).expect("write generated code");
        let module = file.name.trim_end_matches(".rs");
        modules.push_str(&format!(
            "#[path = {:?}]\npub mod {module};\n",
            path.to_str().expect("OUT_DIR is valid UTF-8")
        ));
    }
    fs::write(out_dir.join("modules.rs"), modules).expect("write module list");
    println!("cargo:descriptors={}", set_path.display());
}
