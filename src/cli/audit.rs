//! `kinbar audit read|tail|verify`: the audit trail for people and auditors.

use std::process::ExitCode;

use super::client::Connection;
use super::{AuditCommand, CliResult, no};
use crate::api::proto::kinbar::v1 as kpb;

pub(super) async fn audit(conn: &Connection, command: AuditCommand) -> CliResult {
    let mut c = conn.connect().await?;
    let (args, follow) = match command {
        AuditCommand::Verify { complete, json } => {
            let r = c
                .audit
                .verify_audit(kpb::VerifyAuditRequest { complete })
                .await?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "intact": r.intact,
                        "verified_transactions": r.verified_transactions,
                        "head_hash": r.head_hash,
                        "message": r.message,
                        "first_broken_sequence": r.first_broken_sequence,
                        "first_broken_revision": r.first_broken_revision,
                        "relationships_checked": r.relationships_checked,
                        "discrepancies": r.discrepancies,
                    })
                );
                return if r.intact {
                    Ok(ExitCode::SUCCESS)
                } else {
                    no()
                };
            }
            return if r.intact {
                println!("ok  {} (head {})", r.message, r.head_hash);
                println!("record the head hash outside the database to detect truncation");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("BROKEN  {}", r.message);
                for d in &r.discrepancies {
                    println!("    {d}");
                }
                no()
            };
        }
        AuditCommand::Read(a) if a.security => return security_events(&mut c, a.json).await,
        AuditCommand::Tail(a) if a.security => {
            return Err(super::CliError::Message(
                "`audit tail --security` is not supported; use `audit read --security`".into(),
            ));
        }
        AuditCommand::Read(a) => (a, false),
        AuditCommand::Tail(a) => (a, true),
    };
    let req = kpb::ReadAuditRequest {
        optional_actor: args.actor.clone().unwrap_or_default(),
        optional_object: args.object.clone().unwrap_or_default(),
        optional_relation: args.relation.clone().unwrap_or_default(),
        optional_subject: args.subject.clone().unwrap_or_default(),
        follow,
        ..Default::default()
    };
    let stream = c.audit.read_audit(req).await?.into_inner();
    super::client::drain(stream, |r| {
        let Some(t) = r.transaction else {
            return Ok(());
        };
        let meta = serde_json::Value::Object(
            crate::api::convert::metadata(t.metadata.as_ref())
                .into_iter()
                .collect(),
        );
        let when = t.committed_at.map(|ts| millis(&ts)).unwrap_or_default();
        let changes: Vec<String> = t
            .changes
            .iter()
            .map(|ch| format!("{} {}", ch.operation, ch.relationship))
            .collect();
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "sequence": t.sequence, "committed_at_ms": when, "actor": t.actor,
                    "request_id": t.request_id, "metadata": meta, "changes": changes,
                    "schema_changed": t.schema_changed, "hash": t.hash,
                })
            );
        } else {
            let schema = if t.schema_changed {
                " [schema changed]"
            } else {
                ""
            };
            let when = crate::audit::rfc3339(u64::try_from(when).unwrap_or(0));
            println!("#{} {when} by {} {meta}{schema}", t.sequence, t.actor);
            for ch in &changes {
                println!("    {ch}");
            }
        }
        Ok(())
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// `kinbar audit read --security`: the refused calls, oldest first.
async fn security_events(c: &mut super::client::Client, json: bool) -> CliResult {
    let stream = c
        .audit
        .read_security_events(kpb::ReadSecurityEventsRequest::default())
        .await?
        .into_inner();
    super::client::drain(stream, |r| {
        let Some(e) = r.event else {
            return Ok(());
        };
        let at_ms = e.at.map(|ts| millis(&ts)).unwrap_or_default();
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "id": e.id, "at_ms": at_ms, "key": e.key, "peer": e.peer,
                    "method": e.method, "code": e.code, "reason": e.reason, "count": e.count,
                })
            );
        } else {
            let when = crate::audit::rfc3339(u64::try_from(at_ms).unwrap_or(0));
            let times = if e.count > 1 {
                format!(" ×{}", e.count)
            } else {
                String::new()
            };
            println!(
                "#{} {when} {} from {} {} {}{times}: {}",
                e.id, e.key, e.peer, e.method, e.code, e.reason
            );
        }
        Ok(())
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// Milliseconds since the epoch of a server's Timestamp (saturating: a
/// far-off time must not overflow the display).
fn millis(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}
