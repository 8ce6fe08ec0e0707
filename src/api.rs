//! The gRPC API: SpiceDB-compatible `authzed.api.v1` services over the engine.
//!
//! The only layer that sees protobuf types and `tonic::Status`: `convert`
//! turns wire messages into model types (validating them), `status` turns
//! engine errors into statuses, `token` makes ZedTokens and `auth` checks
//! preshared keys. Each service method states the scope it needs.

mod admin_service;
mod audit_service;
pub mod auth;
pub mod codec;
pub mod convert;
mod permissions;
pub mod proto;
mod schema_service;
pub mod status;
mod tenant;
pub mod token;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Status};

pub use admin_service::AdminApi;
pub use audit_service::AuditApi;
pub use permissions::PermissionsApi;
pub use schema_service::SchemaApi;
pub use watch::WatchApi;

use crate::engine::Engine;
use crate::model::Revision;
use crate::model::TxnMetadata;
use auth::{Authenticator, Scope};
use proto::authzed::api::v1 as pb;

/// Request limits of the API.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    pub max_checks_per_bulk: usize,
    pub max_preconditions: usize,
    pub max_read_page: usize,
    /// Relationships in one ImportBulkRelationships stream.
    pub max_import: usize,
    /// minimize_latency picks a revision quantized to this window.
    pub revision_quantum: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_checks_per_bulk: 1_000,
            max_preconditions: 1_000,
            max_read_page: 1_000,
            max_import: 5_000_000,
            revision_quantum: Duration::from_secs(5),
        }
    }
}

/// State shared by every service.
#[derive(Clone)]
pub struct Api {
    pub engine: Arc<Engine>,
    pub auth: Authenticator,
    pub limits: ApiLimits,
    /// Set when the server starts shutting down: long-lived streams end.
    closing: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Api {
    pub fn new(engine: Arc<Engine>, auth: Authenticator, limits: ApiLimits) -> Self {
        Api {
            engine,
            auth,
            limits,
            closing: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// Ends long-lived streams (Watch) so a graceful shutdown can complete.
    pub fn begin_shutdown(&self) {
        self.closing.send_replace(true);
    }

    pub(crate) fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    fn datastore_id(&self) -> &str {
        self.engine.datastore_id()
    }

    pub(crate) fn token(&self, revision: &Revision) -> pb::ZedToken {
        pb::ZedToken {
            token: token::encode(revision, self.datastore_id()),
        }
    }

    fn decode_token(&self, t: &pb::ZedToken) -> Result<Revision, Status> {
        token::decode(&t.token, self.datastore_id()).map_err(Status::invalid_argument)
    }

    /// The revision a read with `consistency` happens at (DESIGN.md §7).
    pub(crate) async fn revision(
        &self,
        consistency: Option<&pb::Consistency>,
    ) -> Result<Revision, Status> {
        use crate::model::Consistency as C;
        use pb::consistency::Requirement as R;
        let wanted = match consistency.and_then(|c| c.requirement.as_ref()) {
            None | Some(R::MinimizeLatency(_)) => C::MinimizeLatency,
            Some(R::FullyConsistent(_)) => C::FullyConsistent,
            Some(R::AtLeastAsFresh(t)) => C::AtLeastAsFresh(self.decode_token(t)?),
            Some(R::AtExactSnapshot(t)) => C::AtExactSnapshot(self.decode_token(t)?),
        };
        self.engine
            .resolve(&wanted, self.limits.revision_quantum)
            .await
            .map_err(status::from_engine)
    }

    /// Authorizes a request and builds the transaction metadata of a write.
    pub(crate) fn authorize<T>(
        &self,
        request: &Request<T>,
        scope: Scope,
    ) -> Result<auth::Caller, Status> {
        self.auth.authorize(request, scope)
    }

    pub(crate) fn write_metadata<T>(
        &self,
        request: &Request<T>,
        actor: String,
        fields: Option<&prost_types::Struct>,
    ) -> TxnMetadata {
        let request_id = request
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        TxnMetadata {
            actor,
            request_id,
            fields: convert::metadata(fields),
        }
    }
}

/// For streams that follow new commits (Watch, audit tail): waits until a
/// commit is announced, the server starts closing, a periodic poll is due
/// (commits by other processes), or the client went away. `false`: end
/// the stream.
pub(crate) async fn wait_for_commit<T>(
    commits: &mut tokio::sync::watch::Receiver<u64>,
    closing: &mut tokio::sync::watch::Receiver<bool>,
    tx: &tokio::sync::mpsc::Sender<T>,
) -> bool {
    tokio::select! {
        _ = commits.changed() => true,
        _ = closing.changed() => true,
        _ = tokio::time::sleep(Duration::from_secs(1)) => true,
        _ = tx.closed() => false,
    }
}

fn engine_err(e: crate::engine::Error) -> Status {
    status::from_engine(e)
}
