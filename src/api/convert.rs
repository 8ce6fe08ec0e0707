//! Wire messages ⇄ model types. Every conversion from the wire validates and
//! fails with `INVALID_ARGUMENT` and a message naming the field.

use std::collections::BTreeMap;

use tonic::Status;

use super::proto::authzed::api::v1 as pb;
use crate::engine::{Decision, ExpandKind, ExpandTree};
use crate::model::{
    Change, ELLIPSIS, ObjectRef, Operation, Precondition, PreconditionKind, Relationship,
    RelationshipFilter, SubjectFilter, SubjectRef, WILDCARD_ID, validate_name, validate_object_id,
    validate_type_name,
};

fn bad(field: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {e}"))
}

pub fn object(o: Option<&pb::ObjectReference>, field: &str) -> Result<ObjectRef, Status> {
    let o = o.ok_or_else(|| bad(field, "is required"))?;
    validate_type_name(&o.object_type).map_err(|e| bad(&format!("{field}.object_type"), e))?;
    validate_object_id(&o.object_id).map_err(|e| bad(&format!("{field}.object_id"), e))?;
    Ok(ObjectRef::new(&o.object_type, &o.object_id))
}

pub fn subject(s: Option<&pb::SubjectReference>, field: &str) -> Result<SubjectRef, Status> {
    let s = s.ok_or_else(|| bad(field, "is required"))?;
    let o = s
        .object
        .as_ref()
        .ok_or_else(|| bad(&format!("{field}.object"), "is required"))?;
    validate_type_name(&o.object_type)
        .map_err(|e| bad(&format!("{field}.object.object_type"), e))?;
    if o.object_id != WILDCARD_ID {
        validate_object_id(&o.object_id)
            .map_err(|e| bad(&format!("{field}.object.object_id"), e))?;
    }
    let relation = match s.optional_relation.as_str() {
        "" | ELLIPSIS => None,
        r => {
            validate_name(r).map_err(|e| bad(&format!("{field}.optional_relation"), e))?;
            if o.object_id == WILDCARD_ID {
                return Err(bad(field, "a wildcard subject cannot have a relation"));
            }
            Some(r.to_string())
        }
    };
    Ok(SubjectRef {
        object: ObjectRef::new(&o.object_type, &o.object_id),
        relation,
    })
}

pub fn relationship(r: Option<&pb::Relationship>, field: &str) -> Result<Relationship, Status> {
    let r = r.ok_or_else(|| bad(field, "is required"))?;
    if r.optional_caveat.is_some() {
        return Err(bad(
            &format!("{field}.optional_caveat"),
            "caveats are not supported yet",
        ));
    }
    if r.optional_expires_at.is_some() {
        return Err(bad(
            &format!("{field}.optional_expires_at"),
            "relationship expiration is not supported yet",
        ));
    }
    let resource = object(r.resource.as_ref(), &format!("{field}.resource"))?;
    validate_name(&r.relation).map_err(|e| bad(&format!("{field}.relation"), e))?;
    let subject = subject(r.subject.as_ref(), &format!("{field}.subject"))?;
    Ok(Relationship::new(resource, &r.relation, subject))
}

pub fn name(n: &str, field: &str) -> Result<String, Status> {
    validate_name(n).map_err(|e| bad(field, e))?;
    Ok(n.to_string())
}

pub fn object_pb(o: &ObjectRef) -> pb::ObjectReference {
    pb::ObjectReference {
        object_type: o.object_type.clone(),
        object_id: o.object_id.clone(),
    }
}

pub fn subject_pb(s: &SubjectRef) -> pb::SubjectReference {
    pb::SubjectReference {
        object: Some(object_pb(&s.object)),
        optional_relation: s.relation.clone().unwrap_or_default(),
    }
}

pub fn relationship_pb(r: &Relationship) -> pb::Relationship {
    pb::Relationship {
        resource: Some(object_pb(&r.resource)),
        relation: r.relation.clone(),
        subject: Some(subject_pb(&r.subject)),
        optional_caveat: None,
        optional_expires_at: None,
    }
}

pub fn operation(op: i32, field: &str) -> Result<Operation, Status> {
    use pb::relationship_update::Operation as O;
    match O::try_from(op) {
        Ok(O::Create) => Ok(Operation::Create),
        Ok(O::Touch) => Ok(Operation::Touch),
        Ok(O::Delete) => Ok(Operation::Delete),
        _ => Err(bad(field, "operation must be CREATE, TOUCH or DELETE")),
    }
}

pub fn operation_pb(op: Operation) -> i32 {
    use pb::relationship_update::Operation as O;
    match op {
        Operation::Create => O::Create as i32,
        Operation::Touch => O::Touch as i32,
        Operation::Delete => O::Delete as i32,
    }
}

pub fn filter(
    f: Option<&pb::RelationshipFilter>,
    field: &str,
    require_type: bool,
) -> Result<RelationshipFilter, Status> {
    let f = f.ok_or_else(|| bad(field, "is required"))?;
    let mut out = RelationshipFilter::default();
    if f.resource_type.is_empty() {
        if require_type {
            return Err(bad(&format!("{field}.resource_type"), "is required"));
        }
    } else {
        validate_type_name(&f.resource_type)
            .map_err(|e| bad(&format!("{field}.resource_type"), e))?;
        out.resource_type = Some(f.resource_type.clone());
    }
    if !f.optional_resource_id.is_empty() {
        if !f.optional_resource_id_prefix.is_empty() {
            return Err(bad(
                field,
                "give optional_resource_id or optional_resource_id_prefix, not both",
            ));
        }
        validate_object_id(&f.optional_resource_id)
            .map_err(|e| bad(&format!("{field}.optional_resource_id"), e))?;
        out.resource_ids = vec![f.optional_resource_id.clone()];
    }
    if !f.optional_resource_id_prefix.is_empty() {
        out.resource_id_prefix = Some(f.optional_resource_id_prefix.clone());
    }
    if !f.optional_relation.is_empty() {
        out.relation = Some(name(
            &f.optional_relation,
            &format!("{field}.optional_relation"),
        )?);
    }
    if let Some(s) = &f.optional_subject_filter {
        validate_type_name(&s.subject_type)
            .map_err(|e| bad(&format!("{field}.optional_subject_filter.subject_type"), e))?;
        let mut sf = SubjectFilter {
            subject_type: s.subject_type.clone(),
            ..Default::default()
        };
        if !s.optional_subject_id.is_empty() {
            if s.optional_subject_id != WILDCARD_ID {
                validate_object_id(&s.optional_subject_id).map_err(|e| {
                    bad(
                        &format!("{field}.optional_subject_filter.optional_subject_id"),
                        e,
                    )
                })?;
            }
            sf.subject_ids = vec![s.optional_subject_id.clone()];
        }
        if let Some(r) = &s.optional_relation {
            sf.relation = Some(match r.relation.as_str() {
                "" | ELLIPSIS => None,
                rel => Some(name(
                    rel,
                    &format!("{field}.optional_subject_filter.optional_relation"),
                )?),
            });
        }
        out.subject = Some(sf);
    }
    if out == RelationshipFilter::default() {
        return Err(bad(field, "at least one field of the filter must be set"));
    }
    Ok(out)
}

pub fn preconditions(ps: &[pb::Precondition], max: usize) -> Result<Vec<Precondition>, Status> {
    if ps.len() > max {
        return Err(super::status::with_reason(
            tonic::Code::InvalidArgument,
            format!(
                "{} preconditions in one request, more than the limit of {max}",
                ps.len()
            ),
            pb::ErrorReason::TooManyPreconditionsInRequest,
        ));
    }
    ps.iter()
        .enumerate()
        .map(|(i, p)| {
            let field = format!("optional_preconditions[{i}]");
            use pb::precondition::Operation as O;
            let kind = match O::try_from(p.operation) {
                Ok(O::MustMatch) => PreconditionKind::MustMatch,
                Ok(O::MustNotMatch) => PreconditionKind::MustNotMatch,
                _ => {
                    return Err(bad(
                        &field,
                        "operation must be MUST_MATCH or MUST_NOT_MATCH",
                    ));
                }
            };
            Ok(Precondition {
                kind,
                filter: filter(p.filter.as_ref(), &format!("{field}.filter"), true)?,
            })
        })
        .collect()
}

/// `optional_transaction_metadata` as JSON fields.
pub fn metadata(s: Option<&prost_types::Struct>) -> BTreeMap<String, serde_json::Value> {
    s.map(|s| {
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect()
    })
    .unwrap_or_default()
}

fn value_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), value_json(v)))
                .collect(),
        ),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_json).collect())
        }
    }
}

pub fn json_struct(fields: &BTreeMap<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: fields
            .iter()
            .map(|(k, v)| (k.clone(), json_value(v)))
            .collect(),
    }
}

fn json_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(json_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn permissionship(d: Decision) -> i32 {
    use pb::check_permission_response::Permissionship as P;
    match d {
        Decision::Allowed => P::HasPermission as i32,
        Decision::Denied => P::NoPermission as i32,
        Decision::Conditional => P::ConditionalPermission as i32,
    }
}

pub fn tree_pb(t: &ExpandTree) -> pb::PermissionRelationshipTree {
    use pb::algebraic_subject_set::Operation as O;
    use pb::permission_relationship_tree::TreeType;
    let algebraic = |op: O, children: &[ExpandTree]| {
        TreeType::Intermediate(pb::AlgebraicSubjectSet {
            operation: op as i32,
            children: children.iter().map(tree_pb).collect(),
        })
    };
    let tree_type = match &t.kind {
        ExpandKind::Leaf(subjects) => TreeType::Leaf(pb::DirectSubjectSet {
            subjects: subjects.iter().map(subject_pb).collect(),
        }),
        ExpandKind::Union(c) => algebraic(O::Union, c),
        ExpandKind::Intersection(c) => algebraic(O::Intersection, c),
        ExpandKind::Exclusion(c) => algebraic(O::Exclusion, c),
    };
    pb::PermissionRelationshipTree {
        tree_type: Some(tree_type),
        expanded_object: Some(object_pb(&t.object)),
        expanded_relation: t.relation.clone(),
    }
}

/// Store change → wire update (for Watch).
pub fn change_pb(c: &Change) -> pb::RelationshipUpdate {
    pb::RelationshipUpdate {
        operation: operation_pb(c.operation),
        relationship: Some(relationship_pb(&c.relationship)),
    }
}
