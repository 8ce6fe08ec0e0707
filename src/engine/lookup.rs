//! LookupResources and LookupSubjects, exact by construction: candidates
//! come from walks over the relationships that can matter (`reach.rs`) and
//! each is decided by Check, so a lookup can never disagree with Check
//! (DESIGN.md §4's hard invariant), and its cost follows the part of the
//! graph around the subject or resource, not the size of the store.
//!
//! LookupResources walks up from the subject (the by-subject index) along
//! the positive paths the schema allows towards the asked permission; a
//! userset subject `O#R` starts at `O#R` itself (it is its own member).
//! LookupSubjects walks down from the resource through every branch; a
//! wildcard met on the way is confirmed by probing an id that appears
//! nowhere below the resource, and reported with the candidates it
//! excludes. Results are sorted by id and never repeat; a page recomputes
//! the walk (cheap: it reads only the neighbourhood) — or, for a walk of
//! 1,000 candidates or more, takes it from the engine's byte-bounded keep
//! of recent walks (same revision and query) — and checks candidates
//! after the cursor until the page is full.

use std::ops::Bound;

use super::reach::ReversePlan;
use super::{Engine, Error};
use crate::model::{ObjectRef, Revision, SubjectRef};

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
    /// sorted, strictly after `after`, at most `limit`. Each call walks the
    /// neighbourhood again; to page through a large answer, take
    /// [`Engine::resource_candidates_at`] once and confirm them in order.
    #[tracing::instrument(level = "debug", name = "lookup_resources", skip_all,
        fields(resource_type = %resource_type, permission = %permission))]
    pub async fn lookup_resources_at(
        &self,
        at: Revision,
        resource_type: &str,
        permission: &str,
        subject: &SubjectRef,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, Error> {
        let candidates = self
            .resource_candidates_at(at.clone(), resource_type, permission, subject)
            .await?;
        let mut out: Vec<String> = Vec::new();
        let range = match after {
            Some(a) => candidates.range::<str, _>((Bound::Excluded(a), Bound::Unbounded)),
            None => candidates.range::<str, _>(..),
        };
        for id in range {
            if out.len() >= limit {
                break;
            }
            if self
                .resource_granted(&at, resource_type, id, permission, subject)
                .await?
            {
                out.push(id.clone());
            }
        }
        Ok(out)
    }

    /// The candidates of a LookupResources (validated like it): a sorted
    /// superset of the answer from one walk; confirm each with
    /// [`Engine::resource_granted`]. Streams confirm them incrementally
    /// instead of walking again for every page.
    pub async fn resource_candidates_at(
        &self,
        at: Revision,
        resource_type: &str,
        permission: &str,
        subject: &SubjectRef,
    ) -> Result<std::sync::Arc<std::collections::BTreeSet<String>>, Error> {
        let key = (
            at.clone(),
            resource_type.to_string(),
            permission.to_string(),
            subject.clone(),
        );
        if let Some(kept) = self.walks.get(&key).await {
            self.metrics
                .walk_reuses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(kept);
        }
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
        let plan = ReversePlan::new(&schema, resource_type, permission);
        let candidates = std::sync::Arc::new(
            self.evaluator_with(schema, at)
                .resource_candidates(&plan, subject)
                .await?,
        );
        if candidates.len() >= super::KEEP_WALKS_FROM {
            self.walks.insert(key, candidates.clone()).await;
        }
        Ok(candidates)
    }

    /// Whether candidate `id` really has `permission` for `subject`.
    pub async fn resource_granted(
        &self,
        at: &Revision,
        resource_type: &str,
        id: &str,
        permission: &str,
        subject: &SubjectRef,
    ) -> Result<bool, Error> {
        let resource = ObjectRef::new(resource_type, id);
        Ok(self
            .check_at(at.clone(), &resource, permission, subject)
            .await?
            .is_allowed())
    }

    /// Subjects of `subject_type` (with `subject_relation`, if any) that have
    /// `permission` on `resource`: concrete ids sorted, strictly after
    /// `after`, at most `limit`; plus the wildcard on the first page.
    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(level = "debug", name = "lookup_subjects", skip_all,
        fields(resource_type = %resource.object_type, permission = %permission))]
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
        let eval = self.evaluator_with(schema, at.clone());
        let (candidates, wildcard_met) = eval
            .subject_candidates(resource, permission, subject_type, subject_relation)
            .await?;
        let ids: Vec<String> = candidates.into_iter().collect();

        let mut page = SubjectsPage::default();
        // With a wildcard every candidate is decided up front (for the
        // exclusions); those decisions then serve the concrete list too.
        let mut decided: Option<Vec<bool>> = None;
        if after.is_none() && subject_relation.is_none() && wildcard_met {
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
