//! TLS on every hop, with rustls and its `ring` crypto provider.
//!
//! `ring` rather than rustls' default `aws-lc-rs`: it builds with the C compiler alone (no
//! CMake, no Go, no NASM), in a fraction of the time, on every target the mesh ships for; its
//! algorithms (ECDSA P-256/P-384, Ed25519, RSA, AES-GCM, ChaCha20-Poly1305) cover what an
//! internal CA and cert-manager issue. Neither is FIPS-validated as configured here.
//!
//! Servers ([`ServerTlsArgs`]) present `--tls-cert`/`--tls-key` and, with `--tls-client-ca`,
//! accept only clients whose certificate chains to that CA (mTLS). Clients
//! ([`ClientTlsArgs`]) verify servers against `--tls-ca` and present
//! `--tls-client-cert`/`--tls-client-key` where asked. Every file is re-read when it changes
//! (cert-manager rotates certificates by swapping the files): new connections use the new
//! certificates, connections already open keep theirs, so calls in flight are never cut. A
//! file that is missing, unreadable or does not match fails at start with one line naming
//! the flag and the file; a bad file on reload is logged and the previous configuration kept.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// How often certificate files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(5);
/// Longest TLS handshake a server waits for (a client that connects and sends nothing must
/// not hold a task for ever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest TCP connect plus handshake of a client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A server's TLS flags (every role and the orchestrator).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain this server presents; with --tls-key, the server speaks TLS only.
    #[arg(long, env = "IG_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "IG_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: when set, only clients whose certificate chains to one of them
    /// may connect (mTLS).
    #[arg(long, env = "IG_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Also serve `grpc.health.v1` alone, in plaintext, on this address: for health checks
    /// that speak no TLS (Kubernetes' grpc: probes). It tells whether the role is serving,
    /// nothing else; keep it off the network policy's admitted ports.
    #[arg(long, env = "IG_HEALTH_LISTEN")]
    pub health_listen: Option<std::net::SocketAddr>,
}

/// A client's TLS flags (the orchestrator towards the roles, the command line towards the
/// orchestrator).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// PEM CA certificates that verify the servers of https:// endpoints.
    #[arg(long, env = "IG_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate this client presents to servers that require one (mTLS).
    #[arg(long, env = "IG_TLS_CLIENT_CERT")]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM private key of --tls-client-cert.
    #[arg(long, env = "IG_TLS_CLIENT_KEY")]
    pub tls_client_key: Option<PathBuf>,
}

/// A flag and the file it names.
#[derive(Debug, Clone)]
struct Named {
    flag: &'static str,
    path: PathBuf,
}

impl Named {
    fn new(flag: &'static str, path: &Path) -> Self {
        Self { flag, path: path.to_path_buf() }
    }

    fn error(&self, what: impl std::fmt::Display) -> String {
        format!("{} {}: {what}", self.flag, self.path.display())
    }

    fn read(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.path).map_err(|e| self.error(e))
    }

    fn certs(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        let bytes = self.read()?;
        let certs = CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|e| self.error(format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(self.error("no PEM certificate in it"));
        }
        Ok(certs)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, String> {
        let bytes = self.read()?;
        PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| self.error(format!("no PEM private key in it ({e})")))
    }

    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        for cert in self.certs()? {
            roots.add(cert).map_err(|e| self.error(format!("not a usable CA certificate: {e}")))?;
        }
        Ok(roots)
    }

    /// What changes when the file is replaced (cert-manager swaps a symlink: the target's
    /// time and size); None while it cannot be read.
    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(&self.path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key, checked to belong together.
fn certified_key(cert: &Named, key: &Named) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let (chain, private) = (cert.certs()?, key.key()?);
    let signing = provider().key_provider.load_private_key(private.clone_key()).map_err(|e| key.error(format!("unusable private key: {e}")))?;
    CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .map_err(|_| key.error(format!("does not match the certificate of {} {}", cert.flag, cert.path.display())))?;
    Ok((chain, private))
}

/// A configuration built from files, rebuilt when they change.
struct Reloading<T> {
    files: Vec<Named>,
    build: fn(&[Named]) -> Result<T, String>,
    current: RwLock<Arc<T>>,
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    fn load(files: Vec<Named>, build: fn(&[Named]) -> Result<T, String>) -> Result<Arc<Self>, String> {
        let stamps = files.iter().map(Named::stamp).collect();
        let first = build(&files)?;
        Ok(Arc::new(Self { files, build, current: RwLock::new(Arc::new(first)), stamps: Mutex::new(stamps) }))
    }

    fn current(&self) -> Arc<T> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Rebuilds when a file changed since the last look; whether it did.
    fn reload_if_changed(&self) -> bool {
        let now: Vec<_> = self.files.iter().map(Named::stamp).collect();
        {
            let mut stamps = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            if *stamps == now {
                return false;
            }
            *stamps = now;
        }
        match (self.build)(&self.files) {
            Ok(next) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
                tracing::info!(files = ?self.files.iter().map(|f| f.path.display().to_string()).collect::<Vec<_>>(), "TLS files changed: new connections use them");
                metrics::counter!("ig_tls_reloads_total", "outcome" => "ok").increment(1);
                true
            }
            Err(e) => {
                // Mid-rotation (the key written before its certificate, say): keep serving with
                // what worked; the next change is tried again.
                tracing::error!(error = %e, "TLS files changed but do not load; keeping the previous ones");
                metrics::counter!("ig_tls_reloads_total", "outcome" => "error").increment(1);
                false
            }
        }
    }

    /// Polls the files every `period` while anything holds this configuration.
    fn watch(self: &Arc<Self>, period: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(this) = weak.upgrade() else { return };
                this.reload_if_changed();
            }
        });
    }
}

/// A TLS connection a server accepted.
pub type ServerTlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// A server's TLS configuration, re-read when its files change. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls(Arc<Reloading<ServerConfig>>);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ServerTls").field(&self.0.files).finish()
    }
}

impl ServerTls {
    /// The configuration `args` ask for (None: cleartext), loaded now; must be called within
    /// a tokio runtime (the file watch is a task). It offers HTTP/2 only (gRPC).
    pub fn from_args(args: &ServerTlsArgs) -> anyhow::Result<Option<Self>> {
        Self::from_args_with(args, build_server)
    }

    /// [`ServerTls::from_args`] for an HTTP API: HTTP/2 and HTTP/1.1 (what most HTTP
    /// clients, the OpenAI SDKs among them, speak).
    pub fn from_args_for_http(args: &ServerTlsArgs) -> anyhow::Result<Option<Self>> {
        Self::from_args_with(args, |files| {
            let mut config = build_server(files)?;
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Ok(config)
        })
    }

    fn from_args_with(args: &ServerTlsArgs, build: fn(&[Named]) -> Result<ServerConfig, String>) -> anyhow::Result<Option<Self>> {
        let (cert, key) = match (&args.tls_cert, &args.tls_key) {
            (None, None) if args.tls_client_ca.is_some() => anyhow::bail!("--tls-client-ca: needs --tls-cert and --tls-key (mTLS is on top of TLS)"),
            (None, None) => return Ok(None),
            (Some(_), None) => anyhow::bail!("--tls-key: required with --tls-cert"),
            (None, Some(_)) => anyhow::bail!("--tls-cert: required with --tls-key"),
            (Some(c), Some(k)) => (Named::new("--tls-cert", c), Named::new("--tls-key", k)),
        };
        let mut files = vec![cert, key];
        files.extend(args.tls_client_ca.as_deref().map(|ca| Named::new("--tls-client-ca", ca)));
        let config = Reloading::load(files, build).map_err(anyhow::Error::msg)?;
        config.watch(RELOAD_POLL);
        Ok(Some(Self(config)))
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certs(&self) -> bool {
        self.0.files.len() == 3
    }

    /// Checks the files now (tests; the watch does it every [`RELOAD_POLL`]).
    pub fn reload_if_changed(&self) -> bool {
        self.0.reload_if_changed()
    }

    /// Accepts TLS connections on `listener`: each handshake runs on its own task, bounded
    /// in time, so a client that stalls its handshake delays nobody; failed handshakes
    /// (no client certificate, another CA, not TLS at all) are counted and dropped. The
    /// listener closes when the returned stream is dropped.
    pub fn incoming(&self, listener: TcpListener) -> ReceiverStream<io::Result<ServerTlsStream>> {
        let (tx, rx) = mpsc::channel(64);
        let config = self.0.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = tx.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "TLS handshake refused");
                            metrics::counter!("ig_tls_handshake_failures_total").increment(1);
                        }
                        Err(_) => {
                            tracing::info!(%peer, "TLS handshake timed out");
                            metrics::counter!("ig_tls_handshake_failures_total").increment(1);
                        }
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

fn build_server(files: &[Named]) -> Result<ServerConfig, String> {
    let (chain, key) = certified_key(&files[0], &files[1])?;
    let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().map_err(|e| e.to_string())?;
    let builder = match files.get(2) {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()?), provider())
                .build()
                .map_err(|e| ca.error(format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| files[1].error(e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client's TLS configuration, re-read when its files change. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls(Arc<Reloading<ClientConfig>>);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClientTls").field(&self.0.files).finish()
    }
}

impl ClientTls {
    /// The configuration `args` ask for (None: no --tls-ca, cleartext only).
    pub fn from_args(args: &ClientTlsArgs) -> anyhow::Result<Option<Self>> {
        let Some(ca) = &args.tls_ca else {
            if args.tls_client_cert.is_some() || args.tls_client_key.is_some() {
                anyhow::bail!("--tls-client-cert/--tls-client-key: need --tls-ca (the CA of the servers)");
            }
            return Ok(None);
        };
        let mut files = vec![Named::new("--tls-ca", ca)];
        match (&args.tls_client_cert, &args.tls_client_key) {
            (None, None) => {}
            (Some(c), Some(k)) => files.extend([Named::new("--tls-client-cert", c), Named::new("--tls-client-key", k)]),
            (Some(_), None) => anyhow::bail!("--tls-client-key: required with --tls-client-cert"),
            (None, Some(_)) => anyhow::bail!("--tls-client-cert: required with --tls-client-key"),
        }
        let config = Reloading::load(files, build_client).map_err(anyhow::Error::msg)?;
        if tokio::runtime::Handle::try_current().is_ok() {
            config.watch(RELOAD_POLL);
        }
        Ok(Some(Self(config)))
    }

    /// A connector for tonic's `Endpoint::connect_with_connector_lazy`: TCP, then TLS with
    /// the configuration current at each connect, verifying the endpoint's host name.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector(self.0.clone())
    }
}

fn build_client(files: &[Named]) -> Result<ClientConfig, String> {
    let roots = files[0].roots()?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match (files.get(1), files.get(2)) {
        (Some(cert), Some(key)) => {
            let (chain, key_der) = certified_key(cert, key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| key.error(e))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// See [`ClientTls::connector`].
#[derive(Clone)]
pub struct TlsConnector(Arc<Reloading<ClientConfig>>);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.0.current();
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?.trim_matches(|c| c == '[' || c == ']').to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host}: not a DNS name or IP address: {e}"))?;
            let connect = async {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
            };
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect).await.map_err(|_| format!("{uri}: no TLS connection within {CONNECT_TIMEOUT:?}"))??;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// A throw-away PKI in a directory: one CA and the server and client certificates it signs
/// (ECDSA P-256, PEM). For `inferenceguard up --tls` and tests; a real deployment's
/// certificates come from its own CA or cert-manager (docs/security.md).
pub struct ThrowawayPki {
    dir: PathBuf,
    /// The CA's certificate: what servers and clients verify each other against.
    pub ca: PathBuf,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl ThrowawayPki {
    /// A new CA named `name`, written to `dir/ca.crt`.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate()?)?;
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, issuer.pem())?;
        Ok(Self { dir: dir.to_path_buf(), ca, issuer })
    }

    fn issue(&self, file: &str, names: &[&str], usage: rcgen::ExtendedKeyUsagePurpose) -> anyhow::Result<(PathBuf, PathBuf)> {
        let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, file);
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let (cert_path, key_path) = (self.dir.join(format!("{file}.crt")), self.dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok((cert_path, key_path))
    }

    /// A server certificate for `names` (DNS names or IP addresses), as `file.crt` and
    /// `file.key`.
    pub fn server(&self, file: &str, names: &[&str]) -> anyhow::Result<(PathBuf, PathBuf)> {
        self.issue(file, names, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate, as `file.crt` and `file.key`.
    pub fn client(&self, file: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        self.issue(file, &[], rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn pair(dir: &Path, prefix: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        (write(dir, &format!("{prefix}.crt"), &cert.pem()), write(dir, &format!("{prefix}.key"), &key.serialize_pem()))
    }

    #[tokio::test]
    async fn bad_files_fail_with_one_line_naming_the_flag_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let (_, other_key) = pair(dir.path(), "b");
        let garbage = write(dir.path(), "garbage.pem", "not pem at all");
        let missing = dir.path().join("missing.crt");
        let server = |c: &Path, k: &Path, ca: Option<&Path>| {
            ServerTls::from_args(&ServerTlsArgs { tls_cert: Some(c.into()), tls_key: Some(k.into()), tls_client_ca: ca.map(Into::into), ..Default::default() })
        };
        let cases: Vec<(anyhow::Result<Option<ServerTls>>, String)> = vec![
            (server(&missing, &key, None), format!("--tls-cert {}: ", missing.display())),
            (server(&garbage, &key, None), format!("--tls-cert {}: no PEM certificate", garbage.display())),
            (server(&cert, &garbage, None), format!("--tls-key {}: no PEM private key", garbage.display())),
            (server(&cert, &other_key, None), format!("--tls-key {}: does not match the certificate of --tls-cert", other_key.display())),
            (server(&cert, &key, Some(&missing)), format!("--tls-client-ca {}: ", missing.display())),
            (ServerTls::from_args(&ServerTlsArgs { tls_cert: Some(cert.clone()), ..Default::default() }), "--tls-key: required".into()),
        ];
        for (result, needle) in cases {
            let message = result.err().expect(&needle).to_string();
            assert!(message.starts_with(&needle), "{message:?} should start with {needle:?}");
            assert!(!message.contains('\n'), "one line: {message:?}");
        }
        assert!(server(&cert, &key, Some(&cert)).unwrap().unwrap().requires_client_certs());
        let client = ClientTls::from_args(&ClientTlsArgs { tls_ca: Some(cert.clone()), tls_client_cert: Some(cert), tls_client_key: Some(other_key.clone()) });
        assert!(client.err().unwrap().to_string().starts_with(&format!("--tls-client-key {}: does not match", other_key.display())));
    }

    #[tokio::test]
    async fn changed_files_are_picked_up_and_broken_ones_keep_the_last_good_config() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let tls = ServerTls::from_args(&ServerTlsArgs { tls_cert: Some(cert.clone()), tls_key: Some(key.clone()), ..Default::default() }).unwrap().unwrap();
        let first = tls.0.current();
        assert!(!tls.reload_if_changed(), "nothing changed");
        // A half-done rotation (a new certificate, the old key): kept as it was.
        let (cert_b, key_b) = pair(dir.path(), "b");
        std::fs::copy(&cert_b, &cert).unwrap();
        assert!(!tls.reload_if_changed());
        assert!(Arc::ptr_eq(&first, &tls.0.current()));
        // The key follows: the new pair is loaded.
        std::fs::copy(&key_b, &key).unwrap();
        assert!(tls.reload_if_changed());
        assert!(!Arc::ptr_eq(&first, &tls.0.current()));
    }
}
