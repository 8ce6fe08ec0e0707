//! The schema language (DESIGN.md §2): parse → type check → compiled
//! [`Schema`], plus a formatter and compiler-style diagnostics.
//!
//! The compiled [`Schema`] is what the engine and stores see; the AST with its
//! spans exists only for diagnostics and formatting. Nothing here does I/O.

pub mod ast;
mod compile;
pub mod diagnostic;
pub mod format;
mod lexer;
mod parser;

use std::collections::BTreeMap;

pub use ast::{ArrowKind, SchemaAst};
pub use diagnostic::{Diagnostic, SchemaError, SchemaStage, Severity, Span};

/// Bounds on schema size, so hostile input is refused quickly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_schema_bytes: usize,
    /// Leaves (names, arrows, `nil`) in one permission expression.
    pub max_expression_terms: usize,
    /// Parenthesis nesting depth.
    pub max_nesting: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_schema_bytes: 4 * 1024 * 1024,
            max_expression_terms: 1_000,
            max_nesting: 64,
        }
    }
}

/// A type-checked schema.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    pub definitions: BTreeMap<String, Definition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub name: String,
    pub doc: Option<String>,
    pub relations: BTreeMap<String, Relation>,
    pub permissions: BTreeMap<String, Permission>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub name: String,
    pub doc: Option<String>,
    pub allowed: Vec<AllowedType>,
}

/// One allowed subject type of a relation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AllowedType {
    /// `user`: the object itself.
    Direct(String),
    /// `team#member`: a userset.
    Userset(String, String),
    /// `user:*`: every object of the type.
    Wildcard(String),
}

impl std::fmt::Display for AllowedType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllowedType::Direct(t) => write!(f, "{t}"),
            AllowedType::Userset(t, r) => write!(f, "{t}#{r}"),
            AllowedType::Wildcard(t) => write!(f, "{t}:*"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub name: String,
    pub doc: Option<String>,
    pub rewrite: Rewrite,
}

/// A permission expression, with unions and intersections flattened.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Rewrite {
    Nil,
    /// A relation or permission of the same definition.
    Ref(String),
    /// `relation->target` / `.any()` / `.all()`.
    Arrow {
        relation: String,
        target: String,
        kind: ArrowKind,
    },
    Union(Vec<Rewrite>),
    Intersection(Vec<Rewrite>),
    Exclusion(Box<Rewrite>, Box<Rewrite>),
}

/// Whether a member name is a relation or a permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    Relation,
    Permission,
}

impl Definition {
    pub fn member_kind(&self, name: &str) -> Option<MemberKind> {
        if self.relations.contains_key(name) {
            Some(MemberKind::Relation)
        } else if self.permissions.contains_key(name) {
            Some(MemberKind::Permission)
        } else {
            None
        }
    }
}

/// A compiled schema with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub schema: Schema,
    pub ast: SchemaAst,
    pub warnings: Vec<Diagnostic>,
}

impl Schema {
    /// Parses and type-checks schema text with default limits.
    pub fn parse(src: &str) -> Result<Schema, SchemaError> {
        compile(src, &Limits::default()).map(|c| c.schema)
    }

    pub fn definition(&self, name: &str) -> Option<&Definition> {
        self.definitions.get(name)
    }

    pub fn relation(&self, object_type: &str, relation: &str) -> Option<&Relation> {
        self.definitions.get(object_type)?.relations.get(relation)
    }

    /// Whether `object_type#member` is a relation whose subjects are only
    /// objects and wildcards (no usersets): deciding it is one lookup.
    pub fn is_direct_only(&self, object_type: &str, member: &str) -> bool {
        self.relation(object_type, member).is_some_and(|r| {
            r.allowed
                .iter()
                .all(|a| !matches!(a, AllowedType::Userset(..)))
        })
    }

    /// Whether `subject` may appear on `resource_type#relation`; `Err` says why not.
    pub fn check_relationship(&self, rel: &crate::model::Relationship) -> Result<(), Violation> {
        use ViolationKind as K;
        let def = self
            .definitions
            .get(&rel.resource.object_type)
            .ok_or_else(|| {
                Violation::new(
                    K::UnknownDefinition,
                    format!("object definition `{}` not found", rel.resource.object_type),
                )
            })?;
        let relation = match def.member_kind(&rel.relation) {
            Some(MemberKind::Relation) => &def.relations[&rel.relation],
            Some(MemberKind::Permission) => {
                return Err(Violation::new(
                    K::IsAPermission,
                    format!(
                        "`{}` is a permission on `{}`; relationships can only be written to relations",
                        rel.relation, def.name
                    ),
                ));
            }
            None => {
                return Err(Violation::new(
                    K::UnknownRelation,
                    format!(
                        "relation `{}` not found on definition `{}`",
                        rel.relation, def.name
                    ),
                ));
            }
        };
        let s = &rel.subject;
        let st = &s.object.object_type;
        let ok = relation.allowed.iter().any(|a| match a {
            AllowedType::Direct(t) => t == st && s.relation.is_none() && !s.is_wildcard(),
            AllowedType::Wildcard(t) => t == st && s.is_wildcard(),
            AllowedType::Userset(t, r) => {
                t == st && s.relation.as_deref() == Some(r.as_str()) && !s.is_wildcard()
            }
        });
        if ok {
            return Ok(());
        }
        let written = if s.is_wildcard() {
            format!("{st}:*")
        } else {
            match &s.relation {
                Some(r) => format!("{st}#{r}"),
                None => st.clone(),
            }
        };
        let allowed: Vec<String> = relation.allowed.iter().map(|a| a.to_string()).collect();
        Err(Violation::new(
            K::SubjectNotAllowed,
            format!(
                "subjects of type `{written}` are not allowed on relation `{}#{}`; allowed: {}",
                def.name,
                relation.name,
                allowed.join(" | ")
            ),
        ))
    }
}

/// Parses and type-checks `src`. Warnings come back with the schema; errors
/// (and any warnings found alongside) come back in the [`SchemaError`].
pub fn compile(src: &str, limits: &Limits) -> Result<Compiled, SchemaError> {
    let ast = parse_ast(src, limits)?;
    let (schema, diagnostics) = compile::check(&ast);
    if diagnostics.iter().any(|d| d.severity == Severity::Error) {
        return Err(SchemaError {
            stage: SchemaStage::Type,
            diagnostics,
            text: src.to_string(),
        });
    }
    Ok(Compiled {
        schema,
        ast,
        warnings: diagnostics,
    })
}

/// Parses without type checking (for the formatter).
pub fn parse_ast(src: &str, limits: &Limits) -> Result<SchemaAst, SchemaError> {
    parser::parse(src, limits).map_err(|d| SchemaError {
        stage: SchemaStage::Parse,
        diagnostics: vec![d],
        text: src.to_string(),
    })
}

/// Why a relationship does not fit the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    /// The resource type is not defined.
    UnknownDefinition,
    /// The relation is not defined on the resource type.
    UnknownRelation,
    /// The name is a permission: relationships are written to relations.
    IsAPermission,
    /// The subject's type (or subject relation, or wildcard) is not allowed.
    SubjectNotAllowed,
}

/// A relationship that does not match the schema: a kind (for status
/// codes and reasons) and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Violation {
    pub kind: ViolationKind,
    pub message: String,
}

impl Violation {
    fn new(kind: ViolationKind, message: String) -> Self {
        Violation { kind, message }
    }
}

impl Schema {
    /// The members `def#member` reads directly: the names in its expression,
    /// an arrow's relation and its target on each object type of that
    /// relation, and the `type#relation` usersets a relation allows.
    pub fn direct_dependencies(&self, def: &str, member: &str) -> Vec<(String, String)> {
        fn walk(s: &Schema, def: &Definition, r: &Rewrite, out: &mut Vec<(String, String)>) {
            match r {
                Rewrite::Nil => {}
                Rewrite::Ref(n) => out.push((def.name.clone(), n.clone())),
                Rewrite::Arrow {
                    relation, target, ..
                } => {
                    out.push((def.name.clone(), relation.clone()));
                    for a in def
                        .relations
                        .get(relation)
                        .map(|r| r.allowed.as_slice())
                        .unwrap_or_default()
                    {
                        let t = match a {
                            AllowedType::Direct(t)
                            | AllowedType::Userset(t, _)
                            | AllowedType::Wildcard(t) => t,
                        };
                        if s.definition(t)
                            .is_some_and(|d| d.member_kind(target).is_some())
                        {
                            out.push((t.clone(), target.clone()));
                        }
                    }
                }
                Rewrite::Union(c) | Rewrite::Intersection(c) => {
                    c.iter().for_each(|x| walk(s, def, x, out))
                }
                Rewrite::Exclusion(a, b) => {
                    walk(s, def, a, out);
                    walk(s, def, b, out);
                }
            }
        }
        let mut out = Vec::new();
        let Some(d) = self.definition(def) else {
            return out;
        };
        if let Some(p) = d.permissions.get(member) {
            walk(self, d, &p.rewrite, &mut out);
        } else if let Some(r) = d.relations.get(member) {
            for a in &r.allowed {
                if let AllowedType::Userset(t, rel) = a {
                    out.push((t.clone(), rel.clone()));
                }
            }
        }
        out
    }

    /// Everything `def#member` depends on, transitively (itself excluded).
    pub fn dependencies(
        &self,
        def: &str,
        member: &str,
    ) -> std::collections::BTreeSet<(String, String)> {
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = self.direct_dependencies(def, member);
        while let Some(d) = todo.pop() {
            if seen.insert(d.clone()) {
                todo.extend(self.direct_dependencies(&d.0, &d.1));
            }
        }
        seen.remove(&(def.to_string(), member.to_string()));
        seen
    }

    /// Every member whose value depends on `def#member` (itself excluded).
    pub fn dependents(
        &self,
        def: &str,
        member: &str,
    ) -> std::collections::BTreeSet<(String, String)> {
        let key = (def.to_string(), member.to_string());
        self.definitions
            .values()
            .flat_map(|d| {
                d.relations
                    .keys()
                    .chain(d.permissions.keys())
                    .map(move |m| (d.name.clone(), m.clone()))
            })
            .filter(|(d, m)| (d, m) != (&key.0, &key.1) && self.dependencies(d, m).contains(&key))
            .collect()
    }
}
