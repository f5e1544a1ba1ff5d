//! The templates in etc/ parse with unknown keys denied, validate, and spell out exactly
//! the defaults (so the documentation cannot drift from the code).

use std::path::Path;

fn etc(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("etc").join(name)
}

#[test]
fn kv_server_template_is_the_defaults() {
    let cfg: node::Config = conf::load(&etc("kv-server.toml")).expect("template parses");
    assert_eq!(cfg, node::Config::default());
}

#[test]
fn pd_server_template_is_the_defaults() {
    let cfg: pd::FileConfig = conf::load(&etc("pd-server.toml")).expect("template parses");
    let expected = pd::FileConfig {
        status_addr: "127.0.0.1:2380".into(),
        ..Default::default()
    };
    assert_eq!(cfg, expected);
}

#[test]
fn unknown_and_invalid_keys_are_rejected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\naddr = \"127.0.0.1:1\"\nadress = \"typo\"\n",
    )
    .unwrap();
    let err = conf::load::<node::Config>(&path).unwrap_err().to_string();
    assert!(err.contains("adress"), "{err}");
    std::fs::write(&path, "[raftstore]\nraft-heartbeat-ticks = 20\n").unwrap();
    let err = conf::load::<node::Config>(&path).unwrap_err().to_string();
    assert!(err.contains("raft-election-timeout-ticks"), "{err}");
    std::fs::write(&path, "[server]\naddr = \"not an address\"\n").unwrap();
    let err = conf::load::<node::Config>(&path).unwrap_err().to_string();
    assert!(err.contains("server.addr"), "{err}");
    std::fs::write(&path, "[raftstore\n").unwrap();
    let err = conf::load::<node::Config>(&path).unwrap_err().to_string();
    assert!(err.contains("invalid config file"), "{err}");
}
