//! `authzed.api.v1.WatchService`: committed changes after a revision, in
//! commit order, resumable from a token, with transaction metadata.
//!
//! Changes come from `Datastore::changes_since` (by revision, never by
//! time); the engine's commit notifications wake waiting streams, and a
//! periodic poll catches writes made by other processes.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::Scope;
use super::proto::authzed::api::v1 as pb;
use super::proto::authzed::api::v1::watch_service_server::WatchService;
use super::{Api, convert, status};

/// The WatchService implementation.
#[derive(Clone)]
pub struct WatchApi(pub Api);

#[tonic::async_trait]
impl WatchService for WatchApi {
    type WatchStream =
        Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.0.authorize(&request, Scope::Check)?;
        let req = request.into_inner();
        let mut filters = Vec::new();
        for (i, f) in req.optional_relationship_filters.iter().enumerate() {
            let filter = convert::filter(
                Some(f),
                &format!("optional_relationship_filters[{i}]"),
                false,
            )?;
            caller.confine_filter(&filter, false)?;
            filters.push(filter);
        }
        caller.confine(req.optional_object_types.iter().map(String::as_str))?;
        let types = req.optional_object_types.clone();
        let tenant = caller.tenant;
        let engine = self.0.engine.clone();
        let mut cursor = match &req.optional_start_cursor {
            Some(t) => self.0.decode_token(t)?,
            None => engine.head_revision().await.map_err(status::from_engine)?,
        };
        // Filters name types and relations of the schema at the start.
        for f in &filters {
            engine
                .validate_filter_at(cursor.clone(), f)
                .await
                .map_err(status::from_engine)?;
        }
        // Fail fast if the start is already garbage-collected.
        engine
            .changes_since(&cursor, 1)
            .await
            .map_err(status::from_engine)?;
        let mut commits = self.0.engine.subscribe();
        let mut closing = self.0.closing();
        let api = self.0.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let batch = match engine.changes_since(&cursor, 100).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(status::from_engine(e))).await;
                        return;
                    }
                };
                for txn in &batch {
                    cursor = txn.revision.clone();
                    let updates: Vec<pb::RelationshipUpdate> = txn
                        .changes
                        .iter()
                        .filter(|c| {
                            let r = &c.relationship;
                            tenant.allows(&r.resource.object_type)
                                && (types.is_empty() || types.contains(&r.resource.object_type))
                                && (filters.is_empty() || filters.iter().any(|f| f.matches(r)))
                        })
                        .map(convert::change_pb)
                        .collect();
                    let schema_updated = match &txn.schema_change {
                        None => false,
                        // A confined key hears of changes to its own
                        // definitions only.
                        Some((old, new)) if tenant.is_confined() => {
                            let limits = &engine.config().schema_limits;
                            let own = |t: &str| {
                                super::tenant::own_text(t, &tenant, limits)
                                    .map(|o| o.trim().to_string())
                                    .ok()
                            };
                            old.as_deref().map_or(Some(String::new()), own) != own(new)
                        }
                        Some(_) => true,
                    };
                    if updates.is_empty() && !schema_updated {
                        continue;
                    }
                    let mut meta = txn.metadata.fields.clone();
                    meta.insert(
                        "actor".into(),
                        serde_json::Value::String(txn.metadata.actor.clone()),
                    );
                    let response = pb::WatchResponse {
                        updates,
                        changes_through: Some(api.token(&txn.revision)),
                        optional_transaction_metadata: Some(convert::json_struct(&meta)),
                        schema_updated,
                        is_checkpoint: false,
                        full_revision_metadata: vec![],
                    };
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                if *closing.borrow() {
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "the server is shutting down; resume from the last token",
                        )))
                        .await;
                    return;
                }
                if batch.is_empty()
                    && !super::wait_for_commit(&mut commits, &mut closing, &tx).await
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
