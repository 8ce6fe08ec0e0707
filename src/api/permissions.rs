//! `authzed.api.v1.PermissionsService`.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::Scope;
use super::proto::authzed::api::v1 as pb;
use super::proto::authzed::api::v1::permissions_service_server::PermissionsService;
use super::{Api, convert, engine_err, status};
use crate::model::{DeleteByFilter, Page, RelationshipFilter, Update};
use crate::model::{ObjectRef, Relationship, Revision, SubjectRef};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The PermissionsService implementation.
#[derive(Clone)]
pub struct PermissionsApi(pub Api);

fn refuse_context(ctx: Option<&prost_types::Struct>) -> Result<(), Status> {
    if ctx.is_some_and(|c| !c.fields.is_empty()) {
        return Err(Status::invalid_argument(
            "caveat context is not supported yet (caveats arrive in phase 2)",
        ));
    }
    Ok(())
}

/// Cursors pin the query they belong to (a digest of its parameters), the
/// revision of the first page and the last item sent (a relationship, or an
/// object id for lookups). A cursor presented with another query is refused.
fn encode_cursor(query: &str, rev: &Revision, after: &impl std::fmt::Display) -> pb::Cursor {
    use base64::Engine as _;
    let text = format!("2|{query}|{rev}|{after}");
    pb::Cursor {
        token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text),
    }
}

/// The digest of a query's parameters that its cursors carry.
fn query_digest(parts: &[&str]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.len().to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn invalid_cursor() -> Status {
    status::with_reason(
        tonic::Code::InvalidArgument,
        "invalid cursor",
        pb::ErrorReason::InvalidCursor,
    )
}

fn decode_cursor(c: &pb::Cursor, query: &str) -> Result<(Revision, String), Status> {
    use base64::Engine as _;
    if c.token.len() > super::token::MAX_TOKEN_BYTES {
        return Err(status::with_reason(
            tonic::Code::InvalidArgument,
            format!(
                "cursor of {} bytes is longer than the limit of {}",
                c.token.len(),
                super::token::MAX_TOKEN_BYTES
            ),
            pb::ErrorReason::InvalidCursor,
        ));
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&c.token)
        .map_err(|_| invalid_cursor())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid_cursor())?;
    let mut parts = text.splitn(4, '|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("2"), Some(q), Some(rev), Some(after)) if !after.is_empty() => {
            if q != query {
                return Err(status::with_reason(
                    tonic::Code::InvalidArgument,
                    "the cursor belongs to a different query (other type, permission, subject, resource or filter); send the same request as the page it came from, or start again without a cursor",
                    pb::ErrorReason::InvalidCursor,
                ));
            }
            Ok((Revision::new(rev), after.to_string()))
        }
        _ => Err(invalid_cursor()),
    }
}

/// One CheckBulkPermissions item as model values, or its error.
fn parse_item(
    item: &pb::CheckBulkPermissionsRequestItem,
) -> Result<(ObjectRef, String, SubjectRef), Status> {
    refuse_context(item.context.as_ref())?;
    let resource = convert::object(item.resource.as_ref(), "resource")?;
    let permission = convert::name(&item.permission, "permission")?;
    let subject = convert::subject(item.subject.as_ref(), "subject")?;
    Ok((resource, permission, subject))
}

/// Lookups compute and stream results in batches of this many.
const LOOKUP_BATCH: usize = 100;

impl PermissionsApi {
    /// The revision and resume point of a lookup: from the cursor if given
    /// (same revision as the first page), else from the consistency.
    async fn lookup_start(
        &self,
        query: &str,
        consistency: Option<&pb::Consistency>,
        cursor: Option<&pb::Cursor>,
    ) -> Result<(Revision, Option<String>), Status> {
        match cursor {
            Some(c) => {
                let (rev, after) = decode_cursor(c, query)?;
                self.0
                    .engine
                    .check_revision(&rev)
                    .await
                    .map_err(status::from_engine)?;
                Ok((rev, Some(after)))
            }
            None => Ok((self.0.revision(consistency).await?, None)),
        }
    }

    /// Like `lookup_start`, for reads that resume after a relationship.
    /// Also refuses a filter the schema at that revision does not define.
    async fn relationship_start(
        &self,
        query: &str,
        filter: &RelationshipFilter,
        consistency: Option<&pb::Consistency>,
        cursor: Option<&pb::Cursor>,
    ) -> Result<(Revision, Option<Relationship>), Status> {
        let (at, after) = self.lookup_start(query, consistency, cursor).await?;
        self.0
            .engine
            .validate_filter_at(at.clone(), filter)
            .await
            .map_err(engine_err)?;
        let after = after
            .map(|t| t.parse::<Relationship>().map_err(|_| invalid_cursor()))
            .transpose()?;
        Ok((at, after))
    }

    /// Streams relationships matching `filter` at `at` in pages, sending
    /// each through `emit` — only those inside `tenant`'s types (a
    /// confined key's read without a resource type).
    fn stream_relationships<T: Send + 'static>(
        &self,
        at: Revision,
        filter: RelationshipFilter,
        after: Option<Relationship>,
        limit: Option<usize>,
        tenant: super::auth::Tenant,
        emit: impl Fn(Vec<Relationship>, Revision) -> Vec<T> + Send + 'static,
    ) -> ResponseStream<T> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let engine = self.0.engine.clone();
        let page_size = self.0.limits.max_read_page;
        tokio::spawn(async move {
            let mut after = after;
            let mut remaining = limit.unwrap_or(usize::MAX);
            while remaining > 0 {
                let page = Page {
                    after: after.clone(),
                    limit: Some(page_size.min(remaining)),
                };
                let batch = match engine.read_relationships(at.clone(), &filter, &page).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(engine_err(e))).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    return;
                }
                after = batch.last().cloned();
                let full = batch.len() == page.limit.unwrap_or(0);
                let batch: Vec<Relationship> = if tenant.is_confined() {
                    batch
                        .into_iter()
                        .filter(|r| tenant.allows(&r.resource.object_type))
                        .collect()
                } else {
                    batch
                };
                remaining -= batch.len();
                let items = if batch.is_empty() {
                    Vec::new()
                } else {
                    emit(batch, at.clone())
                };
                for item in items {
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
                if !full {
                    return;
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl PermissionsService for PermissionsApi {
    type ReadRelationshipsStream = ResponseStream<pb::ReadRelationshipsResponse>;
    type LookupResourcesStream = ResponseStream<pb::LookupResourcesResponse>;
    type LookupSubjectsStream = ResponseStream<pb::LookupSubjectsResponse>;
    type ExportBulkRelationshipsStream = ResponseStream<pb::ExportBulkRelationshipsResponse>;

    async fn read_relationships(
        &self,
        request: Request<pb::ReadRelationshipsRequest>,
    ) -> Result<Response<Self::ReadRelationshipsStream>, Status> {
        let caller = self.0.authorize(&request, Scope::Check)?;
        let req = request.get_ref();
        let filter = convert::filter(
            req.relationship_filter.as_ref(),
            "relationship_filter",
            false,
        )?;
        caller.confine_filter(&filter, false)?;
        let query = query_digest(&["read", &format!("{filter:?}")]);
        let (at, after) = self
            .relationship_start(
                &query,
                &filter,
                req.consistency.as_ref(),
                req.optional_cursor.as_ref(),
            )
            .await?;
        let limit = match req.optional_limit {
            0 => None,
            n => Some(n as usize),
        };
        let token = self.0.token(&at);
        let stream = self.stream_relationships(
            at,
            filter,
            after,
            limit,
            caller.tenant,
            move |batch, rev| {
                batch
                    .iter()
                    .map(|r| pb::ReadRelationshipsResponse {
                        read_at: Some(token.clone()),
                        relationship: Some(convert::relationship_pb(r)),
                        after_result_cursor: Some(encode_cursor(&query, &rev, r)),
                    })
                    .collect()
            },
        );
        Ok(Response::new(stream))
    }

    async fn write_relationships(
        &self,
        request: Request<pb::WriteRelationshipsRequest>,
    ) -> Result<Response<pb::WriteRelationshipsResponse>, Status> {
        let caller = self.0.authorize(&request, Scope::Write)?;
        let req = request.get_ref();
        let max = self.0.engine.config().max_updates_per_write;
        if req.updates.len() > max {
            return Err(status::with_reason(
                tonic::Code::InvalidArgument,
                format!(
                    "{} updates in one request, more than the limit of {max}",
                    req.updates.len()
                ),
                pb::ErrorReason::TooManyUpdatesInRequest,
            ));
        }
        let updates = req
            .updates
            .iter()
            .enumerate()
            .map(|(i, u)| {
                Ok(Update {
                    operation: convert::operation(u.operation, &format!("updates[{i}].operation"))?,
                    relationship: convert::relationship(
                        u.relationship.as_ref(),
                        &format!("updates[{i}].relationship"),
                    )?,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        caller.confine(updates.iter().flat_map(|u| {
            [
                u.relationship.resource.object_type.as_str(),
                u.relationship.subject.object.object_type.as_str(),
            ]
        }))?;
        let preconditions =
            convert::preconditions(&req.optional_preconditions, self.0.limits.max_preconditions)?;
        for p in &preconditions {
            caller.confine_filter(&p.filter, true)?;
        }
        let metadata = self.0.write_metadata(
            &request,
            caller.actor,
            req.optional_transaction_metadata.as_ref(),
        );
        let committed = self
            .0
            .engine
            .write_relationships(updates, preconditions, metadata)
            .await
            .map_err(engine_err)?;
        Ok(Response::new(pb::WriteRelationshipsResponse {
            written_at: Some(self.0.token(&committed.revision)),
        }))
    }

    async fn delete_relationships(
        &self,
        request: Request<pb::DeleteRelationshipsRequest>,
    ) -> Result<Response<pb::DeleteRelationshipsResponse>, Status> {
        let caller = self.0.authorize(&request, Scope::Write)?;
        let req = request.get_ref();
        let filter = convert::filter(
            req.relationship_filter.as_ref(),
            "relationship_filter",
            true,
        )?;
        caller.confine_filter(&filter, true)?;
        let preconditions =
            convert::preconditions(&req.optional_preconditions, self.0.limits.max_preconditions)?;
        for p in &preconditions {
            caller.confine_filter(&p.filter, true)?;
        }
        let limit = match req.optional_limit {
            0 => None,
            n => Some(n as usize),
        };
        let metadata = self.0.write_metadata(
            &request,
            caller.actor,
            req.optional_transaction_metadata.as_ref(),
        );
        let committed = self
            .0
            .engine
            .delete_relationships(
                DeleteByFilter {
                    filter: filter.clone(),
                    limit,
                    allow_partial: req.optional_allow_partial_deletions,
                    expect_exactly: false,
                },
                preconditions,
                metadata,
            )
            .await
            .map_err(engine_err)?;
        let deleted = committed.changes.len();
        let partial = match limit {
            Some(l) if deleted == l => !self
                .0
                .engine
                .read_relationships(
                    committed.revision.clone(),
                    &filter,
                    &Page {
                        after: None,
                        limit: Some(1),
                    },
                )
                .await
                .map_err(engine_err)?
                .is_empty(),
            _ => false,
        };
        use pb::delete_relationships_response::DeletionProgress as P;
        Ok(Response::new(pb::DeleteRelationshipsResponse {
            deleted_at: Some(self.0.token(&committed.revision)),
            deletion_progress: if partial {
                P::Partial as i32
            } else {
                P::Complete as i32
            },
            relationships_deleted_count: deleted as u64,
        }))
    }

    async fn check_permission(
        &self,
        request: Request<pb::CheckPermissionRequest>,
    ) -> Result<Response<pb::CheckPermissionResponse>, Status> {
        let caller = self.0.authorize(&request, Scope::Check)?;
        let req = request.get_ref();
        let at = self.0.revision(req.consistency.as_ref()).await?;
        refuse_context(req.context.as_ref())?;
        let resource = convert::object(req.resource.as_ref(), "resource")?;
        let permission = convert::name(&req.permission, "permission")?;
        let subject = convert::subject(req.subject.as_ref(), "subject")?;
        caller.confine([
            resource.object_type.as_str(),
            subject.object.object_type.as_str(),
        ])?;
        let d = self
            .0
            .engine
            .check_at(at.clone(), &resource, &permission, &subject)
            .await
            .map_err(engine_err)?;
        let permissionship = convert::permissionship(d);
        Ok(Response::new(pb::CheckPermissionResponse {
            checked_at: Some(self.0.token(&at)),
            permissionship,
            partial_caveat_info: None,
            debug_trace: None,
            optional_expires_at: None,
        }))
    }

    async fn check_bulk_permissions(
        &self,
        request: Request<pb::CheckBulkPermissionsRequest>,
    ) -> Result<Response<pb::CheckBulkPermissionsResponse>, Status> {
        let caller = self.0.authorize(&request, Scope::Check)?;
        let req = request.get_ref();
        let max = self.0.limits.max_checks_per_bulk;
        if req.items.len() > max {
            return Err(status::with_reason(
                tonic::Code::InvalidArgument,
                format!(
                    "{} checks in one request, more than the limit of {max}",
                    req.items.len()
                ),
                pb::ErrorReason::TooManyChecksInRequest,
            ));
        }
        let at = self.0.revision(req.consistency.as_ref()).await?;
        // Items that parse are evaluated together (shared work); the others
        // answer their own error.
        let parsed: Vec<Result<(ObjectRef, String, SubjectRef), Status>> = req
            .items
            .iter()
            .map(|item| {
                let parsed = parse_item(item)?;
                caller.confine([
                    parsed.0.object_type.as_str(),
                    parsed.2.object.object_type.as_str(),
                ])?;
                Ok(parsed)
            })
            .collect();
        let valid: Vec<(ObjectRef, String, SubjectRef)> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let mut decided = self
            .0
            .engine
            .check_bulk_at(at.clone(), &valid)
            .await
            .into_iter();
        let mut pairs = Vec::with_capacity(req.items.len());
        for (item, parsed) in req.items.iter().zip(parsed) {
            use pb::check_bulk_permissions_pair::Response as R;
            let answer = match parsed {
                Err(s) => Err(s),
                Ok(_) => match decided.next() {
                    Some(Ok(d)) => Ok(convert::permissionship(d)),
                    Some(Err(e)) => Err(engine_err(e)),
                    None => Err(Status::internal("bulk check lost an item")),
                },
            };
            let response = match answer {
                Ok(permissionship) => R::Item(pb::CheckBulkPermissionsResponseItem {
                    permissionship,
                    partial_caveat_info: None,
                    debug_trace: None,
                }),
                Err(s) => R::Error(super::proto::google::rpc::Status {
                    code: s.code() as i32,
                    message: s.message().to_string(),
                    details: vec![],
                }),
            };
            pairs.push(pb::CheckBulkPermissionsPair {
                request: Some(item.clone()),
                response: Some(response),
            });
        }
        Ok(Response::new(pb::CheckBulkPermissionsResponse {
            checked_at: Some(self.0.token(&at)),
            pairs,
        }))
    }

    async fn expand_permission_tree(
        &self,
        request: Request<pb::ExpandPermissionTreeRequest>,
    ) -> Result<Response<pb::ExpandPermissionTreeResponse>, Status> {
        let caller = self.0.authorize(&request, Scope::Check)?;
        let req = request.get_ref();
        let at = self.0.revision(req.consistency.as_ref()).await?;
        let resource = convert::object(req.resource.as_ref(), "resource")?;
        let permission = convert::name(&req.permission, "permission")?;
        caller.confine([resource.object_type.as_str()])?;
        let tree = self
            .0
            .engine
            .expand_at(at.clone(), &resource, &permission)
            .await
            .map_err(engine_err)?;
        Ok(Response::new(pb::ExpandPermissionTreeResponse {
            expanded_at: Some(self.0.token(&at)),
            tree_root: Some(convert::tree_pb(&tree)),
        }))
    }

    async fn lookup_resources(
        &self,
        request: Request<pb::LookupResourcesRequest>,
    ) -> Result<Response<Self::LookupResourcesStream>, Status> {
        let caller = self.0.authorize(&request, Scope::Check)?;
        let req = request.into_inner();
        refuse_context(req.context.as_ref())?;
        convert::name(&req.permission, "permission")?;
        let subject = convert::subject(req.subject.as_ref(), "subject")?;
        caller.confine([
            req.resource_object_type.as_str(),
            subject.object.object_type.as_str(),
        ])?;
        let query = query_digest(&[
            "resources",
            &req.resource_object_type,
            &req.permission,
            &subject.to_string(),
        ]);
        let (at, mut after) = self
            .lookup_start(
                &query,
                req.consistency.as_ref(),
                req.optional_cursor.as_ref(),
            )
            .await?;
        let limit = match req.optional_limit {
            0 => usize::MAX,
            n => n as usize,
        };
        // One walk for the whole stream (validated before streaming, so a
        // bad request fails with a status, not mid-stream); candidates are
        // then confirmed in order and sent as they are confirmed.
        let engine = self.0.engine.clone();
        let candidates = engine
            .resource_candidates_at(
                at.clone(),
                &req.resource_object_type,
                &req.permission,
                &subject,
            )
            .await
            .map_err(engine_err)?;
        let token = self.0.token(&at);
        let (tx, rx) = tokio::sync::mpsc::channel(LOOKUP_BATCH);
        tokio::spawn(async move {
            let range = match after.take() {
                Some(a) => candidates.range::<str, _>((
                    std::ops::Bound::Excluded(a.as_str()),
                    std::ops::Bound::Unbounded,
                )),
                None => candidates.range::<str, _>(..),
            };
            let mut sent = 0usize;
            for id in range {
                if sent >= limit {
                    return;
                }
                match engine
                    .resource_granted(
                        &at,
                        &req.resource_object_type,
                        id,
                        &req.permission,
                        &subject,
                    )
                    .await
                {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(e) => {
                        let _ = tx.send(Err(engine_err(e))).await;
                        return;
                    }
                }
                sent += 1;
                let item = pb::LookupResourcesResponse {
                    looked_up_at: Some(token.clone()),
                    after_result_cursor: Some(encode_cursor(&query, &at, id)),
                    resource_object_id: id.clone(),
                    permissionship: pb::LookupPermissionship::HasPermission as i32,
                    partial_caveat_info: None,
                };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lookup_subjects(
        &self,
        request: Request<pb::LookupSubjectsRequest>,
    ) -> Result<Response<Self::LookupSubjectsStream>, Status> {
        let caller = self.0.authorize(&request, Scope::Check)?;
        let req = request.into_inner();
        refuse_context(req.context.as_ref())?;
        let resource = convert::object(req.resource.as_ref(), "resource")?;
        convert::name(&req.permission, "permission")?;
        caller.confine([
            resource.object_type.as_str(),
            req.subject_object_type.as_str(),
        ])?;
        let relation = match req.optional_subject_relation.as_str() {
            "" | crate::model::ELLIPSIS => None,
            r => Some(convert::name(r, "optional_subject_relation")?),
        };
        let query = query_digest(&[
            "subjects",
            &resource.to_string(),
            &req.permission,
            &req.subject_object_type,
            relation.as_deref().unwrap_or(""),
        ]);
        let (at, after) = self
            .lookup_start(
                &query,
                req.consistency.as_ref(),
                req.optional_cursor.as_ref(),
            )
            .await?;
        let limit = match req.optional_concrete_limit {
            0 => usize::MAX,
            n => n as usize,
        };
        let page = self
            .0
            .engine
            .lookup_subjects_at(
                at.clone(),
                &resource,
                &req.permission,
                &req.subject_object_type,
                relation.as_deref(),
                after.as_deref(),
                limit,
            )
            .await
            .map_err(engine_err)?;
        let token = self.0.token(&at);
        let has = pb::LookupPermissionship::HasPermission as i32;
        let resolved = |id: &str| pb::ResolvedSubject {
            subject_object_id: id.to_string(),
            permissionship: has,
            partial_caveat_info: None,
        };
        let mut items = Vec::new();
        let include_wildcard = req.wildcard_option
            != pb::lookup_subjects_request::WildcardOption::ExcludeWildcards as i32;
        if let (Some(excluded), true) = (&page.wildcard, include_wildcard) {
            items.push(pb::LookupSubjectsResponse {
                looked_up_at: Some(token.clone()),
                subject_object_id: crate::model::WILDCARD_ID.to_string(),
                excluded_subject_ids: excluded.clone(),
                permissionship: has,
                partial_caveat_info: None,
                subject: Some(resolved(crate::model::WILDCARD_ID)),
                excluded_subjects: excluded.iter().map(|e| resolved(e)).collect(),
                after_result_cursor: None,
            });
        }
        for id in &page.subject_ids {
            items.push(pb::LookupSubjectsResponse {
                looked_up_at: Some(token.clone()),
                subject_object_id: id.clone(),
                excluded_subject_ids: vec![],
                permissionship: has,
                partial_caveat_info: None,
                subject: Some(resolved(id)),
                excluded_subjects: vec![],
                after_result_cursor: Some(encode_cursor(&query, &at, id)),
            });
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(
            items.into_iter().map(Ok),
        ))))
    }

    async fn import_bulk_relationships(
        &self,
        request: Request<Streaming<pb::ImportBulkRelationshipsRequest>>,
    ) -> Result<Response<pb::ImportBulkRelationshipsResponse>, Status> {
        let caller = self.0.authorize(&request, Scope::Write)?;
        let metadata = self.0.write_metadata(&request, caller.actor.clone(), None);
        let max = self.0.limits.max_import;
        let mut stream = request.into_inner();
        let mut relationships = Vec::new();
        while let Some(batch) = stream.message().await? {
            for (i, r) in batch.relationships.iter().enumerate() {
                let r = convert::relationship(Some(r), &format!("relationships[{i}]"))?;
                caller.confine([
                    r.resource.object_type.as_str(),
                    r.subject.object.object_type.as_str(),
                ])?;
                relationships.push(r);
            }
            if relationships.len() > max {
                return Err(status::with_reason(
                    tonic::Code::InvalidArgument,
                    format!("more than {max} relationships in one import; split it"),
                    pb::ErrorReason::ExceedsMaximumAllowableLimit,
                ));
            }
        }
        let n = relationships.len() as u64;
        self.0
            .engine
            .import_relationships(relationships, metadata)
            .await
            .map_err(engine_err)?;
        Ok(Response::new(pb::ImportBulkRelationshipsResponse {
            num_loaded: n,
        }))
    }

    async fn export_bulk_relationships(
        &self,
        request: Request<pb::ExportBulkRelationshipsRequest>,
    ) -> Result<Response<Self::ExportBulkRelationshipsStream>, Status> {
        let caller = self.0.authorize(&request, Scope::Check)?;
        let req = request.get_ref();
        let filter = match &req.optional_relationship_filter {
            Some(f) => convert::filter(Some(f), "optional_relationship_filter", false)?,
            None => RelationshipFilter::default(),
        };
        caller.confine_filter(&filter, false)?;
        let query = query_digest(&["export", &format!("{filter:?}")]);
        let (at, after) = self
            .relationship_start(
                &query,
                &filter,
                req.consistency.as_ref(),
                req.optional_cursor.as_ref(),
            )
            .await?;
        let limit = match req.optional_limit {
            0 => None,
            n => Some(n as usize),
        };
        let stream = self.stream_relationships(
            at,
            filter,
            after,
            limit,
            caller.tenant,
            move |batch, rev| {
                let cursor = batch.last().map(|r| encode_cursor(&query, &rev, r));
                vec![pb::ExportBulkRelationshipsResponse {
                    after_result_cursor: cursor,
                    relationships: batch.iter().map(convert::relationship_pb).collect(),
                }]
            },
        );
        Ok(Response::new(stream))
    }
}
