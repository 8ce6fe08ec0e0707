//! Relationship commands against a server: `rel create|touch|delete|read`,
//! `rel handover` (offboarding), `import`, `export` and `watch`.

use std::path::Path;
use std::process::ExitCode;

use super::client::{self, Connection};
use super::{CliError, CliResult, RelCommand, read};
use crate::api::proto::authzed::api::v1 as pb;
use crate::model::{Operation, Relationship, SubjectRef};

/// `optional_transaction_metadata` carrying `reason`.
fn reason_metadata(reason: &str) -> prost_types::Struct {
    crate::api::convert::json_struct(&[("reason".to_string(), serde_json::json!(reason))].into())
}

fn written_at(r: &pb::WriteRelationshipsResponse) -> String {
    r.written_at
        .as_ref()
        .map(|t| t.token.clone())
        .unwrap_or_default()
}

pub(super) async fn rel(conn: &Connection, command: RelCommand) -> CliResult {
    let (op, texts) = match command {
        RelCommand::Create { relationships } => (Operation::Create, relationships),
        RelCommand::Touch { relationships } => (Operation::Touch, relationships),
        RelCommand::Delete { relationships } => (Operation::Delete, relationships),
        RelCommand::Read { filter, json } => return rel_read(conn, &filter, json).await,
        RelCommand::Handover { from, to } => return handover(conn, &from, &to).await,
    };
    if texts.is_empty() {
        return Err("give at least one relationship, e.g. doc:1#viewer@user:anna".into());
    }
    let mut updates = Vec::new();
    for t in &texts {
        let r = t.parse::<Relationship>().map_err(CliError::msg)?;
        updates.push(client::update(op, &r));
    }
    let mut c = conn.connect().await?;
    let req = pb::WriteRelationshipsRequest {
        updates,
        optional_preconditions: vec![],
        optional_transaction_metadata: conn.reason.as_deref().map(reason_metadata),
    };
    let r = c.permissions.write_relationships(req).await?;
    let done = match op {
        Operation::Create => "created",
        Operation::Touch => "touched",
        Operation::Delete => "deleted",
    };
    println!(
        "{} relationship(s) {done} at {}",
        texts.len(),
        written_at(r.get_ref())
    );
    Ok(ExitCode::SUCCESS)
}

/// `rel handover FROM TO`: offboarding with a successor.
async fn handover(conn: &Connection, from: &str, to: &str) -> CliResult {
    offboard(conn, from, Some(to), false, false).await
}

/// `kinbar offboard SUBJECT [--handover SUCCESSOR] [--dry-run] [--json]`:
/// one server-side transaction (kinbar.v1.AdminService/Offboard).
pub(super) async fn offboard(
    conn: &Connection,
    subject: &str,
    successor: Option<&str>,
    dry_run: bool,
    json: bool,
) -> CliResult {
    let departing = subject.parse::<SubjectRef>().map_err(CliError::msg)?;
    if let Some(s) = successor {
        s.parse::<SubjectRef>().map_err(CliError::msg)?;
    }
    let mut c = conn.connect().await?;
    let r = c
        .admin
        .offboard(crate::api::proto::kinbar::v1::OffboardRequest {
            subject: departing.to_string(),
            optional_successor: successor.unwrap_or_default().to_string(),
            dry_run,
            reason: conn.reason.clone().unwrap_or_default(),
        })
        .await?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "subject": departing.to_string(),
                "successor": successor,
                "committed": r.committed,
                "revision": r.revision_token,
                "relationships": r.relationships,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let n = r.relationships.len();
    match (r.committed, successor) {
        (false, _) if n == 0 => println!("{departing} has no relationships; nothing to do"),
        (false, Some(s)) => {
            println!("dry run: {n} relationship(s) would move from {departing} to {s}:")
        }
        (false, None) => println!("dry run: {n} relationship(s) of {departing} would be removed:"),
        (true, Some(s)) => {
            println!(
                "{n} relationship(s) handed over from {departing} to {s} at {}",
                r.revision_token
            )
        }
        (true, None) => println!(
            "{n} relationship(s) of {departing} removed at {}",
            r.revision_token
        ),
    }
    if !r.committed {
        for rel in &r.relationships {
            println!("  {rel}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn rel_read(conn: &Connection, filter: &str, json: bool) -> CliResult {
    let filter = client::parse_filter(filter)?;
    let mut c = conn.connect().await?;
    for rel in client::read_relationships(&mut c, filter).await? {
        if json {
            println!("{}", serde_json::json!({"relationship": rel.to_string()}));
        } else {
            println!("{rel}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn import(conn: &Connection, file: &Path) -> CliResult {
    let text = read(file)?;
    let mut rels = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") || line.starts_with('#') {
            continue;
        }
        let r = line
            .parse::<Relationship>()
            .map_err(|e| format!("{}:{}: {e}", file.display(), i + 1))?;
        rels.push(crate::api::convert::relationship_pb(&r));
    }
    let mut c = conn.connect().await?;
    let batches: Vec<pb::ImportBulkRelationshipsRequest> = rels
        .chunks(1000)
        .map(|c| pb::ImportBulkRelationshipsRequest {
            relationships: c.to_vec(),
        })
        .collect();
    let r = c
        .permissions
        .import_bulk_relationships(tokio_stream::iter(batches))
        .await?;
    println!("imported {} relationship(s)", r.get_ref().num_loaded);
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn export(conn: &Connection, json: bool) -> CliResult {
    let mut c = conn.connect().await?;
    let req = pb::ExportBulkRelationshipsRequest {
        consistency: client::fully_consistent(),
        optional_limit: 0,
        optional_cursor: None,
        optional_relationship_filter: None,
    };
    let stream = c
        .permissions
        .export_bulk_relationships(req)
        .await?
        .into_inner();
    client::drain(stream, |batch| {
        for r in &batch.relationships {
            match crate::api::convert::relationship(Some(r), "relationship") {
                Ok(rel) if json => {
                    println!("{}", serde_json::json!({ "relationship": rel.to_string() }))
                }
                Ok(rel) => println!("{rel}"),
                Err(s) => return Err(client::describe(&s)),
            }
        }
        Ok(())
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn watch(conn: &Connection, json: bool, since: Option<String>) -> CliResult {
    let mut c = conn.connect().await?;
    let req = pb::WatchRequest {
        optional_object_types: vec![],
        optional_start_cursor: since.map(|token| pb::ZedToken { token }),
        optional_relationship_filters: vec![],
        optional_update_kinds: vec![],
    };
    let stream = c.watch.watch(req).await?.into_inner();
    client::drain(stream, |change| {
        let meta = serde_json::Value::Object(
            crate::api::convert::metadata(change.optional_transaction_metadata.as_ref())
                .into_iter()
                .collect(),
        );
        if json {
            let mut changes = Vec::new();
            for u in &change.updates {
                let deleted = u.operation == pb::relationship_update::Operation::Delete as i32;
                match crate::api::convert::relationship(u.relationship.as_ref(), "relationship") {
                    Ok(rel) => changes.push(serde_json::json!({
                        "operation": if deleted { "delete" } else { "write" },
                        "relationship": rel.to_string(),
                    })),
                    Err(s) => return Err(client::describe(&s)),
                }
            }
            let revision = change.changes_through.as_ref().map(|t| t.token.as_str());
            println!(
                "{}",
                serde_json::json!({
                    "revision": revision,
                    "metadata": meta,
                    "schema_updated": change.schema_updated,
                    "changes": changes,
                })
            );
            return Ok(());
        }
        if change.schema_updated {
            println!("* schema updated {meta}");
        }
        for u in &change.updates {
            let deleted = u.operation == pb::relationship_update::Operation::Delete as i32;
            let sign = if deleted { '-' } else { '+' };
            match crate::api::convert::relationship(u.relationship.as_ref(), "relationship") {
                Ok(rel) => println!("{sign} {rel} {meta}"),
                Err(s) => return Err(client::describe(&s)),
            }
        }
        Ok(())
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
