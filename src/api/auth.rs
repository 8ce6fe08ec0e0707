//! Preshared-key authentication and scopes (DESIGN.md §6).
//!
//! Keys are `NAME:KEY:SCOPES` (scopes comma-separated: `check`, `write`,
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
}

#[derive(Clone)]
pub struct PresharedKey {
    pub name: String,
    digest: [u8; 32],
    pub scopes: Vec<Scope>,
}

impl std::fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PresharedKey({}, {:?})", self.name, self.scopes)
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl PresharedKey {
    /// Parses `NAME:KEY:SCOPES`.
    pub fn parse(text: &str) -> Result<PresharedKey, String> {
        let mut parts = text.splitn(3, ':');
        let (Some(name), Some(key), Some(scopes)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("a preshared key is NAME:KEY:SCOPES, e.g. crm-api:s3cret:check".into());
        };
        if name.is_empty() || key.is_empty() {
            return Err("a preshared key needs a non-empty name and key".into());
        }
        if key.len() < 8 {
            return Err(format!(
                "preshared key `{name}` is shorter than 8 characters"
            ));
        }
        let scopes = scopes
            .split(',')
            .map(|s| Scope::parse(s.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PresharedKey {
            name: name.to_string(),
            digest: digest(key),
            scopes,
        })
    }

    fn allows(&self, scope: Scope) -> bool {
        self.scopes
            .iter()
            .any(|s| *s == scope || *s == Scope::Admin)
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

    /// The actor name for a request needing `scope`, or the status to
    /// return. Every refusal is also a security event (see [`refused`]).
    pub fn authorize<T>(&self, request: &Request<T>, scope: Scope) -> Result<String, Status> {
        let actor = self
            .check(request, scope)
            .map_err(|(key, status)| refused(request, key.as_deref(), status))?;
        self.take_tokens(request, &actor)
            .map_err(|status| refused(request, Some(&actor), status))?;
        Ok(actor)
    }

    fn check<T>(
        &self,
        request: &Request<T>,
        scope: Scope,
    ) -> Result<String, (Option<String>, Status)> {
        if self.open {
            return Ok("anonymous".to_string());
        }
        let anonymous = |s: Status| (None, s);
        let header = request.metadata().get("authorization").ok_or_else(|| {
            anonymous(Status::unauthenticated(
                "missing `authorization: Bearer <key>` metadata",
            ))
        })?;
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
        if !key.allows(scope) {
            return Err((
                Some(key.name.clone()),
                Status::permission_denied(format!(
                    "key `{}` lacks the `{}` scope needed for this method",
                    key.name,
                    match scope {
                        Scope::Check => "check",
                        Scope::Write => "write",
                        Scope::Admin => "admin",
                    }
                )),
            ));
        }
        Ok(key.name.clone())
    }
}

/// The called method's path (`/package.Service/Method`), put into each
/// request's extensions by the server's edge layer, for logs.
#[derive(Debug, Clone)]
pub struct CallPath(pub String);

/// Logs a refused call as a structured security event (target
/// `kinbar::security`): the key's name or `anonymous`, the peer, the
/// method and the reason — never the presented token.
fn refused<T>(request: &Request<T>, key: Option<&str>, status: Status) -> Status {
    let peer = request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    let method = request
        .extensions()
        .get::<CallPath>()
        .map(|p| p.0.clone())
        .unwrap_or_default();
    metrics::counter!(
        "kinbar_security_events_total",
        "code" => format!("{:?}", status.code()),
        "key" => key.unwrap_or("anonymous").to_string()
    )
    .increment(1);
    tracing::warn!(
        target: "kinbar::security",
        key = key.unwrap_or("anonymous"),
        %peer,
        %method,
        code = ?status.code(),
        reason = status.message(),
        "call refused"
    );
    status
}
