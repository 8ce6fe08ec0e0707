//! Preshared-key authentication and scopes (DESIGN.md §6).
//!
//! Keys are `NAME:KEY:SCOPES[:PREFIXES]` (scopes comma-separated: `check`, `write`,
//! `admin`). Callers send `authorization: Bearer KEY`. Keys are kept as
//! SHA-256 digests and compared in constant time against every configured
//! key, so neither the key nor which key matched leaks through timing.
//! `admin` implies `write` and `check`; `write` and `check` are separate.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read APIs: checks, expand, lookups, reads, schema read, watch.
    Check,
    /// Relationship writes and deletes.
    Write,
    /// Schema writes, audit; implies every other scope.
    Admin,
}

impl Scope {
    fn parse(s: &str) -> Result<Scope, String> {
        match s {
            "check" => Ok(Scope::Check),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope `{other}` (expected check, write or admin)"
            )),
        }
    }

    /// Comma-separated scopes (`check,write`).
    fn parse_list(s: &str) -> Result<Vec<Scope>, String> {
        s.split(',').map(|s| Scope::parse(s.trim())).collect()
    }

    fn name(self) -> &'static str {
        match self {
            Scope::Check => "check",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    /// Whether `held` grants `self` (`admin` grants every scope).
    fn granted_by(self, held: &[Scope]) -> bool {
        held.iter().any(|s| *s == self || *s == Scope::Admin)
    }
}

/// The refusal of a call whose credential (`what`: a key or a client
/// identity) lacks `scope`; the credential's name goes with it.
fn lacks_scope(what: &str, name: &str, scope: Scope) -> (Option<String>, Status) {
    (
        Some(name.to_string()),
        Status::permission_denied(format!(
            "{what} `{name}` lacks the `{}` scope needed for this method",
            scope.name()
        )),
    )
}

#[derive(Clone)]
pub struct PresharedKey {
    pub name: String,
    digest: [u8; 32],
    pub scopes: Vec<Scope>,
    /// The type-name prefixes the key is confined to (a tenant).
    pub tenant: Tenant,
}

impl std::fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PresharedKey({}, {:?}, {:?})",
            self.name, self.scopes, self.tenant
        )
    }
}

/// A client certificate identity (mTLS): calls without a key from a client
/// whose verified certificate names `name` get `scopes` (and `tenant`),
/// with `name` as the audit actor.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub tenant: Tenant,
}

impl ClientIdentity {
    /// Parses `NAME:SCOPES[:PREFIXES]`. NAME is one of the certificate's
    /// names: a DNS name, a URI (`spiffe://crm.example/ns/sales/sa/orders`:
    /// its `scheme://` is part of the name; a URI with a port cannot be
    /// named) or the subject's common name.
    pub fn parse(text: &str) -> Result<ClientIdentity, String> {
        let scheme = text.find("://").map_or(0, |i| i + "://".len());
        let mut parts = text[scheme..].splitn(3, ':');
        let name = parts.next().map(|n| &text[..scheme + n.len()]);
        let (Some(name), Some(scopes)) = (name, parts.next()) else {
            return Err(format!(
                "a client identity is NAME:SCOPES[:PREFIXES], e.g. crm-service:check, not `{text}`"
            ));
        };
        if name.is_empty() {
            return Err(
                "a client identity needs a name (the certificate's DNS name, URI or common name)"
                    .into(),
            );
        }
        let scopes = Scope::parse_list(scopes)?;
        let tenant = Tenant::parse(parts.next().unwrap_or(""))
            .map_err(|e| format!("client identity `{name}`: {e}"))?;
        Ok(ClientIdentity {
            name: name.to_string(),
            scopes,
            tenant,
        })
    }
}

/// What the server knows of a call's connection: the peer address and the
/// names of the client certificate its TLS handshake verified — DNS and URI
/// subject alternative names and the subject's common names — (empty
/// without mTLS). Put in every request's extensions by `server/conn.rs`.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<std::net::SocketAddr>,
    pub client_names: std::sync::Arc<[String]>,
}

/// The type-name prefixes a key is confined to (`acme/`): several CRM
/// tenants in one Kinbar, each seeing and naming only its own types.
/// Unconfined (no prefixes): every type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tenant(Option<std::sync::Arc<[String]>>);

impl Tenant {
    /// Confined to `prefixes` (each `name/` or `name/name/`; a trailing
    /// `/` is added when missing). No prefixes: unconfined.
    pub fn parse(prefixes: &str) -> Result<Tenant, String> {
        let mut out = Vec::new();
        for p in prefixes.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let p = p.strip_suffix('/').unwrap_or(p);
            let valid = p.split('/').all(|segment| {
                segment.len() <= 64
                    && segment.starts_with(|c: char| c.is_ascii_lowercase())
                    && segment
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            });
            if !valid {
                return Err(format!(
                    "prefix `{p}` is not a type-name prefix (e.g. `acme/`: lowercase letters, digits and `_`, starting with a letter)"
                ));
            }
            out.push(format!("{p}/"));
        }
        Ok(Tenant((!out.is_empty()).then(|| out.into())))
    }

    /// Unconfined: every type.
    pub fn all() -> Tenant {
        Tenant(None)
    }

    pub fn is_confined(&self) -> bool {
        self.0.is_some()
    }

    /// Whether `object_type` lies inside the prefixes.
    pub fn allows(&self, object_type: &str) -> bool {
        match &self.0 {
            None => true,
            Some(prefixes) => prefixes.iter().any(|p| object_type.starts_with(p.as_str())),
        }
    }

    /// The prefixes, for messages (`acme/, globex/`).
    pub fn describe(&self) -> String {
        match &self.0 {
            None => "every type".into(),
            Some(p) => p.join(", "),
        }
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl PresharedKey {
    /// Parses `NAME:KEY:SCOPES[:PREFIXES]` (prefixes comma-separated:
    /// the key is confined to types under them).
    pub fn parse(text: &str) -> Result<PresharedKey, String> {
        let mut parts = text.splitn(4, ':');
        let (Some(name), Some(key), Some(scopes)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("a preshared key is NAME:KEY:SCOPES[:PREFIXES], e.g. crm-api:s3cret:check or acme-api:s3cret:check,write:acme/".into());
        };
        let tenant = Tenant::parse(parts.next().unwrap_or(""))
            .map_err(|e| format!("preshared key `{name}`: {e}"))?;
        if name.is_empty() || key.is_empty() {
            return Err("a preshared key needs a non-empty name and key".into());
        }
        if key.len() < 8 {
            return Err(format!(
                "preshared key `{name}` is shorter than 8 characters"
            ));
        }
        let scopes = Scope::parse_list(scopes)?;
        Ok(PresharedKey {
            name: name.to_string(),
            digest: digest(key),
            scopes,
            tenant,
        })
    }
}

/// Per-key request rates (token buckets, GCRA): `per_second` sustained,
/// `burst` at once; expensive methods (lookups, bulk calls, Expand,
/// export) cost `expensive_cost` tokens. `per_second` 0: no limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateLimits {
    pub per_second: u32,
    pub burst: u32,
    pub expensive_cost: u32,
}

type KeyedLimiter = governor::RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    governor::clock::DefaultClock,
>;

/// Refused calls waiting to be stored as security events (the server
/// flushes them to the datastore every second). An authenticated key's
/// refusals are kept one by one, except its calls over its rate limit,
/// which add up per key, peer (address without port) and minute; refusals
/// without a valid key add up per peer and minute — a flood is a handful
/// of events, not one per call. Bounded: past [`MAX_PENDING_EVENTS`] events
/// (or aggregates) more are dropped and counted.
#[derive(Clone, Default)]
pub struct SecurityLog(std::sync::Arc<std::sync::Mutex<PendingEvents>>);

#[derive(Default)]
struct PendingEvents {
    events: Vec<crate::audit::SecurityEvent>,
    /// Floods: calls without a valid key per address and minute, a key's
    /// rate-limited calls per key, address and minute.
    aggregates: std::collections::HashMap<String, crate::audit::SecurityEvent>,
}

/// The most events (and anonymous aggregates) waiting between flushes.
const MAX_PENDING_EVENTS: usize = 10_000;

impl SecurityLog {
    /// Records a refused call; true when it should also be logged: a
    /// key's refusals one by one always, a flood's only for the first call
    /// of its aggregate since the last flush (at most a line per key,
    /// address and second — a log line per refused call would make a flood
    /// cost the server, and its log pipeline, more than the refusal).
    fn record(&self, key: Option<&str>, peer: &str, method: &str, status: &Status) -> bool {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.record_at(at_ms, key, peer, method, status)
    }

    /// [`SecurityLog::record`] at a given time (milliseconds since the epoch).
    fn record_at(
        &self,
        at_ms: u64,
        key: Option<&str>,
        peer: &str,
        method: &str,
        status: &Status,
    ) -> bool {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let event =
            |key: &str, peer: &str, aggregate: Option<String>| crate::audit::SecurityEvent {
                at_ms,
                key: key.to_string(),
                peer: peer.to_string(),
                method: method.to_string(),
                code: format!("{:?}", status.code()),
                reason: status.message().chars().take(512).collect(),
                count: 1,
                aggregate,
            };
        let host = peer
            .rsplit_once(':')
            .map_or(peer, |(host, _port)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        // A key's denials one by one; floods — calls without a valid key,
        // and a key's calls over its rate limit — add up per key, address
        // and minute (every address as `*` once the table is full).
        let minute = at_ms / 60_000;
        let host = if p.aggregates.len() >= MAX_PENDING_EVENTS {
            "*"
        } else {
            host
        };
        let (who, aggregate) = match key {
            None => ("anonymous", format!("anonymous|{host}|{minute}")),
            Some(key) if status.code() == tonic::Code::ResourceExhausted => (
                key,
                format!("key|{key}|{host}|{:?}|{minute}", status.code()),
            ),
            Some(key) => {
                if p.events.len() >= MAX_PENDING_EVENTS {
                    metrics::counter!("kinbar_security_events_dropped_total").increment(1);
                } else {
                    p.events.push(event(key, peer, None));
                }
                return true;
            }
        };
        match p.aggregates.get_mut(&aggregate) {
            Some(e) => {
                e.count += 1;
                e.at_ms = at_ms;
                false
            }
            None => {
                let e = event(who, host, Some(aggregate.clone()));
                p.aggregates.insert(aggregate, e);
                true
            }
        }
    }

    /// The events recorded since the last drain.
    pub fn drain(&self) -> Vec<crate::audit::SecurityEvent> {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = std::mem::take(&mut p.events);
        out.extend(p.aggregates.drain().map(|(_, e)| e));
        out
    }
}

/// The configured keys; empty means unauthenticated (loopback or explicit opt-in).
#[derive(Clone, Default)]
pub struct Authenticator {
    /// Shared by every clone: a reload is seen by every request at once.
    keys: std::sync::Arc<std::sync::RwLock<Vec<PresharedKey>>>,
    /// Fixed at start: a server started with keys never becomes open, even
    /// if a reload found none.
    open: bool,
    /// One bucket per key name (`anonymous` without keys): bounded by the
    /// configured keys, never by what callers send.
    limiter: Option<std::sync::Arc<KeyedLimiter>>,
    limits: RateLimits,
    security: SecurityLog,
    identities: Vec<ClientIdentity>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys)
            .field("limits", &self.limits)
            .finish()
    }
}

/// Methods that cost [`RateLimits::expensive_cost`] tokens.
const EXPENSIVE: &[&str] = &[
    "LookupResources",
    "LookupSubjects",
    "CheckBulkPermissions",
    "ExpandPermissionTree",
    "ExportBulkRelationships",
    "ImportBulkRelationships",
];

impl Authenticator {
    pub fn new(keys: Vec<PresharedKey>) -> Self {
        Authenticator {
            open: keys.is_empty(),
            keys: std::sync::Arc::new(std::sync::RwLock::new(keys)),
            ..Default::default()
        }
    }

    /// Replaces the keys (a reloaded keys file). An empty set is ignored:
    /// it would lock every client out, and a keyed server never opens.
    pub fn replace_keys(&self, keys: Vec<PresharedKey>) {
        if keys.is_empty() {
            return;
        }
        if let Ok(mut k) = self.keys.write() {
            *k = keys;
        }
    }

    /// Adds per-key rate limits (none when `per_second` is 0).
    pub fn with_rate_limits(mut self, mut limits: RateLimits) -> Self {
        // A burst of 0 means "the rate": resolved once, here.
        if limits.burst == 0 {
            limits.burst = limits.per_second;
        }
        self.limiter = std::num::NonZeroU32::new(limits.per_second).map(|rate| {
            let burst = std::num::NonZeroU32::new(limits.burst).unwrap_or(rate);
            std::sync::Arc::new(governor::RateLimiter::keyed(
                governor::Quota::per_second(rate).allow_burst(burst),
            ))
        });
        self.limits = limits;
        self
    }

    /// Takes the call's tokens from `actor`'s bucket, or says when to retry.
    fn take_tokens<T>(&self, request: &Request<T>, actor: &str) -> Result<(), Status> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let method = request
            .extensions()
            .get::<CallPath>()
            .map(|p| p.0.rsplit('/').next().unwrap_or("").to_string())
            .unwrap_or_default();
        let burst = self.limits.burst;
        let cost = if EXPENSIVE.contains(&method.as_str()) {
            self.limits.expensive_cost.max(1)
        } else {
            1
        }
        .min(burst);
        let cost = std::num::NonZeroU32::new(cost).unwrap_or(std::num::NonZeroU32::MIN);
        let key = actor.to_string();
        match limiter.check_key_n(&key, cost) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                use governor::clock::Clock as _;
                let wait = not_until.wait_time_from(limiter.clock().now());
                metrics::counter!("kinbar_rate_limited_total", "key" => key).increment(1);
                Err(crate::api::status::overloaded(
                    format!(
                        "key `{actor}` is over its rate limit ({} requests/s, burst {burst}; this call costs {cost}); retry in {} ms",
                        self.limits.per_second,
                        wait.as_millis().max(1)
                    ),
                    wait.max(std::time::Duration::from_millis(1)),
                ))
            }
            // The cost is clamped to the burst, so it always fits.
            Err(_) => Ok(()),
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Adds mTLS client identities (calls without a key authenticate by
    /// their verified certificate). A server with identities is not open.
    pub fn with_client_identities(mut self, identities: Vec<ClientIdentity>) -> Self {
        if !identities.is_empty() {
            self.open = false;
        }
        self.identities = identities;
        self
    }

    /// Where refused calls are recorded until the server stores them.
    pub fn security_log(&self) -> SecurityLog {
        self.security.clone()
    }

    /// The caller of a request needing `scope`, or the status to return.
    /// Every refusal is also a security event (see [`refused`]).
    pub fn authorize<T>(&self, request: &Request<T>, scope: Scope) -> Result<Caller, Status> {
        let (actor, tenant) = self
            .check(request, scope)
            .map_err(|(key, status)| self.refused(request, key.as_deref(), status))?;
        self.take_tokens(request, &actor)
            .map_err(|status| self.refused(request, Some(&actor), status))?;
        Ok(Caller {
            actor,
            tenant,
            peer: peer(request),
            method: method(request),
            security: self.security.clone(),
        })
    }

    fn check<T>(
        &self,
        request: &Request<T>,
        scope: Scope,
    ) -> Result<(String, Tenant), (Option<String>, Status)> {
        if self.open {
            return Ok(("anonymous".to_string(), Tenant::all()));
        }
        let anonymous = |s: Status| (None, s);
        let Some(header) = request.metadata().get("authorization") else {
            return self.check_identity(request, scope);
        };
        let value = header
            .to_str()
            .map_err(|_| anonymous(Status::unauthenticated("malformed authorization metadata")))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                anonymous(Status::unauthenticated(
                    "authorization metadata must be `Bearer <key>`",
                ))
            })?
            .trim();
        let presented = digest(token);
        let keys = self
            .keys
            .read()
            .map_err(|_| anonymous(Status::internal("key set lock poisoned")))?;
        let mut found: Option<&PresharedKey> = None;
        for k in keys.iter() {
            if bool::from(k.digest.ct_eq(&presented)) && found.is_none() {
                found = Some(k);
            }
        }
        let key =
            found.ok_or_else(|| anonymous(Status::unauthenticated("unknown preshared key")))?;
        if !scope.granted_by(&key.scopes) {
            return Err(lacks_scope("key", &key.name, scope));
        }
        Ok((key.name.clone(), key.tenant.clone()))
    }
}

impl Authenticator {
    /// A call without a key: authenticated by its verified client
    /// certificate if one of its names is a configured identity.
    fn check_identity<T>(
        &self,
        request: &Request<T>,
        scope: Scope,
    ) -> Result<(String, Tenant), (Option<String>, Status)> {
        let names = request
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.client_names.clone())
            .unwrap_or_else(|| std::sync::Arc::from([]));
        let Some(identity) = self.identities.iter().find(|i| names.contains(&i.name)) else {
            let hint = if names.is_empty() || self.identities.is_empty() {
                "missing `authorization: Bearer <key>` metadata"
            } else {
                "missing `authorization: Bearer <key>` metadata, and the client certificate names no configured identity"
            };
            return Err((None, Status::unauthenticated(hint)));
        };
        if !scope.granted_by(&identity.scopes) {
            return Err(lacks_scope("client identity", &identity.name, scope));
        }
        Ok((identity.name.clone(), identity.tenant.clone()))
    }
}

/// Who is calling: the key's name (the audit actor) and the types it may
/// name, with the peer and method for security events.
#[derive(Clone)]
pub struct Caller {
    pub actor: String,
    pub tenant: Tenant,
    peer: String,
    method: String,
    security: SecurityLog,
}

impl Caller {
    /// Refuses (PERMISSION_DENIED, a security event) a request naming a
    /// type outside the caller's prefixes — whether or not it exists.
    pub fn confine<'t>(&self, types: impl IntoIterator<Item = &'t str>) -> Result<(), Status> {
        if !self.tenant.is_confined() {
            return Ok(());
        }
        for t in types {
            if !self.tenant.allows(t) {
                return Err(self.refuse(format!(
                    "key `{}` is confined to types under {}; `{t}` lies outside them",
                    self.actor,
                    self.tenant.describe()
                )));
            }
        }
        Ok(())
    }

    /// [`Caller::confine`] for the types a filter names. A confined key
    /// must name the resource type where `whole_store` (the filter would
    /// otherwise reach other tenants' relationships: preconditions,
    /// deletes); reads without one are cut to the key's types instead.
    pub fn confine_filter(
        &self,
        filter: &crate::model::RelationshipFilter,
        whole_store: bool,
    ) -> Result<(), Status> {
        if !self.tenant.is_confined() {
            return Ok(());
        }
        if whole_store && filter.resource_type.is_none() {
            return Err(self.refuse(format!(
                "key `{}` is confined to types under {}: name the resource type",
                self.actor,
                self.tenant.describe()
            )));
        }
        self.confine(
            filter
                .resource_type
                .as_deref()
                .into_iter()
                .chain(filter.subject.as_ref().map(|s| s.subject_type.as_str())),
        )
    }

    /// Refuses a confined key (PERMISSION_DENIED, a security event) a
    /// method that spans every tenant: `spans` says what it covers.
    pub fn require_unconfined(&self, spans: &str) -> Result<(), Status> {
        if !self.tenant.is_confined() {
            return Ok(());
        }
        Err(self.refuse(format!(
            "{spans}; key `{}` is confined to {}: use an unconfined admin key",
            self.actor,
            self.tenant.describe()
        )))
    }

    /// A PERMISSION_DENIED for this caller, logged and counted as a
    /// security event.
    pub fn refuse(&self, message: String) -> Status {
        security_event(
            &self.security,
            Some(&self.actor),
            &self.peer,
            &self.method,
            Status::permission_denied(message),
        )
    }
}

fn peer<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.remote)
        .or_else(|| request.remote_addr())
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn method<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<CallPath>()
        .map(|p| p.0.clone())
        .unwrap_or_default()
}

/// The called method's path (`/package.Service/Method`), put into each
/// request's extensions by the server's edge layer, for logs.
#[derive(Debug, Clone)]
pub struct CallPath(pub String);

/// Logs a refused call as a structured security event (target
/// `kinbar::security`): the key's name or `anonymous`, the peer, the
/// method and the reason — never the presented token.
impl Authenticator {
    fn refused<T>(&self, request: &Request<T>, key: Option<&str>, status: Status) -> Status {
        security_event(
            &self.security,
            key,
            &peer(request),
            &method(request),
            status,
        )
    }
}

fn security_event(
    log: &SecurityLog,
    key: Option<&str>,
    peer: &str,
    method: &str,
    status: Status,
) -> Status {
    let logged = log.record(key, peer, method, &status);
    metrics::counter!(
        "kinbar_security_events_total",
        "code" => format!("{:?}", status.code()),
        "key" => key.unwrap_or("anonymous").to_string()
    )
    .increment(1);
    if logged {
        tracing::warn!(
            target: "kinbar::security",
            key = key.unwrap_or("anonymous"),
            %peer,
            %method,
            code = ?status.code(),
            reason = status.message(),
            "call refused"
        );
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_its_first_call_and_stores_every_one() {
        let log = SecurityLog::default();
        let unknown = Status::unauthenticated("unknown preshared key");
        let limited = Status::resource_exhausted("over its rate limit");
        let denied = Status::permission_denied("no write scope");
        // One minute throughout (the aggregates are per minute).
        let at_ms = 1_800_000_000_000;
        let logged = |key, peer, status: &Status| {
            (0..100)
                .filter(|_| log.record_at(at_ms, key, peer, "/m", status))
                .count()
        };
        // Floods: one line per key and address until the next flush.
        assert_eq!(logged(None, "10.0.0.1:1234", &unknown), 1);
        assert_eq!(logged(None, "10.0.0.1:5678", &unknown), 0, "same address");
        assert_eq!(logged(None, "10.0.0.2:1234", &unknown), 1);
        assert_eq!(logged(Some("a"), "10.0.0.1:1", &limited), 1);
        // A key's denials: every one.
        assert_eq!(logged(Some("a"), "10.0.0.1:1", &denied), 100);
        let events = log.drain();
        let count = |key: &str, code: &str| -> u64 {
            events
                .iter()
                .filter(|e| e.key == key && e.code == code)
                .map(|e| e.count)
                .sum()
        };
        assert_eq!(count("anonymous", "Unauthenticated"), 300);
        assert_eq!(count("a", "ResourceExhausted"), 100);
        assert_eq!(count("a", "PermissionDenied"), 100);
        // After the flush the next call of a flood is logged again.
        assert_eq!(logged(None, "10.0.0.1:1234", &unknown), 1);
        // So is the first call of the next minute.
        assert!(log.record_at(at_ms + 60_000, None, "10.0.0.1:1", "/m", &unknown));
        // The live entry point records too.
        assert!(log.record(Some("b"), "10.0.0.3:1", "/m", &denied));
    }

    #[test]
    fn client_identities_name_dns_names_uris_and_common_names() {
        let i = ClientIdentity::parse("crm-service:check,write").unwrap();
        assert_eq!(i.name, "crm-service");
        assert_eq!(i.scopes.len(), 2);
        assert_eq!(i.tenant, Tenant::default());
        let i =
            ClientIdentity::parse("spiffe://crm.example/ns/sales/sa/orders:check:acme/").unwrap();
        assert_eq!(i.name, "spiffe://crm.example/ns/sales/sa/orders");
        assert_eq!(i.tenant, Tenant::parse("acme/").unwrap());
        let i = ClientIdentity::parse("Reporting Job:check").unwrap();
        assert_eq!(i.name, "Reporting Job");
        for bad in ["", "crm-service", ":check", "spiffe://x", "crm:root"] {
            assert!(ClientIdentity::parse(bad).is_err(), "{bad}");
        }
    }
}
