//! Plain domain types: objects, subjects, relationships, revisions, and the
//! request vocabulary (filters and pages in `filter`, transactions in `txn`).
//!
//! Everything here is data with validation and a text form; nothing here does
//! I/O or knows about schemas, stores or protobuf. The text form is the one of
//! DESIGN.md §3: `resource_type:resource_id#relation@subject_type:subject_id[#subject_relation]`.
//!
//! Reads untrusted input: no indexing, no unchecked arithmetic, no
//! truncating casts (denied here, so a change cannot reintroduce them).
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation
)]

use std::fmt;

mod filter;
mod txn;

pub use filter::{Consistency, Page, RelationshipFilter, SubjectFilter};
pub use txn::{
    Change, CommittedTxn, DeleteByFilter, Imported, Operation, Precondition, PreconditionKind,
    TxnMetadata, Update,
};

/// Maximum length of a type, relation or permission name (per segment).
pub const MAX_NAME_LEN: usize = 64;
/// Maximum length of a whole type name, prefixes included (SpiceDB's).
pub const MAX_TYPE_LEN: usize = 128;
/// Maximum length of an object id.
pub const MAX_OBJECT_ID_LEN: usize = 1024;
/// The subject relation SpiceDB writes for "no relation" (`user:tom#...`).
pub const ELLIPSIS: &str = "...";
/// The object id that denotes a wildcard subject (`user:*`).
pub const WILDCARD_ID: &str = "*";

/// A reference to one object, `type:id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub object_type: String,
    pub object_id: String,
}

impl ObjectRef {
    pub fn new(object_type: impl Into<String>, object_id: impl Into<String>) -> Self {
        ObjectRef {
            object_type: object_type.into(),
            object_id: object_id.into(),
        }
    }

    /// Parses `type:id`, validating both parts.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let (object_type, object_id) = text.split_once(':').ok_or_else(|| {
            ParseError::new(
                text,
                0,
                "expected `type:id`",
                "an object is written as its type, a colon and its id, e.g. `document:q3`",
            )
        })?;
        validate_type_name(object_type).map_err(|m| ParseError::new(text, 0, m, TYPE_HINT))?;
        validate_object_id(object_id)
            .map_err(|m| ParseError::new(text, object_type.len().saturating_add(1), m, ID_HINT))?;
        Ok(ObjectRef::new(object_type, object_id))
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.object_type, self.object_id)
    }
}

/// A subject: an object, a userset `type:id#relation`, or a wildcard `type:*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectRef {
    pub object: ObjectRef,
    /// `None` for a plain object (SpiceDB's `...`).
    pub relation: Option<String>,
}

impl SubjectRef {
    pub fn object(object: ObjectRef) -> Self {
        SubjectRef {
            object,
            relation: None,
        }
    }

    pub fn userset(object: ObjectRef, relation: impl Into<String>) -> Self {
        SubjectRef {
            object,
            relation: Some(relation.into()),
        }
    }

    pub fn is_wildcard(&self) -> bool {
        self.object.object_id == WILDCARD_ID
    }

    /// Parses `type:id`, `type:id#relation`, `type:id#...` or `type:*`.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let (object_text, relation) = match text.split_once('#') {
            Some((o, r)) => (o, Some(r)),
            None => (text, None),
        };
        let (object_type, object_id) = object_text.split_once(':').ok_or_else(|| {
            ParseError::new(
                text,
                0,
                "expected `type:id` for the subject",
                "a subject is `type:id`, `type:id#relation` or `type:*`, e.g. `user:anna`",
            )
        })?;
        validate_type_name(object_type).map_err(|m| ParseError::new(text, 0, m, TYPE_HINT))?;
        if object_id != WILDCARD_ID {
            validate_object_id(object_id).map_err(|m| {
                ParseError::new(text, object_type.len().saturating_add(1), m, ID_HINT)
            })?;
        }
        let relation = match relation {
            None | Some(ELLIPSIS) => None,
            Some(r) => {
                validate_name(r).map_err(|m| {
                    ParseError::new(text, object_text.len().saturating_add(1), m, RELATION_HINT)
                })?;
                if object_id == WILDCARD_ID {
                    return Err(ParseError::new(
                        text,
                        object_text.len(),
                        "a wildcard subject cannot have a relation",
                        "write `type:*` alone",
                    ));
                }
                Some(r.to_string())
            }
        };
        Ok(SubjectRef {
            object: ObjectRef::new(object_type, object_id),
            relation,
        })
    }
}

impl fmt::Display for SubjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.relation {
            Some(r) => write!(f, "{}#{}", self.object, r),
            None => write!(f, "{}", self.object),
        }
    }
}

/// A relationship (tuple) `resource#relation@subject`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Relationship {
    pub resource: ObjectRef,
    pub relation: String,
    pub subject: SubjectRef,
}

impl Relationship {
    pub fn new(resource: ObjectRef, relation: impl Into<String>, subject: SubjectRef) -> Self {
        Relationship {
            resource,
            relation: relation.into(),
            subject,
        }
    }

    /// Parses the text form of DESIGN.md §3. Caveat and expiration suffixes
    /// (`[caveat:{...}]`, `[expiration:...]`) are recognised and refused with
    /// a clear "not supported yet" error.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let trimmed = text.trim();
        if let Some(pos) = trimmed.find('[') {
            let suffix = &trimmed[pos..];
            let what = if suffix.starts_with("[expiration:") {
                "relationship expiration is not supported yet"
            } else {
                "caveats are not supported yet"
            };
            return Err(ParseError::new(
                trimmed,
                pos,
                what,
                "caveats and expiration arrive in phase 2; write the relationship without the `[...]` suffix",
            ));
        }
        // Ids may contain `@` and `:` but never `#`, and relation names
        // contain neither: split at the first `#`, then at the next `@`.
        let (object_text, rest) = trimmed.split_once('#').ok_or_else(|| {
            ParseError::new(
                trimmed,
                trimmed.find('@').unwrap_or(trimmed.len()),
                "missing `#relation` on the resource",
                "a relationship is `type:id#relation@subject_type:subject_id`",
            )
        })?;
        let (relation, subject_part) = rest.split_once('@').ok_or_else(|| {
            ParseError::new(
                trimmed,
                trimmed.len(),
                "missing `@subject`",
                "a relationship is `type:id#relation@subject_type:subject_id`",
            )
        })?;
        let resource_part_len = object_text
            .len()
            .saturating_add(1)
            .saturating_add(relation.len());
        let resource = ObjectRef::parse(object_text)?;
        if resource.object_id == WILDCARD_ID {
            return Err(ParseError::new(
                trimmed,
                0,
                "a resource cannot be a wildcard",
                "only subjects may be `type:*`",
            ));
        }
        validate_name(relation).map_err(|m| {
            ParseError::new(
                trimmed,
                object_text.len().saturating_add(1),
                m,
                RELATION_HINT,
            )
        })?;
        let subject = SubjectRef::parse(subject_part).map_err(|mut e| {
            e.column = e.column.saturating_add(resource_part_len).saturating_add(1);
            e.input = trimmed.to_string();
            e
        })?;
        Ok(Relationship::new(resource, relation, subject))
    }
}

impl fmt::Display for Relationship {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}@{}", self.resource, self.relation, self.subject)
    }
}

impl std::str::FromStr for ObjectRef {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ObjectRef::parse(s)
    }
}

impl std::str::FromStr for SubjectRef {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SubjectRef::parse(s)
    }
}

impl std::str::FromStr for Relationship {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Relationship::parse(s)
    }
}

/// A point in a datastore's history. Every read happens at one.
///
/// Opaque outside `store/`: the text is backend-defined (memory: a commit
/// counter; Postgres: a snapshot), and only the datastore that issued a
/// revision can order it against another (`Datastore::at_least_as_fresh`).
/// Equality is textual, which is what caches need. The text never contains
/// `|` (cursors use it as a separator) and stays under 32 KiB.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Revision(std::sync::Arc<str>);

impl Revision {
    pub fn new(text: impl Into<std::sync::Arc<str>>) -> Self {
        Revision(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An error parsing the text form of an object, subject or relationship.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at column {} in `{input}` (hint: {hint})", column.saturating_add(1))]
pub struct ParseError {
    pub input: String,
    /// 0-based byte offset in `input`.
    pub column: usize,
    pub message: String,
    pub hint: String,
}

impl ParseError {
    fn new(input: &str, column: usize, message: impl Into<String>, hint: &str) -> Self {
        ParseError {
            input: input.to_string(),
            column,
            message: message.into(),
            hint: hint.to_string(),
        }
    }
}

const TYPE_HINT: &str = "type names match [a-z][a-z0-9_]{0,63}, optionally prefixed `ns/`";
const ID_HINT: &str = "object ids are 1 to 1024 of [A-Za-z0-9/_|-=+@.:] (no `#`, `*` or spaces)";
const RELATION_HINT: &str = "relation names match [a-z][a-z0-9_]{0,63}";

/// Validates a relation, permission or caveat name: `[a-z][a-z0-9_]{0,63}`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("empty name".into()),
        Some(c) if !c.is_ascii_lowercase() => {
            return Err(format!(
                "invalid name `{name}`: must start with a lowercase letter"
            ));
        }
        _ => {}
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "invalid name `{name}`: longer than {MAX_NAME_LEN} characters"
        ));
    }
    if let Some(c) = chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')) {
        return Err(format!(
            "invalid name `{name}`: character `{c}` is not allowed"
        ));
    }
    Ok(())
}

/// Validates a type name: a name optionally prefixed by `ns/` segments.
pub fn validate_type_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty type name".into());
    }
    if name.len() > MAX_TYPE_LEN {
        return Err(format!(
            "type name of {} characters is longer than the limit of {MAX_TYPE_LEN}",
            name.len()
        ));
    }
    for segment in name.split('/') {
        validate_name(segment).map_err(|e| format!("in type `{name}`: {e}"))?;
    }
    Ok(())
}

/// Validates an object id: `[A-Za-z0-9/_|\-=+@.:]{1,1024}`.
pub fn validate_object_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty object id".into());
    }
    if id == WILDCARD_ID {
        return Err("`*` is only allowed as a subject (wildcard)".into());
    }
    if id.len() > MAX_OBJECT_ID_LEN {
        return Err(format!(
            "object id longer than {MAX_OBJECT_ID_LEN} characters"
        ));
    }
    if let Some(c) = id.chars().find(|c| !is_id_char(*c)) {
        return Err(format!(
            "invalid object id `{id}`: character `{}` is not allowed",
            c.escape_debug()
        ));
    }
    Ok(())
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "/_|-=+@.:".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_bounded_as_a_whole() {
        // Two 63-character segments: 127 characters, accepted.
        let ok = format!("{}/{}", "a".repeat(63), "b".repeat(63));
        assert!(validate_type_name(&ok).is_ok());
        // Three segments within the per-segment limit, 191 characters.
        let long = format!("{ok}/{}", "c".repeat(63));
        let e = validate_type_name(&long).unwrap_err();
        assert!(e.contains("limit of 128"), "{e}");
    }

    #[test]
    fn round_trips_text_form() {
        for text in [
            "document:q3#viewer@user:anna",
            "org:acme#member@team:sales#member",
            "crm/customer:c-42#signed@user:*",
            "doc:a/b|c=d+e@f.g:h#viewer@user:x",
        ] {
            let rel = Relationship::parse(text).unwrap();
            assert_eq!(rel.to_string(), text);
        }
    }

    #[test]
    fn ellipsis_means_no_relation() {
        let rel = Relationship::parse("document:q3#viewer@user:anna#...").unwrap();
        assert_eq!(rel.subject.relation, None);
        assert_eq!(rel.to_string(), "document:q3#viewer@user:anna");
    }

    #[test]
    fn errors_name_the_problem_and_column() {
        let e = Relationship::parse("document:q3#viewer").unwrap_err();
        assert!(e.message.contains("missing `@subject`"), "{e}");
        let e = Relationship::parse("document:q 3#viewer@user:a").unwrap_err();
        assert!(e.message.contains("character ` `"), "{e}");
        assert_eq!(e.column, 9);
        let e = Relationship::parse("Document:q3#viewer@user:a").unwrap_err();
        assert!(e.message.contains("lowercase"), "{e}");
        let e = Relationship::parse("document:q3#viewer@user:a#Bad").unwrap_err();
        assert_eq!(e.column, 26);
        let e = Relationship::parse("document:*#viewer@user:a").unwrap_err();
        assert!(
            e.message.contains("wildcard") || e.message.contains("`*`"),
            "{e}"
        );
        let e = Relationship::parse("document:1#viewer@user:a[somecaveat]").unwrap_err();
        assert!(e.message.contains("caveats are not supported yet"), "{e}");
        let e = Relationship::parse("document:1#viewer@user:*#member").unwrap_err();
        assert!(e.message.contains("wildcard"), "{e}");
    }

    #[test]
    fn length_limits() {
        let long_id = "a".repeat(MAX_OBJECT_ID_LEN);
        assert!(ObjectRef::parse(&format!("doc:{long_id}")).is_ok());
        assert!(ObjectRef::parse(&format!("doc:{long_id}a")).is_err());
        let long_name = "a".repeat(MAX_NAME_LEN);
        assert!(validate_name(&long_name).is_ok());
        assert!(validate_name(&format!("{long_name}a")).is_err());
    }
}
