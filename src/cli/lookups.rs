//! `lookup-resources` and `lookup-subjects`: which objects a subject can
//! reach, and who can reach an object.

use std::process::ExitCode;

use super::client::{self, Connection};
use super::{CliError, CliResult};
use crate::api::proto::authzed::api::v1 as pb;
use crate::model::{ObjectRef, SubjectRef};

pub(super) async fn lookup_resources(
    conn: &Connection,
    resource_type: &str,
    permission: &str,
    subject: &str,
) -> CliResult {
    let subject = subject.parse::<SubjectRef>().map_err(CliError::msg)?;
    let mut c = conn.connect().await?;
    let req = pb::LookupResourcesRequest {
        consistency: client::fully_consistent(),
        resource_object_type: resource_type.to_string(),
        permission: permission.to_string(),
        subject: Some(crate::api::convert::subject_pb(&subject)),
        context: None,
        optional_limit: 0,
        optional_cursor: None,
        with_debug: false,
    };
    let stream = c.permissions.lookup_resources(req).await?.into_inner();
    client::drain(stream, |r| {
        println!("{resource_type}:{}", r.resource_object_id);
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
        if excluded.is_empty() {
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
