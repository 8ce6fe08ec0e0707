//! `lookup-resources` and `lookup-subjects`: which objects a subject can
//! reach, and who can reach an object.

use std::process::ExitCode;

use super::client::{self, Connection};
use super::{CliError, CliResult};
use crate::api::proto::authzed::api::v1 as pb;
use crate::model::{ObjectRef, SubjectRef};

/// Every resource of `resource_type` on which `subject` has `permission`.
fn resources_request(
    consistency: Option<pb::Consistency>,
    resource_type: &str,
    permission: &str,
    subject: &SubjectRef,
) -> pb::LookupResourcesRequest {
    pb::LookupResourcesRequest {
        consistency,
        resource_object_type: resource_type.to_string(),
        permission: permission.to_string(),
        subject: Some(crate::api::convert::subject_pb(subject)),
        context: None,
        optional_limit: 0,
        optional_cursor: None,
        with_debug: false,
    }
}

pub(super) async fn lookup_resources(
    conn: &Connection,
    resource_type: &str,
    permission: &str,
    subject: &str,
    json: bool,
) -> CliResult {
    let subject = subject.parse::<SubjectRef>().map_err(CliError::msg)?;
    let mut c = conn.connect().await?;
    let req = resources_request(
        client::fully_consistent(),
        resource_type,
        permission,
        &subject,
    );
    let stream = c.permissions.lookup_resources(req).await?.into_inner();
    client::drain(stream, |r| {
        if json {
            let revision = r.looked_up_at.map(|t| t.token).unwrap_or_default();
            println!(
                "{}",
                serde_json::json!({
                    "resource": format!("{resource_type}:{}", r.resource_object_id),
                    "permission": permission,
                    "subject": subject.to_string(),
                    "revision": revision,
                })
            );
        } else {
            println!("{resource_type}:{}", r.resource_object_id);
        }
        Ok(())
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn lookup_subjects(
    conn: &Connection,
    resource: &str,
    permission: &str,
    subject_type: &str,
    json: bool,
) -> CliResult {
    let resource = resource.parse::<ObjectRef>().map_err(CliError::msg)?;
    let (subject_type, relation) = match subject_type.split_once('#') {
        Some((t, r)) => (t.to_string(), r.to_string()),
        None => (subject_type.to_string(), String::new()),
    };
    let mut c = conn.connect().await?;
    let req = pb::LookupSubjectsRequest {
        consistency: client::fully_consistent(),
        resource: Some(crate::api::convert::object_pb(&resource)),
        permission: permission.to_string(),
        subject_object_type: subject_type.clone(),
        optional_subject_relation: relation.clone(),
        context: None,
        optional_concrete_limit: 0,
        optional_cursor: None,
        wildcard_option: 0,
    };
    let stream = c.permissions.lookup_subjects(req).await?.into_inner();
    let suffix = if relation.is_empty() {
        String::new()
    } else {
        format!("#{relation}")
    };
    client::drain(stream, |r| {
        let id = r.subject.map(|s| s.subject_object_id).unwrap_or_default();
        let excluded: Vec<String> = r
            .excluded_subjects
            .iter()
            .map(|e| format!("{subject_type}:{}", e.subject_object_id))
            .collect();
        if json {
            let revision = r.looked_up_at.map(|t| t.token).unwrap_or_default();
            println!(
                "{}",
                serde_json::json!({
                    "resource": resource.to_string(),
                    "permission": permission,
                    "subject": format!("{subject_type}:{id}{suffix}"),
                    "excluded": excluded,
                    "revision": revision,
                })
            );
        } else if excluded.is_empty() {
            println!("{subject_type}:{id}{suffix}");
        } else {
            println!(
                "{subject_type}:{id}{suffix} (except {})",
                excluded.join(", ")
            );
        }
        Ok(())
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// One row of an access review.
struct Grant {
    resource: String,
    permission: String,
    subject: String,
}

/// `kinbar review --subject S | --resource R [--json]`: an access-review
/// export at one revision — for a subject, every resource and permission
/// (or relation) it holds; for a resource, every subject per permission.
/// CSV (`resource,permission,subject,revision`) or one JSON document.
pub(super) async fn review(
    conn: &Connection,
    subject: Option<&str>,
    resource: Option<&str>,
    json: bool,
) -> CliResult {
    let mut c = conn.connect().await?;
    let read = c
        .schema
        .read_schema(pb::ReadSchemaRequest {})
        .await?
        .into_inner();
    let schema = crate::schema::Schema::parse(&read.schema_text).map_err(CliError::msg)?;
    // Every lookup reads at the revision the schema was read at.
    let token = read.read_at.ok_or("the server sent no revision")?;
    let at = Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::AtExactSnapshot(token.clone())),
    });
    let mut grants: Vec<Grant> = Vec::new();
    match (subject, resource) {
        (Some(s), None) => {
            let who = s.parse::<SubjectRef>().map_err(CliError::msg)?;
            for (t, def) in &schema.definitions {
                for m in def.relations.keys().chain(def.permissions.keys()) {
                    let req = resources_request(at.clone(), t, m, &who);
                    let stream = c.permissions.lookup_resources(req).await?.into_inner();
                    client::drain(stream, |r| {
                        grants.push(Grant {
                            resource: format!("{t}:{}", r.resource_object_id),
                            permission: m.clone(),
                            subject: who.to_string(),
                        });
                        Ok(())
                    })
                    .await?;
                }
            }
        }
        (None, Some(r)) => {
            let object = r.parse::<ObjectRef>().map_err(CliError::msg)?;
            let def = schema
                .definition(&object.object_type)
                .ok_or_else(|| format!("the schema has no definition `{}`", object.object_type))?;
            for m in def.relations.keys().chain(def.permissions.keys()) {
                for subject_type in schema.definitions.keys() {
                    let req = pb::LookupSubjectsRequest {
                        consistency: at.clone(),
                        resource: Some(crate::api::convert::object_pb(&object)),
                        permission: m.clone(),
                        subject_object_type: subject_type.clone(),
                        optional_subject_relation: String::new(),
                        context: None,
                        optional_concrete_limit: 0,
                        optional_cursor: None,
                        wildcard_option: 0,
                    };
                    let stream = c.permissions.lookup_subjects(req).await?.into_inner();
                    client::drain(stream, |r| {
                        let id = r.subject.map(|s| s.subject_object_id).unwrap_or_default();
                        let mut subject = format!("{subject_type}:{id}");
                        if !r.excluded_subjects.is_empty() {
                            let ex: Vec<String> = r
                                .excluded_subjects
                                .iter()
                                .map(|e| format!("{subject_type}:{}", e.subject_object_id))
                                .collect();
                            subject.push_str(&format!(" except {}", ex.join(" ")));
                        }
                        grants.push(Grant {
                            resource: object.to_string(),
                            permission: m.clone(),
                            subject,
                        });
                        Ok(())
                    })
                    .await?;
                }
            }
        }
        _ => return Err("give exactly one of --subject or --resource".into()),
    }
    if json {
        let rows: Vec<serde_json::Value> = grants
            .iter()
            .map(|g| {
                serde_json::json!({
                    "resource": g.resource,
                    "permission": g.permission,
                    "subject": g.subject,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "revision": token.token,
                "subject": subject,
                "resource": resource,
                "grants": rows,
            })
        );
    } else {
        println!("resource,permission,subject,revision");
        for g in &grants {
            println!(
                "{},{},{},{}",
                csv_field(&g.resource),
                csv_field(&g.permission),
                csv_field(&g.subject),
                csv_field(&token.token)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A CSV field, quoted when it holds a separator, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
