//! The schema and permission commands against a server: `schema read`,
//! `schema write`, `check` (with `--explain`) and `expand`.

use std::path::Path;
use std::process::ExitCode;

use super::client::{self, Connection};
use super::{CliError, CliResult, no, read};
use crate::api::proto::authzed::api::v1 as pb;
use crate::model::{ObjectRef, SubjectRef};

pub(super) async fn schema_read(conn: &Connection, json: bool) -> CliResult {
    let mut c = conn.connect().await?;
    let r = c.schema.read_schema(pb::ReadSchemaRequest {}).await?;
    let r = r.get_ref();
    if json {
        let read_at = r
            .read_at
            .as_ref()
            .map(|t| t.token.clone())
            .unwrap_or_default();
        println!(
            "{}",
            serde_json::json!({ "schema": r.schema_text, "read_at": read_at })
        );
    } else {
        print!("{}", r.schema_text);
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn schema_write(conn: &Connection, file: &Path) -> CliResult {
    let text = read(file)?;
    let mut c = conn.connect().await?;
    let r = c
        .schema
        .write_schema(pb::WriteSchemaRequest { schema: text })
        .await?;
    let token = r
        .get_ref()
        .written_at
        .as_ref()
        .map(|t| t.token.clone())
        .unwrap_or_default();
    println!("schema written at {token}");
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn check(
    conn: &Connection,
    resource: &str,
    permission: &str,
    subject: &str,
    json: bool,
    explain: bool,
) -> CliResult {
    use pb::check_permission_response::Permissionship as P;
    let resource = resource.parse::<ObjectRef>().map_err(CliError::msg)?;
    let subject = subject.parse::<SubjectRef>().map_err(CliError::msg)?;
    let mut c = conn.connect().await?;
    let r = c
        .permissions
        .check_permission(client::check_request(&resource, permission, &subject))
        .await?
        .into_inner();
    let p = P::try_from(r.permissionship).unwrap_or(P::Unspecified);
    let checked_at = r.checked_at.clone();
    let token = r.checked_at.map(|t| t.token).unwrap_or_default();
    let allowed = p == P::HasPermission;
    if json {
        println!(
            "{}",
            serde_json::json!({"permissionship": p.as_str_name(), "allowed": allowed, "checked_at": token})
        );
    } else {
        println!(
            "{}",
            if allowed {
                "allowed"
            } else if p == P::ConditionalPermission {
                "conditional"
            } else {
                "denied"
            }
        );
    }
    if explain {
        let req = pb::ExpandPermissionTreeRequest {
            consistency: checked_at.map(|t| pb::Consistency {
                requirement: Some(pb::consistency::Requirement::AtExactSnapshot(t)),
            }),
            resource: Some(crate::api::convert::object_pb(&resource)),
            permission: permission.to_string(),
        };
        let t = c.permissions.expand_permission_tree(req).await?;
        let mut out = String::new();
        if let Some(t) = &t.get_ref().tree_root {
            client::render_tree(t, 0, &mut out);
        }
        print!("{}", mark_subject(&out, &subject));
    }
    if allowed { Ok(ExitCode::SUCCESS) } else { no() }
}

/// Marks the leaf lines of a rendered tree that list `subject` or its
/// type's wildcard; usersets in leaves are where the evaluation continues.
fn mark_subject(tree: &str, subject: &SubjectRef) -> String {
    let me = subject.to_string();
    let wildcard = format!("{}:*", subject.object.object_type);
    tree.lines()
        .map(|line| {
            let listed = line
                .split_once(": [")
                .map(|(_, rest)| {
                    rest.trim_end_matches(']')
                        .split(", ")
                        .any(|s| s == me || s == wildcard)
                })
                .unwrap_or(false);
            if listed {
                format!("{line}   <- {me}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

pub(super) async fn expand(
    conn: &Connection,
    resource: &str,
    permission: &str,
    json: bool,
) -> CliResult {
    let resource = resource.parse::<ObjectRef>().map_err(CliError::msg)?;
    let mut c = conn.connect().await?;
    let req = pb::ExpandPermissionTreeRequest {
        consistency: client::fully_consistent(),
        resource: Some(crate::api::convert::object_pb(&resource)),
        permission: permission.to_string(),
    };
    let r = c.permissions.expand_permission_tree(req).await?;
    let mut out = String::new();
    if let Some(t) = &r.get_ref().tree_root {
        client::render_tree(t, 0, &mut out);
    }
    if json {
        println!("{}", serde_json::json!({"tree": out}));
    } else {
        print!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}
