//! TLS served by Kinbar itself (rustls), so that certificates rotate
//! without a restart and the whole handshake has a deadline.
//!
//! The certificate, key and (for mTLS) client CA are read from their files
//! at start — a broken file refuses to start — and again every second and
//! on SIGHUP; when their contents change and still make a valid
//! configuration, new connections use it at once (open connections keep
//! theirs). A broken or half-written file keeps the current configuration:
//! logged, counted in `kinbar_tls_reload_failures_total`, retried.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

/// Where the server's TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// The TLS configuration in force, replaced whole when the files change.
pub struct ReloadingTls {
    files: TlsFiles,
    current: RwLock<(Arc<rustls::ServerConfig>, [u8; 32])>,
    /// The digest of contents that failed to load: reported once, not
    /// every second until they change.
    failed: RwLock<Option<[u8; 32]>>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish()
    }
}

impl ReloadingTls {
    /// Loads the files; an error names the file and what is wrong with it
    /// (never its contents).
    pub fn load(files: TlsFiles) -> Result<ReloadingTls, String> {
        let (bytes, digest) = read_all(&files)?;
        let config = build(&files, &bytes)?;
        Ok(ReloadingTls {
            files,
            current: RwLock::new((Arc::new(config), digest)),
            failed: RwLock::new(None),
        })
    }

    /// An acceptor with the configuration in force.
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        TlsAcceptor::from(current.0.clone())
    }

    /// Reads the files again: `Ok(true)` if they changed and the new
    /// configuration is in force, `Ok(false)` if unchanged, an error (and
    /// the old configuration kept) if they no longer make a valid one.
    pub fn reload(&self) -> Result<bool, String> {
        let (bytes, digest) = read_all(&self.files)?;
        {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            if current.1 == digest {
                return Ok(false);
            }
        }
        if *self.failed.read().unwrap_or_else(|e| e.into_inner()) == Some(digest) {
            return Ok(false);
        }
        let config = match build(&self.files, &bytes) {
            Ok(c) => c,
            Err(e) => {
                *self.failed.write().unwrap_or_else(|e| e.into_inner()) = Some(digest);
                return Err(e);
            }
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(config), digest);
        Ok(true)
    }
}

/// The files' contents (cert, key, CA) and a digest of all three.
fn read_all(files: &TlsFiles) -> Result<([Vec<u8>; 3], [u8; 32]), String> {
    use sha2::Digest as _;
    let read =
        |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let bytes = [
        read(&files.cert)?,
        read(&files.key)?,
        match &files.client_ca {
            Some(ca) => read(ca)?,
            None => Vec::new(),
        },
    ];
    let mut h = sha2::Sha256::new();
    for b in &bytes {
        h.update(b.len().to_le_bytes());
        h.update(b);
    }
    Ok((bytes, h.finalize().into()))
}

fn build(files: &TlsFiles, [cert, key, ca]: &[Vec<u8>; 3]) -> Result<rustls::ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("{}: not a PEM private key: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                let c = c.map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "{} and {} do not make a certificate and its key: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Re-reads the files every second and on SIGHUP while serving.
pub async fn watch(tls: Arc<ReloadingTls>) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        {
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                _ = hangup => {}
            }
        }
        #[cfg(not(unix))]
        tick.tick().await;
        match tls.reload() {
            Ok(false) => {}
            Ok(true) => {
                metrics::counter!("kinbar_tls_reloads_total").increment(1);
                tracing::info!(cert = %tls.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                metrics::counter!("kinbar_tls_reload_failures_total").increment(1);
                tracing::warn!(error = %e, "TLS files changed but do not load; keeping the current certificate");
            }
        }
    }
}
