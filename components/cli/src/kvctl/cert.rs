//! `kvctl cert`: a certificate authority and certificates for a TLS cluster (rcgen).
//!
//! `init DIR` makes `ca.pem` and `ca-key.pem`, then a certificate and key per process
//! kind, `pd.pem` and `store.pem` (common names `flotilla-pd` and `flotilla-store`, the
//! default `security.cluster-cn`; server and client certificates valid for 127.0.0.1,
//! localhost and the compose cluster's names), and one for a client, `client.pem`
//! (common name `root`, so that with auth enabled it acts as the root user). `issue DIR
//! NAME` signs another client certificate with the CA in DIR, for a user named NAME.
//! Client certificates can only prove a client (no host names, client use only) and
//! never carry a cluster common name.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use clap::Subcommand;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use super::{Error, Printer, Result};

/// The names every certificate is valid for: loopback and the compose services.
const HOSTS: [&str; 8] = [
    "127.0.0.1",
    "localhost",
    "pd1",
    "pd2",
    "pd3",
    "store1",
    "store2",
    "store3",
];

/// The common name of a CA: "Flotilla CA" and a tag of its public key. Two CAs must not
/// share a name: a server trusting both during a rotation looks a certificate's issuer
/// up by name. `issue` derives the same name from the key to sign under it again.
fn ca_cn(key: &KeyPair) -> String {
    let tag: String = key.public_key_raw()[1..9]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("Flotilla CA {tag}")
}

/// Certificate commands.
#[derive(Clone, Debug, Subcommand)]
pub enum CertCommand {
    /// Make DIR/ca.pem and a certificate and key for PD (pd.pem), stores (store.pem) and
    /// a client (client.pem); refuses to overwrite files.
    Init {
        /// Where to write them (created if missing).
        dir: PathBuf,
        /// More host names or addresses the certificates are valid for.
        #[arg(long, value_delimiter = ',')]
        host: Vec<String>,
        /// The client certificate's common name (the user it acts as with auth on).
        #[arg(long, default_value = "root")]
        client_cn: String,
        /// How long the certificates are valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Sign a client certificate for the user NAME with the CA in DIR: DIR/NAME.pem and
    /// DIR/NAME-key.pem.
    Issue {
        /// The directory `init` wrote (holding ca.pem and ca-key.pem).
        dir: PathBuf,
        /// The common name: with auth enabled, the user the certificate acts as.
        name: String,
        /// How long the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

fn cert_err(e: rcgen::Error) -> Error {
    Error::InvalidArgument(format!("certificate: {e}"))
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::InvalidArgument(format!("{}: {e}", path.display()))
}

/// Runs a certificate command; needs no cluster.
pub fn run(cmd: &CertCommand, p: &mut Printer<'_>) -> Result<i32> {
    match cmd {
        CertCommand::Init {
            dir,
            host,
            client_cn,
            days,
        } => init(dir, host, client_cn, *days, p),
        CertCommand::Issue { dir, name, days } => issue(dir, name, *days, p),
    }
}

fn validity(params: &mut CertificateParams, days: u32) -> Result<()> {
    if days == 0 || days > 3650 {
        return Err(Error::InvalidArgument(
            "--days must be between 1 and 3650".into(),
        ));
    }
    let now = SystemTime::now();
    // A minute back: a peer whose clock is a little behind still accepts it.
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + Duration::from_secs(u64::from(days) * 86_400)).into();
    Ok(())
}

fn ca_params(key: &KeyPair, days: u32) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    params.distinguished_name = name(&ca_cn(key));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days)?;
    Ok(params)
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "Flotilla");
    dn
}

/// A certificate for `cn` signed by the CA: for a cluster process (`hosts` not empty)
/// valid as server for those hosts and as client, since cluster processes are both; for
/// a client (no hosts) valid as client only.
fn leaf(
    cn: &str,
    hosts: &[String],
    days: u32,
    ca: &(Certificate, KeyPair),
) -> Result<(Certificate, KeyPair)> {
    check_cn(cn)?;
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(cert_err)?;
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::ExplicitNoCa;
    // Names the CA's key too, so that a verifier picks the right CA among several.
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match hosts.is_empty() {
        true => vec![ExtendedKeyUsagePurpose::ClientAuth],
        false => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    validity(&mut params, days)?;
    let key = KeyPair::generate().map_err(cert_err)?;
    let cert = params.signed_by(&key, &ca.0, &ca.1).map_err(cert_err)?;
    Ok((cert, key))
}

/// A client's common name: not one of the cluster's own, which would let its holder
/// pose as a store or PD member.
fn check_client_cn(cn: &str) -> Result<()> {
    check_cn(cn)?;
    if util::security::DEFAULT_CLUSTER_CN.contains(&cn) {
        return Err(Error::InvalidArgument(format!(
            "{cn:?} is a cluster process's common name: a client certificate must not carry it"
        )));
    }
    Ok(())
}

/// A common name: the rule of user names, since a client certificate's names its user.
fn check_cn(cn: &str) -> Result<()> {
    auth::names::check_name("common", cn).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// Writes a new file (refusing to replace one); keys readable only by their owner.
fn write_new(path: &Path, text: &str, private: bool) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, if private { 0o600 } else { 0o644 });
    let mut f = opts.open(path).map_err(|e| io_err(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))
}

fn write_pair(dir: &Path, stem: &str, pair: &(Certificate, KeyPair)) -> Result<()> {
    write_new(&dir.join(format!("{stem}.pem")), &pair.0.pem(), false)?;
    write_new(
        &dir.join(format!("{stem}-key.pem")),
        &pair.1.serialize_pem(),
        true,
    )
}

fn init(
    dir: &Path,
    extra: &[String],
    client_cn: &str,
    days: u32,
    p: &mut Printer<'_>,
) -> Result<i32> {
    check_client_cn(client_cn)?;
    let stems = ["ca", "pd", "store", "client"];
    for stem in stems {
        for f in [format!("{stem}.pem"), format!("{stem}-key.pem")] {
            if dir.join(&f).exists() {
                return Err(Error::InvalidArgument(format!(
                    "{} exists: init writes a new CA, refusing to overwrite",
                    dir.join(f).display()
                )));
            }
        }
    }
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let hosts: Vec<String> = HOSTS
        .iter()
        .map(|h| h.to_string())
        .chain(extra.iter().cloned())
        .collect();
    let ca_key = KeyPair::generate().map_err(cert_err)?;
    let ca_cert = ca_params(&ca_key, days)?
        .self_signed(&ca_key)
        .map_err(cert_err)?;
    let ca = (ca_cert, ca_key);
    write_pair(dir, "ca", &ca)?;
    let [pd_cn, store_cn] = util::security::DEFAULT_CLUSTER_CN;
    write_pair(dir, "pd", &leaf(pd_cn, &hosts, days, &ca)?)?;
    write_pair(dir, "store", &leaf(store_cn, &hosts, days, &ca)?)?;
    write_pair(dir, "client", &leaf(client_cn, &[], days, &ca)?)?;
    p.line(format!(
        "wrote {0}/ca.pem, pd.pem, store.pem, client.pem and their -key.pem files; keep {0}/ca-key.pem safe",
        dir.display()
    ));
    Ok(0)
}

fn issue(dir: &Path, cn: &str, days: u32, p: &mut Printer<'_>) -> Result<i32> {
    check_client_cn(cn)?;
    let key_path = dir.join("ca-key.pem");
    let ca_key_pem = fs::read_to_string(&key_path).map_err(|e| io_err(&key_path, e))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(cert_err)?;
    // The same name and key as the CA `init` made: what it signs verifies against ca.pem.
    let ca_cert = ca_params(&ca_key, days)?
        .self_signed(&ca_key)
        .map_err(cert_err)?;
    let pair = leaf(cn, &[], days, &(ca_cert, ca_key))?;
    write_pair(dir, cn, &pair)?;
    p.line(format!(
        "wrote {0}/{cn}.pem and {0}/{cn}-key.pem",
        dir.display()
    ));
    Ok(0)
}
