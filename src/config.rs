//! The server's configuration: one typed [`Config`], filled from defaults,
//! then an optional TOML file, then environment variables `KINBAR_*` and
//! flags (flags win over env, env over the file). Parsed here, apart from
//! the code that uses it.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Everything `kinbar serve` needs.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// `memory` (embedded) or a `postgres://` URL.
    pub datastore: String,
    /// `NAME:KEY:SCOPES[:PREFIXES]` entries.
    pub preshared_keys: Vec<String>,
    /// More keys, one `NAME:KEY:SCOPES[:PREFIXES]` per line, re-read while serving
    /// (every second and on SIGHUP): rotation without a restart.
    pub preshared_keys_file: Option<PathBuf>,
    /// Serve without keys on a non-loopback address.
    pub insecure_allow_unauthenticated: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS).
    pub tls_client_ca: Option<PathBuf>,
    /// `NAME:SCOPES[:PREFIXES]`: a client certificate naming NAME (a DNS
    /// or URI subject alternative name, or its subject's common name),
    /// verified by the client CA, authenticates
    /// a call that carries no key, with these scopes; NAME is its actor.
    pub tls_client_identities: Vec<String>,
    /// Largest accepted request message.
    pub max_message_bytes: usize,
    pub max_updates_per_write: usize,
    pub max_checks_per_bulk: usize,
    pub max_preconditions: usize,
    pub max_read_page: usize,
    /// Relationships in one ImportBulkRelationships stream (held in memory
    /// until the stream ends: it is one transaction).
    pub max_import: usize,
    pub max_depth: u32,
    /// Sub-problems one request may evaluate (RESOURCE_EXHAUSTED beyond).
    pub max_subproblems: u64,
    /// Relationships one request may read from the datastore.
    pub max_rows_per_request: u64,
    /// Nodes plus leaf subjects in one Expand response.
    pub max_expand_elements: u64,
    /// minimize_latency quantization window, in milliseconds.
    pub revision_quantum_ms: u64,
    pub max_schema_bytes: usize,
    pub max_expression_terms: usize,
    pub cache_capacity: u64,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Requests in flight per connection.
    pub concurrency_limit_per_connection: usize,
    /// Requests in flight across all connections; beyond it calls are shed
    /// (RESOURCE_EXHAUSTED with RetryInfo). Health and reflection are exempt.
    pub max_in_flight: usize,
    /// Calls one credential (its `authorization` header; none: anonymous)
    /// may have in flight, streams counted until they end; 0: no limit.
    /// Beyond it: RESOURCE_EXHAUSTED with RetryInfo, before any work.
    pub max_concurrent_per_key: usize,
    /// Connections are closed (GOAWAY, 30 s grace) after this many seconds;
    /// 0 keeps them open. Spreads clients across replicas after scaling.
    pub max_connection_age_secs: u64,
    /// Open client connections in all; a connection over the limit is
    /// closed as soon as it is accepted (counted, logged).
    pub max_connections: usize,
    /// Connections one client address (IPv6: its /64) may have ended by
    /// HTTP/2 protocol errors (GOAWAY with an error code: CONTINUATION or
    /// reset floods, oversized headers, bad frames), refilled one per
    /// second; past it, its new connections are closed as soon as they are
    /// accepted. Well-behaved clients never cause one. 0: no limit.
    pub protocol_errors_per_peer: u32,
    /// A new connection must send its first bytes (the HTTP/2 preface or a
    /// TLS ClientHello: 24 bytes) within this many seconds, else it is
    /// closed: idle and slow-preface connections cannot hold slots.
    pub connection_preface_timeout_secs: u64,
    /// New calls are shed (RESOURCE_EXHAUSTED) while resident memory is
    /// above this many bytes; 0: 90% of the container's memory limit when
    /// there is one, else no watermark.
    pub memory_watermark_bytes: u64,
    /// Requests per second each key (or `anonymous`) may make; 0: no
    /// per-key limit. Over it: RESOURCE_EXHAUSTED with `RetryInfo`.
    pub rate_limit_per_key: u32,
    /// Requests a key may make at once before the rate applies (0: the
    /// rate).
    pub rate_limit_burst: u32,
    /// Tokens a lookup, bulk call, Expand, export or import costs.
    pub rate_limit_expensive_cost: u32,
    /// Unary request timeout, in seconds.
    pub request_timeout_secs: u64,
    /// `text` or `json`.
    pub log_format: String,
    /// Dead relationship versions younger than this stay readable; older
    /// revisions are refused (FAILED_PRECONDITION). Seconds.
    pub gc_window_secs: u64,
    /// Memory store: the audit chain keeps its newest records holding up to
    /// this many changes; older ones are pruned (verification then starts
    /// at the first retained record). Postgres keeps every record.
    pub audit_max_changes: usize,
    /// How often garbage collection runs (Postgres), seconds.
    pub gc_interval_secs: u64,
    /// Postgres connection pool size.
    pub postgres_max_connections: u32,
    /// Optional hot-standby replica (`postgres://…`) for reads.
    pub postgres_read_replica: Option<String>,
    /// Serve even when the Postgres role can run DDL or change audit rows.
    pub allow_privileged_datastore_role: bool,
    /// HTTP address for `/metrics` (Prometheus), `/healthz` and `/readyz`;
    /// unset: no HTTP listener.
    pub metrics_addr: Option<SocketAddr>,
    /// How often readiness probes the datastore, in milliseconds.
    pub readiness_interval_ms: u64,
    /// OTLP/gRPC collector (`http://collector:4317`) to export traces to.
    pub otlp_endpoint: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        let engine = crate::engine::EngineConfig::default();
        let api = crate::api::ApiLimits::default();
        Config {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            datastore: "memory".into(),
            preshared_keys: Vec::new(),
            preshared_keys_file: None,
            insecure_allow_unauthenticated: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_client_identities: Vec::new(),
            max_message_bytes: 4 * 1024 * 1024,
            max_updates_per_write: engine.max_updates_per_write,
            max_checks_per_bulk: api.max_checks_per_bulk,
            max_preconditions: api.max_preconditions,
            max_read_page: api.max_read_page,
            max_import: api.max_import,
            max_depth: engine.max_depth,
            max_subproblems: engine.budget.max_subproblems,
            max_rows_per_request: engine.budget.max_rows_read,
            max_expand_elements: engine.budget.max_expand_elements,
            revision_quantum_ms: api.revision_quantum.as_millis() as u64,
            max_schema_bytes: engine.schema_limits.max_schema_bytes,
            max_expression_terms: engine.schema_limits.max_expression_terms,
            cache_capacity: engine.cache_capacity,
            max_concurrent_streams: 100,
            concurrency_limit_per_connection: 256,
            max_in_flight: 1_000,
            max_concurrent_per_key: 0,
            max_connection_age_secs: 0,
            max_connections: 4_096,
            protocol_errors_per_peer: 10,
            connection_preface_timeout_secs: 10,
            memory_watermark_bytes: 0,
            rate_limit_per_key: 0,
            rate_limit_burst: 0,
            rate_limit_expensive_cost: 10,
            request_timeout_secs: 10,
            log_format: "text".into(),
            gc_window_secs: 24 * 3600,
            audit_max_changes: crate::store::memory::MemoryOptions::default().audit_max_changes,
            gc_interval_secs: 60,
            postgres_max_connections: 20,
            postgres_read_replica: None,
            allow_privileged_datastore_role: false,
            metrics_addr: None,
            readiness_interval_ms: 2_000,
            otlp_endpoint: None,
        }
    }
}

/// `kinbar serve` flags; each also reads `KINBAR_<NAME>`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (keys as the flags, with underscores).
    #[arg(long, env = "KINBAR_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "KINBAR_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// HTTP address for /metrics, /healthz and /readyz (e.g. 0.0.0.0:9090).
    #[arg(long, env = "KINBAR_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// How often readiness probes the datastore (milliseconds).
    #[arg(long, env = "KINBAR_READINESS_INTERVAL_MS")]
    pub readiness_interval_ms: Option<u64>,
    /// Export traces over OTLP/gRPC to this collector (http://host:4317).
    #[arg(long, env = "KINBAR_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// `memory` or `postgres://…`.
    #[arg(long, env = "KINBAR_DATASTORE")]
    pub datastore: Option<String>,
    /// Read the datastore URL from this file (a mounted Secret), keeping
    /// the password out of the environment and the process list.
    #[arg(long, env = "KINBAR_DATASTORE_FILE", conflicts_with = "datastore")]
    pub datastore_file: Option<PathBuf>,
    /// Read preshared keys from this file: one NAME:KEY:SCOPES[:PREFIXES] per line
    /// (blank lines and `#` comments ignored), added to --preshared-key.
    #[arg(long, env = "KINBAR_PRESHARED_KEYS_FILE")]
    pub preshared_keys_file: Option<PathBuf>,
    /// NAME:KEY:SCOPES[:PREFIXES] (scopes: check, write, admin; prefixes,
    /// e.g. `acme/`, confine the key to one tenant's types); repeatable.
    #[arg(
        long = "preshared-key",
        env = "KINBAR_PRESHARED_KEY",
        value_delimiter = ';'
    )]
    pub preshared_keys: Vec<String>,
    #[arg(long, env = "KINBAR_INSECURE_ALLOW_UNAUTHENTICATED")]
    pub insecure_allow_unauthenticated: bool,
    #[arg(long, env = "KINBAR_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "KINBAR_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    #[arg(long, env = "KINBAR_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// NAME:SCOPES[:PREFIXES]: calls without a key from a client whose
    /// verified certificate names NAME (mTLS) get these scopes, with NAME
    /// as their audit actor; repeatable.
    #[arg(
        long = "tls-client-identity",
        env = "KINBAR_TLS_CLIENT_IDENTITY",
        value_delimiter = ';'
    )]
    pub tls_client_identities: Vec<String>,
    #[arg(long, env = "KINBAR_MAX_UPDATES_PER_WRITE")]
    pub max_updates_per_write: Option<usize>,
    #[arg(long, env = "KINBAR_MAX_DEPTH")]
    pub max_depth: Option<u32>,
    /// Sub-problems one request may evaluate (default 200000).
    #[arg(long, env = "KINBAR_MAX_SUBPROBLEMS")]
    pub max_subproblems: Option<u64>,
    /// Relationships one request may read (default 2000000).
    #[arg(long, env = "KINBAR_MAX_ROWS_PER_REQUEST")]
    pub max_rows_per_request: Option<u64>,
    /// Nodes plus subjects in one Expand response (default 100000).
    #[arg(long, env = "KINBAR_MAX_EXPAND_ELEMENTS")]
    pub max_expand_elements: Option<u64>,
    #[arg(long, env = "KINBAR_REVISION_QUANTUM_MS")]
    pub revision_quantum_ms: Option<u64>,
    #[arg(long, env = "KINBAR_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Garbage-collection window in seconds (default 86400).
    #[arg(long, env = "KINBAR_GC_WINDOW_SECS")]
    pub gc_window_secs: Option<u64>,
    #[arg(long, env = "KINBAR_GC_INTERVAL_SECS")]
    pub gc_interval_secs: Option<u64>,
    #[arg(long, env = "KINBAR_POSTGRES_MAX_CONNECTIONS")]
    pub postgres_max_connections: Option<u32>,
    /// A hot-standby replica URL for reads (used only once it has replayed
    /// the revision a read asks for).
    #[arg(long, env = "KINBAR_POSTGRES_READ_REPLICA")]
    pub postgres_read_replica: Option<String>,
    /// Serve even as a Postgres role that can run DDL or UPDATE/DELETE/
    /// TRUNCATE audit rows (development only; logged as a warning).
    #[arg(long, env = "KINBAR_ALLOW_PRIVILEGED_DATASTORE_ROLE")]
    pub allow_privileged_datastore_role: bool,
    /// Print the effective configuration (defaults ← file ← env ← flags) as
    /// TOML, secrets redacted, and exit without serving.
    #[arg(long)]
    pub print_config: bool,
}

impl Config {
    /// Defaults ← file ← env/flags.
    pub fn load(args: &ServeArgs) -> Result<Config, String> {
        let mut c = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                toml::from_str::<Config>(&text)
                    .map_err(|e| format!("config file {}: {e}", path.display()))?
            }
            None => Config::default(),
        };
        if let Some(v) = args.grpc_addr {
            c.grpc_addr = v;
        }
        if let Some(v) = &args.datastore {
            c.datastore = v.clone();
        }
        if let Some(path) = &args.datastore_file {
            c.datastore = read_secret_file(path)?;
        }
        if args.metrics_addr.is_some() {
            c.metrics_addr = args.metrics_addr;
        }
        if let Some(v) = args.readiness_interval_ms {
            c.readiness_interval_ms = v;
        }
        if args.otlp_endpoint.is_some() {
            c.otlp_endpoint = args.otlp_endpoint.clone();
        }
        if !args.preshared_keys.is_empty() {
            c.preshared_keys = args.preshared_keys.clone();
        }
        if let Some(path) = &args.preshared_keys_file {
            // Read now so a missing or empty file fails at start.
            read_keys_file(path)?;
            c.preshared_keys_file = Some(path.clone());
        }
        c.insecure_allow_unauthenticated |= args.insecure_allow_unauthenticated;
        c.allow_privileged_datastore_role |= args.allow_privileged_datastore_role;
        if args.tls_cert.is_some() {
            c.tls_cert = args.tls_cert.clone();
        }
        if args.tls_key.is_some() {
            c.tls_key = args.tls_key.clone();
        }
        if args.tls_client_ca.is_some() {
            c.tls_client_ca = args.tls_client_ca.clone();
        }
        if !args.tls_client_identities.is_empty() {
            c.tls_client_identities = args.tls_client_identities.clone();
        }
        if let Some(v) = args.max_updates_per_write {
            c.max_updates_per_write = v;
        }
        if let Some(v) = args.max_depth {
            c.max_depth = v;
        }
        if let Some(v) = args.max_subproblems {
            c.max_subproblems = v;
        }
        if let Some(v) = args.max_rows_per_request {
            c.max_rows_per_request = v;
        }
        if let Some(v) = args.max_expand_elements {
            c.max_expand_elements = v;
        }
        if let Some(v) = args.revision_quantum_ms {
            c.revision_quantum_ms = v;
        }
        if let Some(v) = &args.log_format {
            c.log_format = v.clone();
        }
        if let Some(v) = args.gc_window_secs {
            c.gc_window_secs = v;
        }
        if let Some(v) = args.gc_interval_secs {
            c.gc_interval_secs = v;
        }
        if let Some(v) = args.postgres_max_connections {
            c.postgres_max_connections = v;
        }
        if args.postgres_read_replica.is_some() {
            c.postgres_read_replica = args.postgres_read_replica.clone();
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks values that no type can: pairs that go together, ranges.
    pub fn validate(&self) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("--tls-cert and --tls-key must be given together".into());
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err("--tls-client-ca (mTLS) needs --tls-cert and --tls-key".into());
        }
        if !self.tls_client_identities.is_empty() && self.tls_client_ca.is_none() {
            return Err(
                "--tls-client-identity needs --tls-client-ca: only certificates signed by it are verified"
                    .into(),
            );
        }
        if self.gc_interval_secs == 0 || self.postgres_max_connections == 0 {
            return Err("gc_interval_secs and postgres_max_connections must be positive".into());
        }
        if self.max_depth == 0
            || self.max_updates_per_write == 0
            || self.max_read_page == 0
            || self.max_import == 0
            || self.audit_max_changes == 0
            || self.max_subproblems == 0
            || self.max_rows_per_request == 0
            || self.max_expand_elements == 0
            || self.request_timeout_secs == 0
            || self.max_in_flight == 0
            || self.max_concurrent_streams == 0
            || self.readiness_interval_ms == 0
            || self.max_connections == 0
            || self.connection_preface_timeout_secs == 0
        {
            return Err("limits must be positive".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(format!(
                "log_format must be `text` or `json`, not `{}`",
                self.log_format
            ));
        }
        for k in &self.preshared_keys {
            crate::api::auth::PresharedKey::parse(k)?;
        }
        Ok(())
    }
}

impl Config {
    /// The configuration as TOML with secrets redacted: the datastore
    /// password and every preshared key (only names and scopes remain).
    pub fn to_redacted_toml(&self) -> Result<String, String> {
        let mut shown = self.clone();
        shown.datastore = crate::server::redact_credentials(&self.datastore);
        if let Some(r) = &self.postgres_read_replica {
            shown.postgres_read_replica = Some(crate::server::redact_credentials(r));
        }
        shown.preshared_keys = self
            .preshared_keys
            .iter()
            .map(|k| match k.split(':').collect::<Vec<_>>().as_slice() {
                [name, _, scopes] => format!("{name}:***:{scopes}"),
                _ => "***".to_string(),
            })
            .collect();
        toml::to_string(&shown).map_err(|e| format!("cannot print the configuration: {e}"))
    }
}

/// The trimmed contents of a file holding a secret (a datastore URL, keys).
/// Errors name the file, never its contents.
/// The `NAME:KEY:SCOPES` lines of a keys file (blank lines and `#`
/// comments skipped).
pub fn read_keys_file(path: &std::path::Path) -> Result<Vec<String>, String> {
    Ok(read_secret_file(path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

impl Config {
    /// Every key: the configured ones and the keys file's current content.
    pub fn all_preshared_keys(&self) -> Result<Vec<String>, String> {
        let mut keys = self.preshared_keys.clone();
        if let Some(path) = &self.preshared_keys_file {
            keys.extend(read_keys_file(path)?);
        }
        Ok(keys)
    }
}

pub fn read_secret_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code
    use super::*;

    #[test]
    fn secrets_come_from_mounted_files() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("url");
        std::fs::write(&url, "postgres://kinbar:s3cret@db/kinbar\n").unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(
            &keys,
            "# rotated 2026-12-01\nsvc:k1-abcdefghijklmnop:check\n\nadmin:k2-abcdefghijklmnop:admin\n",
        )
        .unwrap();
        let args = ServeArgs {
            datastore_file: Some(url),
            preshared_keys_file: Some(keys),
            ..Default::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.datastore, "postgres://kinbar:s3cret@db/kinbar");
        assert_eq!(c.all_preshared_keys().unwrap().len(), 2);
        // A missing or empty file is an error naming the file, not its contents.
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let e = Config::load(&ServeArgs {
            datastore_file: Some(empty),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("is empty"), "{e}");
        let e = Config::load(&ServeArgs {
            preshared_keys_file: Some(dir.path().join("missing")),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("missing"), "{e}");
    }
}
