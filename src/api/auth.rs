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

/// The configured keys; empty means unauthenticated (loopback or explicit opt-in).
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    keys: Vec<PresharedKey>,
}

impl Authenticator {
    pub fn new(keys: Vec<PresharedKey>) -> Self {
        Authenticator { keys }
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The actor name for a request needing `scope`, or the status to
    /// return. Every refusal is also a security event (see [`refused`]).
    pub fn authorize<T>(&self, request: &Request<T>, scope: Scope) -> Result<String, Status> {
        self.check(request, scope)
            .map_err(|(key, status)| refused(request, key.as_deref(), status))
    }

    fn check<T>(
        &self,
        request: &Request<T>,
        scope: Scope,
    ) -> Result<String, (Option<String>, Status)> {
        if self.keys.is_empty() {
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
        let mut found: Option<&PresharedKey> = None;
        for k in &self.keys {
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
