//! LookupResources and LookupSubjects, exact by construction: candidates are
//! enumerated from the stored relationships and each is decided by Check, so
//! a lookup can never disagree with Check (DESIGN.md §4's hard invariant).
//!
//! Completeness: a resource with no relationship of its own has no
//! permission (every path starts at one of its relations; `nil` grants
//! nothing, `.all()` needs an object), so resources come from the forward
//! index. A concrete subject that is granted either appears as a subject of
//! some relationship or is granted only through a wildcard; the wildcard is
//! found by probing an id that appears nowhere, and reported with the
//! candidates it excludes. Results are sorted by id and never repeat; the
//! cost is one check per candidate (the cache shares sub-problems).

use super::{Engine, Error};
use crate::model::{ObjectRef, Relationship, Revision, SubjectRef};
use crate::model::{Page, RelationshipFilter, SubjectFilter};

/// Candidates are read in pages of this many relationships.
const READ_BATCH: usize = 1_000;

/// LookupSubjects results.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubjectsPage {
    /// `Some(excluded ids)` if every subject of the type is granted through
    /// a wildcard except those ids. Only reported on the first page.
    pub wildcard: Option<Vec<String>>,
    /// Concrete subject ids granted, sorted, after the cursor.
    pub subject_ids: Vec<String>,
}

impl Engine {
    /// Ids of `resource_type` objects on which `subject` has `permission`,
    /// sorted, strictly after `after`, at most `limit`.
    pub async fn lookup_resources_at(
        &self,
        at: Revision,
        resource_type: &str,
        permission: &str,
        subject: &SubjectRef,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, Error> {
        let schema = self.schema_at(at.clone()).await?;
        if schema.definition(resource_type).is_none() {
            return Err(Error::UnknownType(resource_type.to_string()));
        }
        super::validate_member(&schema, resource_type, permission)?;
        if subject.is_wildcard() {
            return Err(Error::InvalidArgument(format!(
                "cannot look up resources for the wildcard `{subject}`; use a concrete subject"
            )));
        }
        super::validate_object(&schema, &subject.object)?;
        if let Some(r) = &subject.relation {
            super::validate_member(&schema, &subject.object.object_type, r)?;
        }
        let filter = RelationshipFilter {
            resource_type: Some(resource_type.to_string()),
            ..Default::default()
        };
        // Skip every relationship of `after` ("~" sorts after any relation name).
        let mut page = Page {
            after: after.map(|id| {
                Relationship::new(
                    ObjectRef::new(resource_type, id),
                    "~",
                    SubjectRef::object(ObjectRef::new("", "")),
                )
            }),
            limit: Some(READ_BATCH),
        };
        let mut out: Vec<String> = Vec::new();
        let mut last_id: Option<String> = after.map(str::to_string);
        loop {
            let batch = self.store.query(&at, &filter, &page).await?;
            let full = batch.len() == READ_BATCH;
            for rel in &batch {
                let id = &rel.resource.object_id;
                if last_id.as_deref() == Some(id.as_str()) {
                    continue;
                }
                last_id = Some(id.clone());
                if self
                    .check_at(at.clone(), &rel.resource, permission, subject)
                    .await?
                    .is_allowed()
                {
                    out.push(id.clone());
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if !full {
                return Ok(out);
            }
            page.after = batch.last().cloned();
        }
    }

    /// Subjects of `subject_type` (with `subject_relation`, if any) that have
    /// `permission` on `resource`: concrete ids sorted, strictly after
    /// `after`, at most `limit`; plus the wildcard on the first page.
    #[allow(clippy::too_many_arguments)]
    pub async fn lookup_subjects_at(
        &self,
        at: Revision,
        resource: &ObjectRef,
        permission: &str,
        subject_type: &str,
        subject_relation: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<SubjectsPage, Error> {
        let schema = self.schema_at(at.clone()).await?;
        super::validate_object(&schema, resource)?;
        super::validate_member(&schema, &resource.object_type, permission)?;
        if schema.definition(subject_type).is_none() {
            return Err(Error::UnknownType(subject_type.to_string()));
        }
        if let Some(r) = subject_relation {
            super::validate_member(&schema, subject_type, r)?;
        }
        let subject = |id: &str| SubjectRef {
            object: ObjectRef::new(subject_type, id),
            relation: subject_relation.map(str::to_string),
        };
        // Every id of the type that appears as a subject, sorted and distinct.
        let filter = RelationshipFilter {
            subject: Some(SubjectFilter {
                subject_type: subject_type.to_string(),
                relation: Some(subject_relation.map(str::to_string)),
                exclude_wildcard: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut ids: Vec<String> = self
            .store
            .query(&at, &filter, &Page::default())
            .await?
            .into_iter()
            .map(|r| r.subject.object.object_id)
            .collect();
        // A userset subject is also a member of itself (`O#R` in `O#R`).
        if subject_relation.is_some()
            && resource.object_type == subject_type
            && subject_relation == Some(permission)
        {
            ids.push(resource.object_id.clone());
        }
        ids.sort();
        ids.dedup();

        let mut page = SubjectsPage::default();
        // With a wildcard every candidate is decided up front (for the
        // exclusions); those decisions then serve the concrete list too.
        let mut decided: Option<Vec<bool>> = None;
        if after.is_none() && subject_relation.is_none() {
            let mut probe = String::from("kinbar-wildcard-probe");
            while ids.binary_search(&probe).is_ok() {
                probe.push('_');
            }
            if self
                .check_at(at.clone(), resource, permission, &subject(&probe))
                .await?
                .is_allowed()
            {
                let mut granted = Vec::with_capacity(ids.len());
                for id in &ids {
                    granted.push(
                        self.check_at(at.clone(), resource, permission, &subject(id))
                            .await?
                            .is_allowed(),
                    );
                }
                page.wildcard = Some(
                    ids.iter()
                        .zip(&granted)
                        .filter(|(_, g)| !**g)
                        .map(|(id, _)| id.clone())
                        .collect(),
                );
                decided = Some(granted);
            }
        }
        for (i, id) in ids.iter().enumerate() {
            if after.is_some_and(|a| id.as_str() <= a) {
                continue;
            }
            if page.subject_ids.len() >= limit {
                break;
            }
            let granted = match &decided {
                Some(g) => g[i],
                None => self
                    .check_at(at.clone(), resource, permission, &subject(id))
                    .await?
                    .is_allowed(),
            };
            if granted {
                page.subject_ids.push(id.clone());
            }
        }
        Ok(page)
    }
}
