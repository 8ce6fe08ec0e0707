//! `authzed.api.v1.SchemaService`: read, write, reflect and diff schemas.

use tonic::{Request, Response, Status};

use super::auth::Scope;
use super::proto::authzed::api::v1 as pb;
use super::proto::authzed::api::v1::schema_service_server::SchemaService;
use super::{Api, engine_err};
use crate::schema::{self, AllowedType, Definition, Schema};

/// The SchemaService implementation.
#[derive(Clone)]
pub struct SchemaApi(pub Api);

fn type_ref(a: &AllowedType) -> pb::ReflectionTypeReference {
    use pb::reflection_type_reference::Typeref;
    let (name, typeref) = match a {
        AllowedType::Direct(t) => (t, Typeref::IsTerminalSubject(true)),
        AllowedType::Userset(t, r) => (t, Typeref::OptionalRelationName(r.clone())),
        AllowedType::Wildcard(t) => (t, Typeref::IsPublicWildcard(true)),
    };
    pb::ReflectionTypeReference {
        subject_definition_name: name.clone(),
        optional_caveat_name: String::new(),
        typeref: Some(typeref),
    }
}

fn relation(def: &Definition, name: &str) -> Option<pb::ReflectionRelation> {
    let r = def.relations.get(name)?;
    Some(pb::ReflectionRelation {
        name: r.name.clone(),
        comment: r.doc.clone().unwrap_or_default(),
        parent_definition_name: def.name.clone(),
        subject_types: r.allowed.iter().map(type_ref).collect(),
    })
}

fn permission(def: &Definition, name: &str) -> Option<pb::ReflectionPermission> {
    let p = def.permissions.get(name)?;
    Some(pb::ReflectionPermission {
        name: p.name.clone(),
        comment: p.doc.clone().unwrap_or_default(),
        parent_definition_name: def.name.clone(),
    })
}

fn definition(
    def: &Definition,
    filters: &[pb::ReflectionSchemaFilter],
) -> pb::ReflectionDefinition {
    let keep = |rel: Option<&str>, perm: Option<&str>| {
        filters.is_empty()
            || filters.iter().any(|f| {
                (f.optional_definition_name_filter.is_empty()
                    || def.name.starts_with(&f.optional_definition_name_filter))
                    && rel.is_none_or(|r| {
                        f.optional_relation_name_filter.is_empty()
                            || r.starts_with(&f.optional_relation_name_filter)
                    })
                    && perm.is_none_or(|p| {
                        f.optional_permission_name_filter.is_empty()
                            || p.starts_with(&f.optional_permission_name_filter)
                    })
            })
    };
    pb::ReflectionDefinition {
        name: def.name.clone(),
        comment: def.doc.clone().unwrap_or_default(),
        relations: def
            .relations
            .keys()
            .filter(|r| keep(Some(r), None))
            .filter_map(|r| relation(def, r))
            .collect(),
        permissions: def
            .permissions
            .keys()
            .filter(|p| keep(None, Some(p)))
            .filter_map(|p| permission(def, p))
            .collect(),
    }
}

/// The differences from `old` to `new`, in SpiceDB's reflection shapes.
fn diff(old: &Schema, new: &Schema) -> Vec<pb::ReflectionSchemaDiff> {
    use pb::reflection_schema_diff::Diff as D;
    let mut out = Vec::new();
    for (name, od) in &old.definitions {
        let Some(nd) = new.definitions.get(name) else {
            out.push(D::DefinitionRemoved(definition(od, &[])));
            continue;
        };
        if od.doc != nd.doc {
            out.push(D::DefinitionDocCommentChanged(definition(nd, &[])));
        }
        for (rname, or) in &od.relations {
            match nd.relations.get(rname) {
                None => out.extend(relation(od, rname).map(D::RelationRemoved)),
                Some(nr) => {
                    if or.doc != nr.doc {
                        out.extend(relation(nd, rname).map(D::RelationDocCommentChanged));
                    }
                    for a in &nr.allowed {
                        if !or.allowed.contains(a) {
                            out.push(D::RelationSubjectTypeAdded(
                                pb::ReflectionRelationSubjectTypeChange {
                                    relation: relation(nd, rname),
                                    changed_subject_type: Some(type_ref(a)),
                                },
                            ));
                        }
                    }
                    for a in &or.allowed {
                        if !nr.allowed.contains(a) {
                            out.push(D::RelationSubjectTypeRemoved(
                                pb::ReflectionRelationSubjectTypeChange {
                                    relation: relation(od, rname),
                                    changed_subject_type: Some(type_ref(a)),
                                },
                            ));
                        }
                    }
                }
            }
        }
        for rname in nd
            .relations
            .keys()
            .filter(|r| !od.relations.contains_key(*r))
        {
            out.extend(relation(nd, rname).map(D::RelationAdded));
        }
        for (pname, op) in &od.permissions {
            match nd.permissions.get(pname) {
                None => out.extend(permission(od, pname).map(D::PermissionRemoved)),
                Some(np) => {
                    if op.doc != np.doc {
                        out.extend(permission(nd, pname).map(D::PermissionDocCommentChanged));
                    }
                    if op.rewrite != np.rewrite {
                        out.extend(permission(nd, pname).map(D::PermissionExprChanged));
                    }
                }
            }
        }
        for pname in nd
            .permissions
            .keys()
            .filter(|p| !od.permissions.contains_key(*p))
        {
            out.extend(permission(nd, pname).map(D::PermissionAdded));
        }
    }
    for (name, nd) in &new.definitions {
        if !old.definitions.contains_key(name) {
            out.push(D::DefinitionAdded(definition(nd, &[])));
        }
    }
    out.into_iter()
        .map(|d| pb::ReflectionSchemaDiff { diff: Some(d) })
        .collect()
}

fn member_exists(schema: &Schema, def: &str, member: &str) -> Result<(), Status> {
    let d = schema
        .definition(def)
        .ok_or_else(|| engine_err(crate::Error::UnknownType(def.to_string())))?;
    d.member_kind(member).map(|_| ()).ok_or_else(|| {
        engine_err(crate::Error::UnknownMember {
            object_type: def.to_string(),
            member: member.to_string(),
        })
    })
}

fn reference(
    schema: &Schema,
    definition_name: String,
    relation_name: String,
) -> pb::ReflectionRelationReference {
    let is_permission = schema
        .definition(&definition_name)
        .is_some_and(|d| d.permissions.contains_key(&relation_name));
    pb::ReflectionRelationReference {
        definition_name,
        relation_name,
        is_permission,
    }
}

#[tonic::async_trait]
impl SchemaService for SchemaApi {
    async fn read_schema(
        &self,
        request: Request<pb::ReadSchemaRequest>,
    ) -> Result<Response<pb::ReadSchemaResponse>, Status> {
        let caller = self.0.authorize(&request, Scope::Check)?;
        let head = self.0.engine.head_revision().await.map_err(engine_err)?;
        let (text, _) =
            self.0
                .engine
                .read_schema_text(head.clone())
                .await
                .map_err(|e| match e {
                    crate::Error::NoSchema => Status::not_found("no schema has been written yet"),
                    other => engine_err(other),
                })?;
        let limits = &self.0.engine.config().schema_limits;
        Ok(Response::new(pb::ReadSchemaResponse {
            schema_text: super::tenant::own_text(&text, &caller.tenant, limits)?,
            read_at: Some(self.0.token(&head)),
        }))
    }

    async fn write_schema(
        &self,
        request: Request<pb::WriteSchemaRequest>,
    ) -> Result<Response<pb::WriteSchemaResponse>, Status> {
        let caller = self.0.authorize(&request, Scope::Admin)?;
        let limits = self.0.engine.config().schema_limits.clone();
        let text = &request.get_ref().schema;
        super::tenant::confine_schema(&caller, text, &limits)?;
        let metadata = self.0.write_metadata(&request, caller.actor.clone(), None);
        let tenant = caller.tenant.clone();
        let result = self
            .0
            .engine
            .write_schema_from(
                |current| {
                    super::tenant::merge(current, text, &tenant, &limits)
                        .map_err(|s| crate::Error::InvalidArgument(s.message().to_string()))
                },
                metadata,
            )
            .await
            .map_err(engine_err)?;
        Ok(Response::new(pb::WriteSchemaResponse {
            written_at: Some(self.0.token(&result.revision)),
        }))
    }

    async fn reflect_schema(
        &self,
        request: Request<pb::ReflectSchemaRequest>,
    ) -> Result<Response<pb::ReflectSchemaResponse>, Status> {
        let caller = self.0.authorize(&request, Scope::Check)?;
        let req = request.get_ref();
        let at = self.0.revision(req.consistency.as_ref()).await?;
        let schema = self
            .0
            .engine
            .schema_at(at.clone())
            .await
            .map_err(engine_err)?;
        let schema = super::tenant::own_schema(&schema, &caller.tenant);
        let filters = &req.optional_filters;
        let definitions = schema
            .definitions
            .values()
            .filter(|d| {
                filters.is_empty()
                    || filters.iter().any(|f| {
                        f.optional_definition_name_filter.is_empty()
                            || d.name.starts_with(&f.optional_definition_name_filter)
                    })
            })
            .map(|d| definition(d, filters))
            .collect();
        Ok(Response::new(pb::ReflectSchemaResponse {
            definitions,
            caveats: vec![],
            read_at: Some(self.0.token(&at)),
        }))
    }

    async fn computable_permissions(
        &self,
        request: Request<pb::ComputablePermissionsRequest>,
    ) -> Result<Response<pb::ComputablePermissionsResponse>, Status> {
        let caller = self.0.authorize(&request, Scope::Check)?;
        let req = request.get_ref();
        caller.confine([req.definition_name.as_str()])?;
        let at = self.0.revision(req.consistency.as_ref()).await?;
        let schema = self
            .0
            .engine
            .schema_at(at.clone())
            .await
            .map_err(engine_err)?;
        let schema = super::tenant::own_schema(&schema, &caller.tenant);
        member_exists(&schema, &req.definition_name, &req.relation_name)?;
        let permissions = schema
            .dependents(&req.definition_name, &req.relation_name)
            .into_iter()
            .filter(|(d, _)| d.starts_with(&req.optional_definition_name_filter))
            .map(|(d, m)| reference(&schema, d, m))
            .collect();
        Ok(Response::new(pb::ComputablePermissionsResponse {
            permissions,
            read_at: Some(self.0.token(&at)),
        }))
    }

    async fn dependent_relations(
        &self,
        request: Request<pb::DependentRelationsRequest>,
    ) -> Result<Response<pb::DependentRelationsResponse>, Status> {
        let caller = self.0.authorize(&request, Scope::Check)?;
        let req = request.get_ref();
        caller.confine([req.definition_name.as_str()])?;
        let at = self.0.revision(req.consistency.as_ref()).await?;
        let schema = self
            .0
            .engine
            .schema_at(at.clone())
            .await
            .map_err(engine_err)?;
        let schema = super::tenant::own_schema(&schema, &caller.tenant);
        member_exists(&schema, &req.definition_name, &req.permission_name)?;
        if schema
            .definition(&req.definition_name)
            .is_some_and(|d| !d.permissions.contains_key(&req.permission_name))
        {
            return Err(Status::invalid_argument(format!(
                "`{}` is a relation of `{}`, not a permission",
                req.permission_name, req.definition_name
            )));
        }
        let relations = schema
            .dependencies(&req.definition_name, &req.permission_name)
            .into_iter()
            .map(|(d, m)| reference(&schema, d, m))
            .collect();
        Ok(Response::new(pb::DependentRelationsResponse {
            relations,
            read_at: Some(self.0.token(&at)),
        }))
    }

    async fn diff_schema(
        &self,
        request: Request<pb::DiffSchemaRequest>,
    ) -> Result<Response<pb::DiffSchemaResponse>, Status> {
        let caller = self.0.authorize(&request, Scope::Check)?;
        let req = request.get_ref();
        super::tenant::confine_schema(
            &caller,
            &req.comparison_schema,
            &self.0.engine.config().schema_limits,
        )?;
        let at = self.0.revision(req.consistency.as_ref()).await?;
        let current = self
            .0
            .engine
            .schema_at(at.clone())
            .await
            .map_err(engine_err)?;
        let current = super::tenant::own_schema(&current, &caller.tenant);
        let other = schema::compile(
            &req.comparison_schema,
            &self.0.engine.config().schema_limits,
        )
        .map_err(|e| engine_err(crate::Error::Schema(Box::new(e))))?;
        Ok(Response::new(pb::DiffSchemaResponse {
            diffs: diff(&current, &other.schema),
            read_at: Some(self.0.token(&at)),
        }))
    }
}
