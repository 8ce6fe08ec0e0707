//! `kinbar.v1.AuditService`: read (and follow) the audit trail, verify its
//! hash chain. Admin scope.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::Scope;
use super::proto::kinbar::v1 as kpb;
use super::proto::kinbar::v1::audit_service_server::AuditService;
use super::{Api, convert, status};
use crate::audit::{AuditFilter, AuditRecord, Replay, Verification, Verifier, hex};

/// The AuditService implementation.
#[derive(Clone)]
pub struct AuditApi(pub Api);

/// Milliseconds since the epoch; times before it are the epoch and times
/// past `u64::MAX` ms saturate (a filter bound from a caller can be any
/// Timestamp: an overflow here panicked, found by the request fuzzer).
fn timestamp_ms(t: &prost_types::Timestamp) -> u64 {
    (t.seconds.max(0) as u64)
        .saturating_mul(1000)
        .saturating_add(t.nanos.max(0) as u64 / 1_000_000)
}

/// The Timestamp of a time in milliseconds since the epoch.
fn ms_timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn to_pb(api: &Api, r: &AuditRecord) -> kpb::AuditTransaction {
    kpb::AuditTransaction {
        sequence: r.sequence,
        revision_token: api.token(&r.revision()).token,
        committed_at: Some(ms_timestamp(r.committed_at_ms)),
        actor: r.actor.clone(),
        request_id: r.request_id.clone(),
        metadata: Some(convert::json_struct(&r.metadata)),
        changes: r
            .changes
            .iter()
            .map(|c| kpb::AuditChange {
                operation: c.operation.clone(),
                relationship: c.relationship.clone(),
            })
            .collect(),
        schema_changed: r.new_schema.is_some(),
        old_schema: r.old_schema.clone().unwrap_or_default(),
        new_schema: r.new_schema.clone().unwrap_or_default(),
        previous_hash: hex(&r.previous_hash),
        hash: hex(&r.hash),
    }
}

/// A record as a confined key sees it: only changes to its types, the
/// schema texts cut to its definitions; `None` when nothing of it is the
/// key's (another tenant's transaction).
fn tenant_view(
    api: &Api,
    tenant: &super::auth::Tenant,
    r: &AuditRecord,
) -> Result<Option<kpb::AuditTransaction>, Status> {
    let mut t = to_pb(api, r);
    if !tenant.is_confined() {
        return Ok(Some(t));
    }
    t.changes.retain(|c| {
        c.relationship
            .split_once(':')
            .is_some_and(|(resource_type, _)| tenant.allows(resource_type))
    });
    let limits = &api.engine.config().schema_limits;
    if t.schema_changed {
        t.old_schema = match r.old_schema.as_deref() {
            Some(old) => super::tenant::own_text(old, tenant, limits)?,
            None => String::new(),
        };
        t.new_schema = super::tenant::own_text(&t.new_schema, tenant, limits)?;
        t.schema_changed = t.old_schema.trim() != t.new_schema.trim();
        if !t.schema_changed {
            t.old_schema.clear();
            t.new_schema.clear();
        }
    }
    Ok((t.schema_changed || !t.changes.is_empty()).then_some(t))
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    type ReadAuditStream =
        Pin<Box<dyn Stream<Item = Result<kpb::ReadAuditResponse, Status>> + Send + 'static>>;
    type ReadSecurityEventsStream = Pin<
        Box<dyn Stream<Item = Result<kpb::ReadSecurityEventsResponse, Status>> + Send + 'static>,
    >;

    async fn read_security_events(
        &self,
        request: Request<kpb::ReadSecurityEventsRequest>,
    ) -> Result<Response<Self::ReadSecurityEventsStream>, Status> {
        self.0
            .authorize(&request, Scope::Admin)?
            .require_unconfined("security events cover every tenant's keys")?;
        let req = request.into_inner();
        let mut after: u64 = match req.optional_cursor.as_str() {
            "" => 0,
            c => c
                .parse()
                .map_err(|_| Status::invalid_argument("invalid security event cursor"))?,
        };
        let mut remaining = match req.optional_limit {
            0 => usize::MAX,
            n => n as usize,
        };
        let engine = self.0.engine.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while remaining > 0 {
                let batch = match engine.read_security_events(after, remaining.min(500)).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(status::from_engine(e))).await;
                        return;
                    }
                };
                if batch.is_empty() {
                    return;
                }
                for e in batch {
                    after = e.id;
                    remaining -= 1;
                    let item = kpb::ReadSecurityEventsResponse {
                        after_result_cursor: e.id.to_string(),
                        event: Some(kpb::SecurityEvent {
                            id: e.id,
                            at: Some(ms_timestamp(e.event.at_ms)),
                            key: e.event.key,
                            peer: e.event.peer,
                            method: e.event.method,
                            code: e.event.code,
                            reason: e.event.reason,
                            count: e.event.count,
                        }),
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn read_audit(
        &self,
        request: Request<kpb::ReadAuditRequest>,
    ) -> Result<Response<Self::ReadAuditStream>, Status> {
        let caller = self.0.authorize(&request, Scope::Admin)?;
        let tenant = caller.tenant;
        let req = request.into_inner();
        let filter = AuditFilter {
            from_ms: req.optional_from.as_ref().map(timestamp_ms),
            until_ms: req.optional_until.as_ref().map(timestamp_ms),
            actor: Some(req.optional_actor.clone()).filter(|s| !s.is_empty()),
            object: Some(req.optional_object.clone()).filter(|s| !s.is_empty()),
            relation: Some(req.optional_relation.clone()).filter(|s| !s.is_empty()),
            subject: Some(req.optional_subject.clone()).filter(|s| !s.is_empty()),
        };
        let mut after: u64 = match req.optional_cursor.as_str() {
            "" => 0,
            c => c
                .parse()
                .map_err(|_| Status::invalid_argument("invalid audit cursor"))?,
        };
        let mut remaining = match req.optional_limit {
            0 => usize::MAX,
            n => n as usize,
        };
        let follow = req.follow;
        let api = self.0.clone();
        let engine = self.0.engine.clone();
        let mut commits = self.0.engine.subscribe();
        let mut closing = self.0.closing();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let batch = match engine.read_audit(after, &filter, remaining.min(500)).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(status::from_engine(e))).await;
                        return;
                    }
                };
                // Filtered reads may skip records; resume after the last one seen.
                let scanned_to = match batch.last() {
                    Some(r) => r.sequence,
                    None => after,
                };
                for r in &batch {
                    let transaction = match tenant_view(&api, &tenant, r) {
                        Ok(Some(t)) => t,
                        Ok(None) => continue,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    let item = kpb::ReadAuditResponse {
                        transaction: Some(transaction),
                        after_result_cursor: r.sequence.to_string(),
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                    remaining -= 1;
                }
                after = scanned_to;
                if remaining == 0 {
                    return;
                }
                if batch.is_empty() {
                    if !follow || *closing.borrow() {
                        return;
                    }
                    if !super::wait_for_commit(&mut commits, &mut closing, &tx).await {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn verify_audit(
        &self,
        request: Request<kpb::VerifyAuditRequest>,
    ) -> Result<Response<kpb::VerifyAuditResponse>, Status> {
        self.0
            .authorize(&request, Scope::Admin)?
            .require_unconfined("the audit chain covers every tenant's transactions")?;
        let complete = request.get_ref().complete;
        let engine = &self.0.engine;
        // A store that pruned its oldest records (the memory store's
        // retention) is verified from its horizon on; completeness needs
        // every record from the first.
        let horizon = engine.audit_horizon().await.map_err(status::from_engine)?;
        let mut verifier = match horizon {
            Some(h) if complete => {
                return Err(Status::failed_precondition(format!(
                    "completeness needs the whole audit chain, but this datastore pruned transactions 1..{} (the memory store keeps its newest audit_max_changes changes); raise the retention or use Postgres, which keeps every record",
                    h.first_sequence - 1
                )));
            }
            Some(h) => Verifier::from_horizon(h),
            None => Verifier::default(),
        };
        let mut replay = Replay::default();
        let mut after = horizon.map_or(0, |h| h.first_sequence - 1);
        let all = AuditFilter::default();
        // The chain, record by record; with `complete`, the replay too.
        // Then (complete only) the stored relationships at a head revision
        // taken after the last record was read; if a record arrived
        // meanwhile, it joins the replay and the store is read again, so the
        // comparison is between exactly the same transactions.
        let mut stored = Vec::new();
        for attempt in 0.. {
            loop {
                let batch = engine
                    .read_audit(after, &all, 1000)
                    .await
                    .map_err(status::from_engine)?;
                let Some(last) = batch.last() else { break };
                after = last.sequence;
                for r in &batch {
                    if let Err(Verification::Broken {
                        sequence,
                        revision,
                        reason,
                    }) = verifier.push(r)
                    {
                        return Ok(Response::new(kpb::VerifyAuditResponse {
                            intact: false,
                            verified_transactions: sequence.saturating_sub(1),
                            first_broken_sequence: sequence,
                            first_broken_revision: revision.clone(),
                            message: format!(
                                "audit transaction {sequence} (revision {revision}) is broken: {reason}"
                            ),
                            ..Default::default()
                        }));
                    }
                    if complete {
                        replay.push(r);
                    }
                }
            }
            if !complete {
                break;
            }
            let head = engine.head_revision().await.map_err(status::from_engine)?;
            stored = engine
                .all_relationships_at(head)
                .await
                .map_err(status::from_engine)?;
            let newer = engine
                .read_audit(after, &all, 1)
                .await
                .map_err(status::from_engine)?;
            if newer.is_empty() {
                break;
            }
            if attempt >= 20 {
                return Err(Status::unavailable(
                    "writes kept arriving while the store was compared with the audit; retry at a quieter moment",
                ));
            }
        }
        let (records, head) = match verifier.finish() {
            Verification::Intact { records, head } => (records, head),
            Verification::Broken { .. } => (0, [0; 32]),
        };
        let checked = stored.len() as u64;
        let discrepancies = if complete {
            replay.finish(stored.iter().map(|r| r.to_string()))
        } else {
            Vec::new()
        };
        let message = if let Some(h) = horizon {
            format!(
                "{records} audit transactions verified, from {} on: transactions 1..{} were pruned by the memory store's retention (audit_max_changes); the chain starts from hash {} — compare it with a head hash recorded earlier",
                h.first_sequence,
                h.first_sequence - 1,
                hex(&h.anchor)
            )
        } else if !complete {
            format!("{records} audit transactions verified")
        } else if discrepancies.is_empty() {
            format!(
                "{records} audit transactions verified; complete: all {checked} stored relationships accounted for"
            )
        } else {
            format!(
                "{records} audit transactions verified, but the store and the audit disagree ({} discrepancies): {}",
                discrepancies.len(),
                discrepancies
                    .first()
                    .map(String::as_str)
                    .unwrap_or_default()
            )
        };
        Ok(Response::new(kpb::VerifyAuditResponse {
            intact: discrepancies.is_empty(),
            verified_transactions: records,
            first_broken_sequence: 0,
            first_broken_revision: String::new(),
            message,
            head_hash: hex(&head),
            relationships_checked: checked,
            discrepancies,
        }))
    }
}
