//! TLS on every port: a cluster whose certificates `kvctl cert init` made serves kvctl,
//! Flotilla's client and TiKV's Rust client with certificates, and refuses plaintext
//! clients, certificates of another CA, common names outside `cert-allowed-cn`, and Raft
//! traffic from a holder of a client certificate. Certificates rotate without a restart.

use crate::{common, hostile};

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use common::{cert_init, https_get, tls_config, voters, wait_until, ProcCluster};
use proto_grpc::tikvpb_grpc::TikvClient;
use util::security::{Credentials, Security};

const T: Duration = Duration::from_secs(60);

/// kvctl against `pd` with the CA of `dir` and its certificate `stem` (no TLS flags at
/// all if `dir` is `None`), giving up soon.
fn kvctl_as(pd: &str, dir: Option<&Path>, stem: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    cmd.args(["--pd", pd, "--connect-timeout", "3s", "--timeout", "5s"]);
    if let Some(dir) = dir {
        cmd.arg("--ca-path").arg(dir.join("ca.pem"));
        if !stem.is_empty() {
            cmd.arg("--cert-path")
                .arg(dir.join(format!("{stem}.pem")))
                .arg("--key-path")
                .arg(dir.join(format!("{stem}-key.pem")));
        }
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kvctl")
}

fn refused(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "{what} was served: {}{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

/// A Flotilla client dialing with `cfg`.
fn client_with(
    rt: &tokio::runtime::Runtime,
    pd: &str,
    cfg: &util::security::SecurityConfig,
    timeout: Duration,
) -> client::Result<client::Client> {
    let creds = Credentials {
        security: Security::new(cfg).expect("TLS settings"),
        secret: None,
        token: None,
    };
    rt.block_on(client::Client::connect_within(
        &[pd.to_string()],
        timeout,
        timeout,
        creds,
    ))
}

#[test]
fn tls_cluster_serves_clients_with_certificates_and_refuses_the_rest() {
    let allowed = "flotilla-pd,flotilla-store,root";
    let cluster = ProcCluster::start_tls(3, 3, &["--cert-allowed-cn", allowed]);
    let certs = cluster.tls.clone().expect("a TLS cluster");
    let pd = cluster.pd_addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = common::client(&rt, &pd);
    wait_until("3 voters", T, || voters(&rt, &c) == 3);

    // kvctl, Flotilla's client and TiKV's client, each with the client certificate.
    let out = common::kvctl(&pd, &["put", "from-kvctl", "1"]);
    assert!(out.status.success(), "{out:?}");
    rt.block_on(c.put(b"from-client", b"2")).expect("put");
    rt.block_on(async {
        let cfg = tikv_client::Config::default().with_security(
            certs.join("ca.pem"),
            certs.join("client.pem"),
            certs.join("client-key.pem"),
        );
        let endpoints: Vec<String> = pd.split(',').map(str::to_string).collect();
        let tikv = tikv_client::RawClient::new_with_config(endpoints, cfg)
            .await
            .expect("tikv-client connects with TLS");
        tikv.put("from-tikv".to_owned(), "3".to_owned())
            .await
            .expect("tikv put");
        assert_eq!(
            tikv.get("from-kvctl".to_owned()).await.unwrap(),
            Some(b"1".to_vec())
        );
    });
    assert_eq!(
        rt.block_on(c.get(b"from-tikv")).unwrap(),
        Some(b"3".to_vec())
    );
    let out = common::kvctl(&pd, &["get", "from-client"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2\n", "{out:?}");

    // A plaintext client, a client of another CA, and a certificate of this CA whose
    // name is not allowed: refused, and nothing they sent was written.
    refused(
        &kvctl_as(&pd, None, "", &["put", "plain", "x"]),
        "a plaintext client",
    );
    assert!(
        client_with(&rt, &pd, &Default::default(), Duration::from_secs(3)).is_err(),
        "a plaintext Flotilla client connected"
    );
    let foreign = cluster.dir.path().join("foreign");
    cert_init(&foreign);
    refused(
        &kvctl_as(&pd, Some(&foreign), "client", &["put", "foreign", "x"]),
        "a certificate of another CA",
    );
    refused(
        &kvctl_as(&pd, Some(&certs), "", &["put", "no-cert", "x"]),
        "a client without a certificate",
    );
    common::cert_issue(&certs, "mallory");
    let err = refused(
        &kvctl_as(&pd, Some(&certs), "mallory", &["put", "mallory", "x"]),
        "a common name outside cert-allowed-cn",
    );
    assert!(err.contains("cert-allowed-cn"), "{err}");
    for k in ["plain", "foreign", "no-cert", "mallory"] {
        assert_eq!(rt.block_on(c.get(k.as_bytes())).unwrap(), None, "{k}");
    }

    // Raft traffic from a holder of a client certificate (this CA, an allowed name, but
    // not a cluster process): refused.
    let regions = rt.block_on(c.regions()).unwrap();
    let root = Security::new(&tls_config(&certs, "client")).unwrap();
    let env = std::sync::Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
    for i in 0..3 {
        let addr = format!("127.0.0.1:{}", cluster.store_addrs[i].0);
        let store = TikvClient::new(root.connect(grpcio::ChannelBuilder::new(env.clone()), &addr));
        hostile::forge_raft_traffic_with(&rt, &store, &regions);
    }
    assert_eq!(rt.block_on(c.regions()).unwrap().len(), regions.len());
    for r in rt.block_on(c.regions()).unwrap() {
        assert_eq!(r.region.get_peers().len(), 3, "{r:?}");
    }

    // Status ports speak HTTPS and ask for a certificate too.
    let status = cluster.status_addr(0);
    let metrics = https_get(&tls_config(&certs, "client"), &status, "/metrics")
        .expect("a store's metrics over HTTPS");
    assert!(metrics.contains("flotilla_"), "{metrics}");
    assert!(
        common::http_get(&status, "/metrics").is_none(),
        "plaintext HTTP answered"
    );
    assert!(
        https_get(&tls_config(&certs, ""), &status, "/metrics").is_none(),
        "HTTPS without a client certificate answered"
    );
    assert!(https_get(&tls_config(&foreign, "client"), &status, "/metrics").is_none());
    let pd_status = cluster.pd_status_addr();
    assert!(https_get(&tls_config(&certs, "client"), &pd_status, "/status").is_some());

    // A TLS client on a plaintext port: refused (a lone plaintext pd-server).
    let plain_dir = tempfile::tempdir().unwrap();
    let plain_addr = format!("127.0.0.1:{}", common::free_port());
    let _plain = common::Proc::spawn(
        "plain-pd",
        env!("CARGO_BIN_EXE_pd-server"),
        &[
            "--addr".into(),
            plain_addr.clone(),
            "--data-dir".into(),
            plain_dir.path().join("pd").display().to_string(),
            "--status-addr".into(),
            String::new(),
        ],
        plain_dir.path(),
        plain_dir.path(),
    );
    wait_until("the plaintext PD answers", T, || {
        kvctl_as(&plain_addr, None, "", &["store", "list"])
            .status
            .success()
    });
    refused(
        &kvctl_as(&plain_addr, Some(&certs), "client", &["store", "list"]),
        "a TLS client on a plaintext port",
    );
}

/// Writes `text` to `path` through a rename, as an operator's deploy tool would: a
/// reader sees the old file or the new one, never half of one.
fn replace(path: &Path, text: &[u8]) {
    let tmp = PathBuf::from(format!("{}.new", path.display()));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn certificates_rotate_without_a_restart() {
    let mut cluster = ProcCluster::start_tls(1, 1, &[]);
    let certs = cluster.tls.clone().expect("a TLS cluster");
    let pd = cluster.pd_addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = common::client(&rt, &pd);
    rt.block_on(c.put(b"before", b"1")).expect("put");

    // A new CA: the servers trust both while their certificates move to the new one.
    let new = cluster.dir.path().join("new");
    cert_init(&new);
    let read = |p: PathBuf| std::fs::read(p).unwrap();
    // The old CA alone, with the old client certificate (which the servers still
    // accept): a client that will refuse the servers' new certificates.
    let old_ca = cluster.dir.path().join("old-ca.pem");
    std::fs::write(&old_ca, read(certs.join("ca.pem"))).unwrap();
    let old_only = util::security::SecurityConfig {
        ca_path: old_ca,
        ..tls_config(&certs, "client")
    };
    let both = [read(certs.join("ca.pem")), read(new.join("ca.pem"))].concat();
    for stem in ["pd", "store"] {
        replace(
            &certs.join(format!("{stem}-key.pem")),
            &read(new.join(format!("{stem}-key.pem"))),
        );
        replace(
            &certs.join(format!("{stem}.pem")),
            &read(new.join(format!("{stem}.pem"))),
        );
    }
    replace(&certs.join("ca.pem"), &both);

    // A client that trusts only the new CA and holds only a new certificate reaches PD
    // and the store: both present their new certificates and accept the new client's.
    let fresh = tls_config(&new, "client");
    wait_until("a client of the new CA is served", T, || {
        client_with(&rt, &pd, &fresh, Duration::from_secs(3))
            .is_ok_and(|n| rt.block_on(n.get(b"before")).is_ok_and(|v| v.is_some()))
    });
    let n = client_with(&rt, &pd, &fresh, T).unwrap();
    rt.block_on(n.put(b"after", b"2"))
        .expect("put with the new certificates");
    assert!(https_get(&fresh, &cluster.status_addr(0), "/status").is_some());
    // One that trusts only the old CA no longer accepts the servers' certificates: the
    // rotation took effect (the processes never restarted).
    assert!(client_with(&rt, &pd, &old_only, Duration::from_secs(3)).is_err());
    assert!(
        cluster.stores[0].as_mut().is_some_and(|p| p.is_running())
            && cluster.pds[0].as_mut().is_some_and(|p| p.is_running()),
        "nothing restarted"
    );
}
