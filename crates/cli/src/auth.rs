//! Mutual authentication from the command line (`docs/auth.md`): `trustfab device auth`,
//! `device listen` / `device connect` (the trustfab protocol over TCP), `device tls-connect` and
//! `server tls-listen` (mutual TLS, the device signing its handshake). Every device command reads
//! the root from the device's own storage; only the server is given a root, the OEM's.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use trustfab_auth::tls::{self, OemClientVerifier, TlsIdentity};
use trustfab_auth::{mutual, tcp, Identity, Session, Slots, Trust};
use trustfab_device::{file, SimDevice};
use trustfab_pki::{pem, SoftKey};
use trustfab_types::{limits, Clock as _, SystemClock};

use crate::files;
use crate::secrets::PassphraseArgs;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The `trustfab device` subcommands of mutual authentication.
#[derive(Subcommand, Debug)]
pub(crate) enum DeviceAuthCommand {
    /// Authenticate two device files to each other (both ways) and say who was authenticated.
    Auth(AuthArgs),
    /// Wait for a device to connect over TCP and authenticate it (as the responder).
    Listen(ListenArgs),
    /// Connect to a listening device over TCP and authenticate (as the initiator).
    Connect(ConnectArgs),
    /// Connect to a TLS server with the device's certificate, the handshake signed by the device.
    TlsConnect(TlsConnectArgs),
}

/// The `trustfab server` subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum ServerCommand {
    /// Serve mutual TLS as the OEM's update server: accepts devices chained to the OEM root.
    TlsListen(TlsListenArgs),
}

#[derive(Args, Debug)]
pub(crate) struct CrlArgs {
    /// The OEM's CRL (PEM or DER), from the CA that issued the devices; repeatable.
    #[arg(long = "crl", value_name = "FILE")]
    crls: Vec<PathBuf>,
}

impl CrlArgs {
    fn load(&self) -> Result<Vec<Vec<u8>>> {
        self.crls
            .iter()
            .map(|p| {
                let bytes = files::read_limited(p, limits::CRL_BYTES)
                    .with_context(|| format!("reading CRL {}", p.display()))?;
                match std::str::from_utf8(&bytes) {
                    Ok(text) if text.contains("-----BEGIN") => pem::decode_one(text, "X509 CRL")
                        .with_context(|| format!("reading CRL {}", p.display())),
                    _ => Ok(bytes),
                }
            })
            .collect()
    }
}

#[derive(Args, Debug)]
pub(crate) struct AuthArgs {
    /// The first device file (initiator).
    dev1: PathBuf,
    /// The second device file (responder).
    dev2: PathBuf,
    #[command(flatten)]
    crls: CrlArgs,
}

#[derive(Args, Debug)]
pub(crate) struct ListenArgs {
    /// The device file.
    dev: PathBuf,
    /// Address to listen on.
    #[arg(long)]
    addr: String,
    /// How many connections to answer before exiting.
    #[arg(long, default_value_t = 1)]
    connections: u32,
    #[command(flatten)]
    crls: CrlArgs,
}

#[derive(Args, Debug)]
pub(crate) struct ConnectArgs {
    /// The device file.
    dev: PathBuf,
    /// Address of the listening device.
    #[arg(long)]
    addr: String,
    #[command(flatten)]
    crls: CrlArgs,
}

#[derive(Args, Debug)]
pub(crate) struct TlsConnectArgs {
    /// The device file.
    dev: PathBuf,
    /// Address of the server.
    #[arg(long)]
    addr: String,
    /// The server's DNS name, as its certificate names it.
    #[arg(long)]
    server_name: String,
    /// What to send once connected (a line).
    #[arg(long, default_value = "hello")]
    send: String,
}

#[derive(Args, Debug)]
pub(crate) struct TlsListenArgs {
    /// The server certificate (PEM), followed by the device CA that issued it if any.
    #[arg(long)]
    cert: PathBuf,
    /// The server's private key: encrypted PKCS#8 PEM (its passphrase as for every key file).
    #[arg(long)]
    key: PathBuf,
    /// The OEM root (PEM or DER): the only trust anchor for devices.
    #[arg(long)]
    root: PathBuf,
    /// Require this EKU (dotted OID) in device certificates, e.g. 1.3.6.1.4.1.55555.1.1.
    #[arg(long)]
    device_eku: Option<String>,
    /// Address to listen on.
    #[arg(long)]
    addr: String,
    /// How many connections to answer before exiting.
    #[arg(long, default_value_t = 1)]
    connections: u32,
    #[command(flatten)]
    crls: CrlArgs,
    #[command(flatten)]
    pass: PassphraseArgs,
}

pub(crate) fn run_device(cmd: DeviceAuthCommand) -> Result<()> {
    match cmd {
        DeviceAuthCommand::Auth(a) => auth(&a),
        DeviceAuthCommand::Listen(a) => listen(&a),
        DeviceAuthCommand::Connect(a) => connect(&a),
        DeviceAuthCommand::TlsConnect(a) => tls_connect(&a),
    }
}

pub(crate) fn run_server(cmd: ServerCommand) -> Result<()> {
    match cmd {
        ServerCommand::TlsListen(a) => tls_listen(&a),
    }
}

fn load_identity(path: &Path) -> Result<Identity<SimDevice>> {
    let device = file::load(path).with_context(|| format!("reading {}", path.display()))?;
    Identity::load(device, Slots::PROVISIONED)
        .with_context(|| format!("device {} is not a provisioned identity", path.display()))
}

fn describe(s: &Session) -> String {
    format!(
        "{}, session {}",
        s.peer,
        hex::encode(s.transcript.get(..8).unwrap_or_default())
    )
}

/// Authenticates the devices in two files to each other, both ways, and prints who was
/// authenticated. For `trustfab demo`: call it with two provisioned device files and the OEM's
/// CRLs (DER, may be empty).
pub(crate) fn demo_auth(dev1: &Path, dev2: &Path, crls: &[Vec<u8>]) -> Result<()> {
    let mut a = load_identity(dev1)?;
    let mut b = load_identity(dev2)?;
    let trust = Trust {
        crls,
        now: SystemClock.now(),
    };
    let one_way =
        |x: &mut Identity<SimDevice>, y: &mut Identity<SimDevice>, xp: &Path, yp: &Path| {
            let (sx, sy) = mutual(x, &trust, y, &trust)
                .with_context(|| format!("{} → {}", xp.display(), yp.display()))?;
            println!("{} authenticated {}", xp.display(), describe(&sx));
            println!("{} authenticated {}", yp.display(), describe(&sy));
            if !sx.key.ct_eq(&sy.key) {
                bail!("the two sides derived different session keys");
            }
            Ok(())
        };
    one_way(&mut a, &mut b, dev1, dev2)?;
    one_way(&mut b, &mut a, dev2, dev1)?;
    println!("mutual authentication both ways: ok (same session key on both sides)");
    Ok(())
}

fn auth(a: &AuthArgs) -> Result<()> {
    demo_auth(&a.dev1, &a.dev2, &a.crls.load()?)
}

fn listen(a: &ListenArgs) -> Result<()> {
    let mut id = load_identity(&a.dev)?;
    let crls = a.crls.load()?;
    serve_connections(&a.addr, a.connections, |mut stream, from| {
        let trust = Trust {
            crls: &crls,
            now: SystemClock.now(),
        };
        tcp::respond(&mut stream, &mut id, &trust)
            .map(|s| format!("{from}: {}", describe(&s)))
            .map_err(|e| e.to_string())
    })
}

/// Listens on `addr`, says where, and answers `connections` connections one after another with
/// `serve`, printing `authenticated <what serve returned>` or `refused <peer>: <why>` for each;
/// fails when any was refused.
fn serve_connections(
    addr: &str,
    connections: u32,
    mut serve: impl FnMut(TcpStream, SocketAddr) -> std::result::Result<String, String>,
) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    println!("listening on {}", listener.local_addr()?);
    let mut failed = 0u32;
    for _ in 0..connections {
        let (stream, from) = listener.accept().context("accepting a connection")?;
        match serve(stream, from) {
            Ok(what) => println!("authenticated {what}"),
            Err(e) => {
                failed += 1;
                println!("refused {from}: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} connection(s) refused");
    }
    Ok(())
}

fn connect(a: &ConnectArgs) -> Result<()> {
    let mut id = load_identity(&a.dev)?;
    let crls = a.crls.load()?;
    let trust = Trust {
        crls: &crls,
        now: SystemClock.now(),
    };
    let s = tcp::connect(a.addr.as_str(), &mut id, &trust)
        .with_context(|| format!("authenticating to {}", a.addr))?;
    println!("authenticated {}", describe(&s));
    Ok(())
}

fn tls_connect(a: &TlsConnectArgs) -> Result<()> {
    let id = TlsIdentity::new(load_identity(&a.dev)?)?;
    let config = Arc::new(id.client_config()?);
    let name = ServerName::try_from(a.server_name.clone())
        .with_context(|| format!("{:?} is not a DNS name", a.server_name))?;
    let conn = rustls::ClientConnection::new(config, name)?;
    let sock = TcpStream::connect(&a.addr).with_context(|| format!("connecting to {}", a.addr))?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut stream = rustls::StreamOwned::new(conn, sock);
    stream
        .write_all(format!("{}\n", a.send).as_bytes())
        .context("TLS handshake")?;
    let mut reply = String::new();
    BufReader::new(&mut stream)
        .read_line(&mut reply)
        .context("reading the server's answer")?;
    let version = stream
        .conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    println!(
        "tls ok ({version}), server {}: {}",
        a.server_name,
        reply.trim_end()
    );
    Ok(())
}

fn tls_listen(a: &TlsListenArgs) -> Result<()> {
    let text = files::read_text(&a.cert, limits::CERTIFICATE_BYTES * 4)?;
    let chain: Vec<CertificateDer<'static>> = pem::decode_all(&text, "CERTIFICATE")
        .with_context(|| format!("reading {}", a.cert.display()))?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key_pem = files::read_text(&a.key, limits::KEY_FILE_BYTES)?;
    let pass = a.pass.get("the server key", false)?;
    let key = SoftKey::from_encrypted_pem(&key_pem, &pass)
        .with_context(|| format!("reading {}", a.key.display()))?;
    let pkcs8 = key.secret_pkcs8_der()?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.secret_pkcs8_der().to_vec()));
    let root_bytes = files::read_limited(&a.root, limits::CERTIFICATE_BYTES)?;
    let root = pem::cert_from_pem_or_der(&root_bytes)
        .with_context(|| format!("reading {}", a.root.display()))?;
    let eku: Option<Vec<u64>> = a
        .device_eku
        .as_deref()
        .map(|s| {
            s.split('.')
                .map(str::parse)
                .collect::<Result<Vec<u64>, _>>()
                .with_context(|| format!("--device-eku {s:?} is not a dotted OID"))
        })
        .transpose()?;
    let verifier = OemClientVerifier::new(&root, a.crls.load()?, eku.as_deref())?;
    let config = Arc::new(tls::server_config(chain, key, Arc::new(verifier))?);
    serve_connections(&a.addr, a.connections, |sock, from| {
        serve_one(&config, sock)
            .map(|subject| format!("device {from}: {subject}"))
            .map_err(|e| format!("{e:#}"))
    })
}

fn serve_one(config: &Arc<rustls::ServerConfig>, sock: TcpStream) -> Result<String> {
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    let conn = rustls::ServerConnection::new(Arc::clone(config))?;
    let mut stream = rustls::StreamOwned::new(conn, sock);
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).context("TLS handshake")?;
    let subject = stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| x509_parser::parse_x509_certificate(c).ok())
        .map(|(_, x)| x.subject().to_string())
        .context("no client certificate")?;
    let said = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
    stream.write_all(format!("hello {subject}, you said {:?}\n", said.trim_end()).as_bytes())?;
    stream.conn.send_close_notify();
    stream.flush()?;
    Ok(subject)
}
