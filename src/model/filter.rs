//! What a request selects: relationship and subject filters, and pages.
//! Plain data shared by the engine, the datastores and the API.

use super::{Relationship, Revision, SubjectRef};

/// Which revision a read happens at (DESIGN.md §7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Consistency {
    /// A recent revision shared by many requests (quantized), for caching.
    #[default]
    MinimizeLatency,
    /// The newest revision.
    FullyConsistent,
    /// At least as fresh as this revision (a ZedToken the caller holds).
    AtLeastAsFresh(Revision),
    /// Exactly this revision.
    AtExactSnapshot(Revision),
}

/// Selects relationships. Every `None`/empty field matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RelationshipFilter {
    pub resource_type: Option<String>,
    /// Any of these ids (empty: any id).
    pub resource_ids: Vec<String>,
    pub resource_id_prefix: Option<String>,
    pub relation: Option<String>,
    pub subject: Option<SubjectFilter>,
}

/// Selects subjects of relationships.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SubjectFilter {
    pub subject_type: String,
    /// Any of these ids (empty: any id, wildcard included).
    pub subject_ids: Vec<String>,
    /// `None`: any relation. `Some(None)`: no relation (`...`). `Some(Some(r))`: exactly `r`.
    pub relation: Option<Option<String>>,
    /// Leave wildcard subjects (`type:*`) out.
    pub exclude_wildcard: bool,
}

impl RelationshipFilter {
    /// All relationships of `resource#relation`.
    pub fn resource_relation(object_type: &str, object_id: &str, relation: &str) -> Self {
        RelationshipFilter {
            resource_type: Some(object_type.to_string()),
            resource_ids: vec![object_id.to_string()],
            relation: Some(relation.to_string()),
            ..Default::default()
        }
    }

    /// Exactly this relationship.
    pub fn exact(rel: &Relationship) -> Self {
        RelationshipFilter {
            resource_type: Some(rel.resource.object_type.clone()),
            resource_ids: vec![rel.resource.object_id.clone()],
            relation: Some(rel.relation.clone()),
            resource_id_prefix: None,
            subject: Some(SubjectFilter {
                subject_type: rel.subject.object.object_type.clone(),
                subject_ids: vec![rel.subject.object.object_id.clone()],
                relation: Some(rel.subject.relation.clone()),
                exclude_wildcard: false,
            }),
        }
    }

    pub fn matches(&self, rel: &Relationship) -> bool {
        if let Some(t) = &self.resource_type
            && *t != rel.resource.object_type
        {
            return false;
        }
        if !self.resource_ids.is_empty() && !self.resource_ids.contains(&rel.resource.object_id) {
            return false;
        }
        if let Some(p) = &self.resource_id_prefix
            && !rel.resource.object_id.starts_with(p.as_str())
        {
            return false;
        }
        if let Some(r) = &self.relation
            && *r != rel.relation
        {
            return false;
        }
        match &self.subject {
            None => true,
            Some(s) => s.matches(&rel.subject),
        }
    }
}

impl SubjectFilter {
    pub fn matches(&self, subject: &SubjectRef) -> bool {
        if self.subject_type != subject.object.object_type {
            return false;
        }
        if !self.subject_ids.is_empty() && !self.subject_ids.contains(&subject.object.object_id) {
            return false;
        }
        if self.exclude_wildcard && subject.is_wildcard() {
            return false;
        }
        match &self.relation {
            None => true,
            Some(r) => *r == subject.relation,
        }
    }
}

/// Paging for reads: resume strictly after `after`, return at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub after: Option<Relationship>,
    pub limit: Option<usize>,
}
