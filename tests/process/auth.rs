//! Users and roles: kvctl sets them up as an operator would; users log in through PD and
//! every store checks their token (or their certificate's name) against their roles for
//! every key a request touches. Tokens expire, die with their user, and cannot be forged;
//! a guessing loop is slowed down without slowing the cluster; the shell's SIGNUP,
//! LOGIN, WHOAMI and LOGOUT work through its real input.

use crate::common;

use std::{
    io::Write,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{voters, wait_until, ProcCluster};
use proto::{authpb, kvrpcpb};
use proto_grpc::{authpb_grpc::AuthClient, tikvpb_grpc::TikvClient};
use util::security::{Credentials, Security};

const T: Duration = Duration::from_secs(60);

/// kvctl with `input` on its standard input; as the operator (the cluster's secret or
/// root's certificate) or, with `operator` false, as nobody in particular.
fn kvctl_in(pd: &str, operator: bool, args: &[&str], input: &str) -> Output {
    let mut cmd = match operator {
        true => common::kvctl_command(pd),
        false => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_kvctl"));
            c.args(["--pd", pd]);
            c
        }
    };
    let mut child = cmd
        .args(args)
        .env("FLOTILLA_TOKEN_FILE", "/nonexistent/kvctl-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kvctl");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .expect("write kvctl's input");
    child.wait_with_output().expect("kvctl ends")
}

fn ok(out: &Output) {
    assert!(out.status.success(), "{out:?}");
}

fn stderr(out: &Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A plaintext client whose calls carry `token` (and no cluster secret).
fn client_as(rt: &tokio::runtime::Runtime, pd: &str, token: Option<String>) -> client::Client {
    let creds = Credentials {
        security: Security::plaintext(),
        secret: None,
        token,
    };
    rt.block_on(client::Client::connect_with(
        &[pd.to_string()],
        Duration::from_secs(10),
        creds,
    ))
    .expect("connect")
}

/// A token for `name`, or PD's refusal.
fn login(
    rt: &tokio::runtime::Runtime,
    c: &client::Client,
    name: &str,
    pw: &str,
) -> Result<String, String> {
    let mut req = authpb::LoginRequest::default();
    req.set_name(name.into());
    req.set_password(pw.into());
    rt.block_on(c.pd().auth_call(&req, AuthClient::login_async_opt))
        .map(|r| r.token)
        .map_err(|e| e.to_string())
}

/// A raw get of `key` sent to the store at `addr` itself (no routing: it serves or
/// forwards), with `token`: the value, or the error it answered with.
fn direct_get(addr: &str, token: &str, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let env = std::sync::Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
    let store = TikvClient::new(grpcio::ChannelBuilder::new(env).connect(addr));
    let mut md = grpcio::MetadataBuilder::new();
    if !token.is_empty() {
        md.add_str("authorization", &format!("Bearer {token}"))
            .expect("header");
    }
    let opt = grpcio::CallOption::default()
        .headers(md.build())
        .timeout(Duration::from_secs(10));
    let mut req = kvrpcpb::RawGetRequest::default();
    req.set_key(key.to_vec());
    let mut resp = store
        .raw_get_opt(&req, opt)
        .map_err(|e| format!("grpc: {e}"))?;
    if resp.has_region_error() {
        return Err(format!("region error: {:?}", resp.get_region_error()));
    }
    match resp.get_error() {
        "" => Ok((!resp.not_found).then(|| resp.take_value())),
        e => Err(e.to_string()),
    }
}

fn store_addrs(cluster: &ProcCluster) -> Vec<String> {
    cluster
        .store_addrs
        .iter()
        .map(|(port, _)| format!("127.0.0.1:{port}"))
        .collect()
}

/// Sets up roles a-reader (read a/) and a-writer (readwrite a/), users root, alice
/// (a-reader) and bob (a-writer), and turns auth on, all with kvctl as the operator.
fn set_up_users(pd: &str) {
    let out = kvctl_in(pd, true, &["auth", "enable"], "");
    assert!(
        stderr(&out).contains("root"),
        "auth on needs root first: {out:?}"
    );
    for (user, pw) in [("root", "rootpw"), ("alice", "alicepw"), ("bob", "bobpw")] {
        ok(&kvctl_in(
            pd,
            true,
            &["user", "add", user, "--password-stdin"],
            &format!("{pw}\n"),
        ));
    }
    for role in ["a-reader", "a-writer"] {
        ok(&kvctl_in(pd, true, &["role", "add", role], ""));
    }
    ok(&kvctl_in(
        pd,
        true,
        &["role", "grant", "a-reader", "read", "--prefix", "a/"],
        "",
    ));
    ok(&kvctl_in(
        pd,
        true,
        &["role", "grant", "a-writer", "readwrite", "--prefix", "a/"],
        "",
    ));
    ok(&kvctl_in(
        pd,
        true,
        &["user", "grant-role", "alice", "a-reader"],
        "",
    ));
    ok(&kvctl_in(
        pd,
        true,
        &["user", "grant-role", "bob", "a-writer"],
        "",
    ));
    // Bad input: a range backwards, a name with a control character, a password too long.
    let out = kvctl_in(
        pd,
        true,
        &["role", "grant", "a-reader", "read", "--range", "z", "a"],
        "",
    );
    assert!(stderr(&out).contains("before its end"), "{out:?}");
    let out = kvctl_in(
        pd,
        true,
        &["user", "add", "eve\u{7}", "--password-stdin"],
        "pw\n",
    );
    assert!(stderr(&out).contains("user name"), "{out:?}");
    let long = format!("{}\n", "p".repeat(300));
    let out = kvctl_in(pd, true, &["user", "add", "eve", "--password-stdin"], &long);
    assert!(stderr(&out).contains("256"), "{out:?}");
    let out = kvctl_in(pd, true, &["signup", "root", "--password-stdin"], "mine\n");
    let err = stderr(&out);
    assert!(
        err.contains("auth is enabled") || err.contains("allow-signup = false"),
        "signup before auth: {out:?}"
    );
    ok(&kvctl_in(pd, true, &["auth", "enable"], ""));
}

#[test]
fn users_and_roles_bound_every_request() {
    let cluster = ProcCluster::start_configured(
        3,
        "",
        "[auth]\ntoken-ttl = \"6s\"\nallow-signup = true\ndefault-role = \"a-reader\"\n",
    );
    let pd = cluster.pd_addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let op = common::client(&rt, &pd);
    wait_until("3 voters", T, || voters(&rt, &op) == 3);
    rt.block_on(op.put(b"a/x", b"1")).expect("put a/x");
    rt.block_on(op.put(b"b/x", b"2")).expect("put b/x");
    set_up_users(&pd);

    // Every store refuses a caller without a token once it has heard auth is on.
    let stores = store_addrs(&cluster);
    wait_until("every store asks for a login", T, || {
        stores.iter().all(|s| {
            direct_get(s, "", b"a/x").is_err_and(|e| e.contains("authentication is required"))
        })
    });
    let anon = client_as(&rt, &pd, None);
    let err = rt.block_on(anon.put(b"a/y", b"x")).unwrap_err().to_string();
    assert!(err.contains("authentication is required"), "{err}");

    // alice reads a/, and nothing else; writes nothing; is no admin.
    let alice = client_as(&rt, &pd, Some(login(&rt, &op, "alice", "alicepw").unwrap()));
    assert!(
        rt.block_on(alice.pd().get_region(b"a/x")).is_ok(),
        "routing stays open"
    );
    assert_eq!(rt.block_on(alice.get(b"a/x")).unwrap(), Some(b"1".to_vec()));
    let denied = |r: client::Result<()>, what: &str| {
        let e = r.expect_err(what).to_string();
        assert!(e.contains("permission denied"), "{what}: {e}");
    };
    denied(rt.block_on(alice.put(b"a/x", b"9")), "alice writes a/x");
    denied(
        rt.block_on(alice.get(b"b/x")).map(|_| ()),
        "alice reads b/x",
    );
    denied(
        rt.block_on(alice.scan(b"a/", b"c/", 10)).map(|_| ()),
        "alice scans a/..c/",
    );
    assert_eq!(rt.block_on(alice.scan(b"a/", b"a0", 10)).unwrap().len(), 1);
    let err = rt
        .block_on(alice.pd().update_gc_safe_point(1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("admin"),
        "alice moves the GC safe point: {err}"
    );
    let region = rt
        .block_on(op.pd().get_region(b"a/x"))
        .unwrap()
        .region
        .get_id();
    denied(
        rt.block_on(alice.split_region(region, &[b"a/m".to_vec()]))
            .map(|_| ()),
        "alice splits",
    );

    // bob may write a/ only: a transaction that also writes b/ fails whole.
    let bob_token = login(&rt, &op, "bob", "bobpw").unwrap();
    let bob = client_as(&rt, &pd, Some(bob_token.clone()));
    let txn_bob = client::txn::TxnClient::new(&bob);
    let res = rt.block_on(async {
        let mut t = txn_bob.begin().await?;
        t.put(b"a/t1", b"v").await?;
        t.put(b"b/t1", b"v").await?;
        t.commit().await
    });
    assert!(res.unwrap_err().to_string().contains("permission denied"));
    let txn_op = client::txn::TxnClient::new(&op);
    let seen = rt.block_on(async {
        let t = txn_op.begin().await?;
        Ok::<_, client::Error>((t.get(b"a/t1").await?, t.get(b"b/t1").await?))
    });
    assert_eq!(
        seen.unwrap(),
        (None, None),
        "nothing of the refused transaction"
    );
    rt.block_on(async {
        let mut t = txn_bob.begin().await?;
        t.put(b"a/t2", b"v").await?;
        t.commit().await
    })
    .expect("bob writes a/ in a transaction");

    // root does everything.
    let root = client_as(&rt, &pd, Some(login(&rt, &op, "root", "rootpw").unwrap()));
    rt.block_on(root.put(b"b/x", b"3")).expect("root writes");
    assert!(rt.block_on(root.scan(b"", b"", 100)).unwrap().len() >= 2);
    rt.block_on(root.pd().update_gc_safe_point(1))
        .expect("root moves the safe point");
    rt.block_on(root.split_region(region, &[b"a/m".to_vec()]))
        .expect("root splits");

    hostile_tokens_and_logins(&rt, &op, &stores, &bob_token);

    // A user changes its own password only by giving the current one.
    let passwd = |input: &str, current: bool| {
        let mut args = vec![
            "--user",
            "alice",
            "--password-stdin",
            "user",
            "passwd",
            "alice",
        ];
        if current {
            args.push("--current");
        }
        kvctl_in(&pd, false, &args, input)
    };
    let out = passwd("alicepw\nalicepw2\n", false);
    assert!(
        stderr(&out).contains("wrong user name or password"),
        "{out:?}"
    );
    ok(&passwd("alicepw\nalicepw\nalicepw2\n", true));
    assert!(login(&rt, &op, "alice", "alicepw2").is_ok());
    let out = kvctl_in(
        &pd,
        false,
        &["signup", "root", "--password-stdin"],
        "mine\n",
    );
    assert!(stderr(&out).contains("reserved"), "{out:?}");

    // alice's old token died with her password; root's expires (token-ttl 6s).
    wait_until(
        "alice's old token is revoked",
        Duration::from_secs(10),
        || {
            rt.block_on(alice.get(b"a/x"))
                .is_err_and(|e| e.to_string().contains("revoked"))
        },
    );
    wait_until("root's token expires", Duration::from_secs(20), || {
        rt.block_on(root.get(b"a/x"))
            .is_err_and(|e| e.to_string().contains("expired"))
    });

    // A deleted user's token stops working on every store within seconds.
    let bob_token = login(&rt, &op, "bob", "bobpw").unwrap();
    for s in &stores {
        assert_eq!(
            direct_get(s, &bob_token, b"a/x"),
            Ok(Some(b"1".to_vec())),
            "store {s}"
        );
    }
    ok(&kvctl_in(&pd, true, &["user", "delete", "bob"], ""));
    let deleted = Instant::now();
    wait_until("every store refuses bob", Duration::from_secs(10), || {
        stores.iter().all(|s| {
            direct_get(s, &bob_token, b"a/x").is_err_and(|e| e.contains("no longer exists"))
        })
    });
    eprintln!(
        "figure: a deleted user's token refused on every store after {:?}",
        deleted.elapsed()
    );

    shell_signup_login_whoami_logout(&pd);
    guessing_slows_the_guesser_not_the_cluster(&rt, &op);
}

/// Forged, truncated, foreign-signed and malformed tokens are refused by name, and what
/// they asked to write is not written; bad logins get clear errors.
fn hostile_tokens_and_logins(
    rt: &tokio::runtime::Runtime,
    op: &client::Client,
    stores: &[String],
    good: &str,
) {
    let (body, sig) = good.split_once('.').expect("CLAIMS.SIGNATURE");
    let mut flipped = sig.to_string().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let claims = auth::token::Claims {
        user: "root".into(),
        generation: 1,
        key_id: 1,
        expires_unix_ms: u64::MAX,
    };
    let foreign = auth::token::issue(&claims, b"not this cluster's key at all....");
    let cases = [
        (
            format!("{body}.{}", String::from_utf8(flipped).unwrap()),
            "signature",
        ),
        (good[..good.len() - 5].to_string(), ""),
        (foreign, ""),
        ("garbage".to_string(), "malformed"),
        ("x".repeat(4000), "longer"),
    ];
    for (token, says) in &cases {
        let err = direct_get(&stores[0], token, b"a/x").expect_err("a bad token reads");
        assert!(err.contains("token"), "{err}");
        assert!(err.contains(says), "{says}: {err}");
        let c = client_as(rt, &pd_of(op), Some(token.clone()));
        let e = rt
            .block_on(c.put(b"a/x", b"forged"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("token"), "{e}");
    }
    assert_eq!(
        rt.block_on(op.get(b"a/x")).unwrap(),
        Some(b"1".to_vec()),
        "nothing written"
    );
    for (name, pw, says) in [
        ("alice\n", "pw", "user name"),
        (&"n".repeat(65)[..], "pw", "user name"),
        ("alice", &"p".repeat(257)[..], "256"),
        ("alice", "wrong", "wrong user name or password"),
        ("nobody", "wrong", "wrong user name or password"),
    ] {
        let e = login(rt, op, name, pw).unwrap_err();
        assert!(e.contains(says), "{name:?}: {e}");
    }
}

fn pd_of(op: &client::Client) -> String {
    op.pd().endpoints().join(",")
}

/// SIGNUP, LOGIN, WHOAMI and LOGOUT typed into `kvctl shell` (the password on the next
/// line, as input is not a terminal).
fn shell_signup_login_whoami_logout(pd: &str) {
    let input = "SIGNUP carol\ncarolpw1\nLOGIN carol\ncarolpw1\nWHOAMI\nGET a/x\nSET a/x no\n\
                 LOGOUT\nWHOAMI\nQUIT\n";
    let out = kvctl_in(pd, false, &["shell"], input);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{out:?}");
    let me = stdout
        .find("carol (by token)")
        .unwrap_or_else(|| panic!("WHOAMI as carol: {stdout}"));
    let anon = stdout.rfind("anonymous").expect("WHOAMI after LOGOUT");
    assert!(me < anon, "{stdout}");
    assert!(stdout.contains("logged in as carol"), "{stdout}");
    assert!(
        stdout.contains("\n1\n"),
        "carol (a-reader by default) reads a/x: {stdout} {stderr}"
    );
    assert!(
        stderr.contains("permission denied"),
        "carol cannot write: {stderr}"
    );
    assert!(
        !stdout.contains("carolpw1") && !stderr.contains("carolpw1"),
        "password echoed"
    );
}

/// Ten thousand wrong passwords in a row: after a few, each is refused before any hash
/// is computed, and other clients' reads go on at their usual speed.
fn guessing_slows_the_guesser_not_the_cluster(rt: &tokio::runtime::Runtime, op: &client::Client) {
    let read_p99 = |n: usize| {
        let mut lat: Vec<Duration> = (0..n)
            .map(|_| {
                let t = Instant::now();
                rt.block_on(op.get(b"a/x")).expect("the operator reads");
                t.elapsed()
            })
            .collect();
        lat.sort();
        lat[n * 99 / 100]
    };
    let before = read_p99(200);
    let pd = pd_of(op);
    let guesser = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let c = client_as(&rt, &pd, None);
        let (mut checked, mut limited) = (0, 0);
        let started = Instant::now();
        for i in 0..10_000 {
            match login(&rt, &c, "alice", &format!("guess{i}")) {
                Err(e) if e.contains("too many failed logins") => limited += 1,
                Err(e) if e.contains("wrong user name or password") => checked += 1,
                other => panic!("guess {i}: {other:?}"),
            }
        }
        (checked, limited, started.elapsed())
    });
    let during = read_p99(200);
    let (checked, limited, took) = guesser.join().expect("the guesser");
    eprintln!(
        "figure: 10000 wrong passwords in {took:?} ({:.0}/s): {checked} checked, {limited} \
         refused unhashed; another client's read p99 {before:?} before, {during:?} during",
        10_000.0 / took.as_secs_f64()
    );
    assert_eq!(checked + limited, 10_000);
    assert!(checked <= 30, "{checked} passwords were hashed");
    assert!(
        during < before * 5 + Duration::from_millis(20),
        "reads slowed from {before:?} to {during:?}"
    );
}

/// A TLS cluster with auth on: TiKV's Rust client presenting a certificate named alice
/// gets alice's permissions, no more.
#[test]
fn a_tikv_client_with_a_certificate_is_the_user_it_names() {
    let cluster = ProcCluster::start_tls(1, 1, &[]);
    let certs = cluster.tls.clone().expect("a TLS cluster");
    let pd = cluster.pd_addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let op = common::client(&rt, &pd);
    wait_until("a voter", T, || voters(&rt, &op) >= 1);
    rt.block_on(op.put(b"a/x", b"1")).expect("put a/x");
    rt.block_on(op.put(b"b/x", b"2")).expect("put b/x");
    // root's certificate (kvctl cert init's client.pem) is admin before root exists.
    set_up_users(&pd);
    common::cert_issue(&certs, "alice");
    common::cert_issue(&certs, "mallory");
    let tikv = |name: &str| {
        let cfg = tikv_client::Config::default()
            .with_security(
                certs.join("ca.pem"),
                certs.join(format!("{name}.pem")),
                certs.join(format!("{name}-key.pem")),
            )
            .with_timeout(Duration::from_secs(5));
        rt.block_on(tikv_client::RawClient::new_with_config(
            vec![pd.clone()],
            cfg,
        ))
        .expect("tikv-client connects")
    };
    let (alice, mallory) = (tikv("alice"), tikv("mallory"));
    // A certificate of this CA naming no user is refused, once the store knows auth is on.
    wait_until("the store checks certificates", T, || {
        rt.block_on(mallory.get("a/x".to_owned()))
            .is_err_and(|e| e.to_string().contains("does not exist"))
    });
    assert_eq!(
        rt.block_on(alice.get("a/x".to_owned())).unwrap(),
        Some(b"1".to_vec())
    );
    let err = rt
        .block_on(alice.put("a/x".to_owned(), "9".to_owned()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("permission denied"), "{err}");
    let err = rt
        .block_on(alice.get("b/x".to_owned()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(rt.block_on(op.get(b"a/x")).unwrap(), Some(b"1".to_vec()));
}
