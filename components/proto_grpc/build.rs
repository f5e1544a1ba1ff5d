//! Generates the gRPC services of `proto/` (grpcio-compiler) from the descriptor set that
//! `proto`'s build wrote, so that `protoc` runs once.

use std::{env, fs, path::PathBuf};

use protobuf::Message;

const SERVICES: &[&str] = &["pdpb", "pd_memberpb", "tikvpb", "authpb"];

fn main() {
    let set_path = env::var("DEP_FLOTILLA_PROTO_DESCRIPTORS")
        .expect("proto's build script names its descriptor set");
    // Reruns when proto's build writes a new descriptor set (a .proto file changed).
    println!("cargo:rerun-if-changed={set_path}");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let set = protobuf::descriptor::FileDescriptorSet::parse_from_bytes(
        &fs::read(&set_path).expect("read descriptor set"),
    )
    .expect("decode descriptor set");
    let services: Vec<String> = SERVICES.iter().map(|s| format!("{s}.proto")).collect();
    let mut modules = String::new();
    for file in grpcio_compiler::codegen::gen(set.get_file(), &services) {
        let path = out_dir.join(&file.name);
        fs::write(&path, &file.content).expect("write generated code");
        let module = file.name.trim_end_matches(".rs");
        modules.push_str(&format!(
            "#[path = {:?}]\npub mod {module};\n",
            path.to_str().expect("OUT_DIR is valid UTF-8")
        ));
    }
    fs::write(out_dir.join("modules.rs"), modules).expect("write module list");
}
