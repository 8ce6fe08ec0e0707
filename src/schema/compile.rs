//! Type checking: AST → [`Schema`] plus every error and warning found.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::ast::*;
use super::diagnostic::{Diagnostic, Span};
use super::{AllowedType, Definition, Permission, Relation, Rewrite, Schema};
use crate::model::{validate_name, validate_type_name};

pub fn check(ast: &SchemaAst) -> (Schema, Vec<Diagnostic>) {
    let mut diags = Vec::new();

    // Pass 1: names.
    let mut defs: BTreeMap<String, &DefinitionAst> = BTreeMap::new();
    let mut def_spans: HashMap<String, Span> = HashMap::new();
    for item in &ast.items {
        match item {
            Item::Caveat(c) => diags.push(
                Diagnostic::error(c.name.span, format!("caveats are not supported yet (caveat `{}`)", c.name.name))
                    .with_hint("caveats arrive in phase 2; remove the caveat and the `with` clauses that use it"),
            ),
            Item::UseDirective(u) => {
                let msg = if u.name == "expiration" {
                    "relationship expiration is not supported yet (`use expiration`)".to_string()
                } else {
                    format!("unknown feature `{}` in `use`", u.name)
                };
                diags.push(Diagnostic::error(u.span, msg).with_hint(
                    "caveats and expiration arrive in phase 2; remove the `use` line",
                ));
            }
            Item::Definition(d) => {
                if let Err(e) = validate_type_name(&d.name.name) {
                    diags.push(Diagnostic::error(d.name.span, e).with_hint(
                        "type names match [a-z][a-z0-9_]{0,63}, optionally prefixed `ns/`",
                    ));
                }
                if def_spans.contains_key(&d.name.name) {
                    diags.push(
                        Diagnostic::error(d.name.span, format!("duplicate definition `{}`", d.name.name))
                            .with_hint("each definition name may appear once; merge the two definitions"),
                    );
                } else {
                    def_spans.insert(d.name.name.clone(), d.name.span);
                    defs.insert(d.name.name.clone(), d);
                }
            }
        }
    }

    // Members of each definition: name → (is_permission, span).
    let mut members: HashMap<&str, HashMap<&str, bool>> = HashMap::new();
    for d in defs.values() {
        let mut seen: HashMap<&str, (bool, Span)> = HashMap::new();
        for m in &d.members {
            let name = m.name();
            if let Err(e) = validate_name(&name.name) {
                diags.push(
                    Diagnostic::error(name.span, e)
                        .with_hint("relation and permission names match [a-z][a-z0-9_]{0,63}"),
                );
            }
            let is_perm = matches!(m, Member::Permission(_));
            if let Some((first_perm, _)) = seen.get(name.name.as_str()) {
                let msg = if *first_perm != is_perm {
                    format!(
                        "`{}` is defined as both a relation and a permission in `{}`",
                        name.name, d.name.name
                    )
                } else {
                    format!(
                        "duplicate {} `{}` in `{}`",
                        if is_perm { "permission" } else { "relation" },
                        name.name,
                        d.name.name
                    )
                };
                diags.push(
                    Diagnostic::error(name.span, msg).with_hint(
                        "relation and permission names must be unique within a definition",
                    ),
                );
            } else {
                seen.insert(&name.name, (is_perm, name.span));
            }
        }
        members.insert(
            &d.name.name,
            seen.into_iter().map(|(k, (p, _))| (k, p)).collect(),
        );
    }

    // Pass 2: relations' allowed types, permissions' expressions.
    let mut used: HashSet<(String, String)> = HashSet::new();
    let mut schema = Schema::default();
    for d in defs.values() {
        let mut def = Definition {
            name: d.name.name.clone(),
            doc: d.doc.clone(),
            relations: BTreeMap::new(),
            permissions: BTreeMap::new(),
        };
        for m in &d.members {
            match m {
                Member::Relation(r) => {
                    let mut allowed = Vec::new();
                    for a in &r.allowed {
                        if let Some(c) = &a.caveat {
                            diags.push(
                                Diagnostic::error(
                                    c.span,
                                    format!("caveats are not supported yet (`with {}`)", c.name),
                                )
                                .with_hint("caveats arrive in phase 2; remove the `with` clause"),
                            );
                        }
                        if let Some(span) = a.expiration {
                            diags.push(
                                Diagnostic::error(span, "relationship expiration is not supported yet (`with expiration`)")
                                    .with_hint("expiration arrives in phase 2; remove the `with expiration` clause"),
                            );
                        }
                        let tn = &a.type_name.name;
                        let Some(target_members) = members.get(tn.as_str()) else {
                            diags.push(unknown_type(a.type_name.span, tn, &defs));
                            continue;
                        };
                        let at = match &a.kind {
                            AllowedKind::Direct => AllowedType::Direct(tn.clone()),
                            AllowedKind::Wildcard => AllowedType::Wildcard(tn.clone()),
                            AllowedKind::Userset(rel) => {
                                if !target_members.contains_key(rel.name.as_str()) {
                                    diags.push(
                                        Diagnostic::error(
                                            rel.span,
                                            format!("relation or permission `{}` not found on definition `{}`", rel.name, tn),
                                        )
                                        .with_hint(suggest(&rel.name, target_members.keys().copied(), &format!("`{tn}` has no member of that name"))),
                                    );
                                }
                                used.insert((tn.clone(), rel.name.clone()));
                                AllowedType::Userset(tn.clone(), rel.name.clone())
                            }
                        };
                        if allowed.contains(&at) {
                            diags.push(Diagnostic::warning(
                                a.span,
                                format!("subject type `{at}` is listed twice"),
                            ));
                        } else {
                            allowed.push(at);
                        }
                    }
                    def.relations
                        .entry(r.name.name.clone())
                        .or_insert(Relation {
                            name: r.name.name.clone(),
                            doc: r.doc.clone(),
                            allowed,
                        });
                }
                Member::Permission(p) => {
                    let mut cx = ExprCx {
                        def: d,
                        defs: &defs,
                        members: &members,
                        diags: &mut diags,
                        used: &mut used,
                    };
                    let rewrite = cx.lower(&p.expr);
                    if only_refers_to(&rewrite, &p.name.name) {
                        diags.push(
                            Diagnostic::warning(p.name.span, format!("permission `{}` refers only to itself and can never be granted", p.name.name))
                                .with_hint("add a relation to the expression or use `nil`"),
                        );
                    }
                    def.permissions
                        .entry(p.name.name.clone())
                        .or_insert(Permission {
                            name: p.name.name.clone(),
                            doc: p.doc.clone(),
                            rewrite,
                        });
                }
            }
        }
        schema.definitions.insert(def.name.clone(), def);
    }

    // Warnings: unused relations.
    for d in defs.values() {
        for m in &d.members {
            if let Member::Relation(r) = m
                && !used.contains(&(d.name.name.clone(), r.name.name.clone()))
                && members.len() > 1
            {
                diags.push(
                    Diagnostic::warning(
                        r.name.span,
                        format!(
                            "relation `{}#{}` is not used by any permission",
                            d.name.name, r.name.name
                        ),
                    )
                    .with_hint("it can still be checked directly; remove it if it is left over"),
                );
            }
        }
    }
    diags.sort_by_key(|d| (d.span.start, d.severity == super::Severity::Warning));
    (schema, diags)
}

fn only_refers_to(r: &Rewrite, name: &str) -> bool {
    match r {
        Rewrite::Ref(n) => n == name,
        Rewrite::Union(v) | Rewrite::Intersection(v) => v.iter().all(|c| only_refers_to(c, name)),
        Rewrite::Exclusion(a, _) => only_refers_to(a, name),
        _ => false,
    }
}

fn unknown_type(span: Span, name: &str, defs: &BTreeMap<String, &DefinitionAst>) -> Diagnostic {
    Diagnostic::error(span, format!("unknown type `{name}`")).with_hint(suggest(
        name,
        defs.keys().map(|s| s.as_str()),
        "define it with `definition NAME {}` or fix the spelling",
    ))
}

/// "did you mean `x`?" when a known name is close, otherwise `fallback`.
fn suggest<'a>(name: &str, known: impl Iterator<Item = &'a str>, fallback: &str) -> String {
    let best = known
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min();
    match best {
        Some((_, k)) => format!("did you mean `{k}`?"),
        None => fallback.to_string(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

struct ExprCx<'a, 'b> {
    def: &'a DefinitionAst,
    defs: &'a BTreeMap<String, &'a DefinitionAst>,
    members: &'a HashMap<&'a str, HashMap<&'a str, bool>>,
    diags: &'b mut Vec<Diagnostic>,
    used: &'b mut HashSet<(String, String)>,
}

impl ExprCx<'_, '_> {
    fn own(&self) -> &HashMap<&str, bool> {
        // Every definition in `defs` has an entry in `members` (built from the same map).
        static EMPTY: std::sync::OnceLock<HashMap<&'static str, bool>> = std::sync::OnceLock::new();
        self.members
            .get(self.def.name.name.as_str())
            .unwrap_or_else(|| EMPTY.get_or_init(HashMap::new))
    }

    fn lower(&mut self, e: &Expr) -> Rewrite {
        match e {
            Expr::Nil(_) => Rewrite::Nil,
            Expr::Ref(id) => {
                if !self.own().contains_key(id.name.as_str()) {
                    let hint = suggest(
                        &id.name,
                        self.own().keys().copied(),
                        &format!(
                            "add `relation {}: ...` to `{}` or fix the spelling",
                            id.name, self.def.name.name
                        ),
                    );
                    self.diags.push(
                        Diagnostic::error(
                            id.span,
                            format!(
                                "relation or permission `{}` not found on definition `{}`",
                                id.name, self.def.name.name
                            ),
                        )
                        .with_hint(hint),
                    );
                }
                self.used
                    .insert((self.def.name.name.clone(), id.name.clone()));
                Rewrite::Ref(id.name.clone())
            }
            Expr::Arrow {
                relation,
                target,
                kind,
                span,
                ..
            } => {
                self.used
                    .insert((self.def.name.name.clone(), relation.name.clone()));
                self.check_arrow(relation, target, *span);
                Rewrite::Arrow {
                    relation: relation.name.clone(),
                    target: target.name.clone(),
                    kind: *kind,
                }
            }
            Expr::Binary {
                op, left, right, ..
            } => {
                let l = self.lower(left);
                let r = self.lower(right);
                match op {
                    BinOp::Union => flatten(
                        l,
                        r,
                        |x| match x {
                            Rewrite::Union(v) => Ok(v),
                            o => Err(o),
                        },
                        Rewrite::Union,
                    ),
                    BinOp::Intersection => flatten(
                        l,
                        r,
                        |x| match x {
                            Rewrite::Intersection(v) => Ok(v),
                            o => Err(o),
                        },
                        Rewrite::Intersection,
                    ),
                    BinOp::Exclusion => Rewrite::Exclusion(Box::new(l), Box::new(r)),
                }
            }
        }
    }

    fn check_arrow(&mut self, relation: &Ident, target: &Ident, span: Span) {
        let d = &self.def.name.name;
        match self.own().get(relation.name.as_str()) {
            None => {
                self.diags.push(
                    Diagnostic::error(
                        relation.span,
                        format!(
                            "relation `{}` not found on definition `{d}` (left side of arrow)",
                            relation.name
                        ),
                    )
                    .with_hint("the left side of an arrow must be a relation of this definition"),
                );
                return;
            }
            Some(true) => {
                self.diags.push(
                    Diagnostic::error(relation.span, format!("`{}` is a permission; the left side of an arrow must be a relation", relation.name))
                        .with_hint("arrows walk relationships, so use the relation the permission is built from"),
                );
                return;
            }
            Some(false) => {}
        }
        let Some(rel) = self.def.members.iter().find_map(|m| match m {
            Member::Relation(r) if r.name.name == relation.name => Some(r),
            _ => None,
        }) else {
            return;
        };
        let mut found = false;
        for a in &rel.allowed {
            if a.kind == AllowedKind::Wildcard {
                self.diags.push(
                    Diagnostic::error(
                        relation.span,
                        format!(
                            "relation `{}` allows the wildcard `{}:*` and cannot be used on the left of an arrow",
                            relation.name, a.type_name.name
                        ),
                    )
                    .with_hint("arrows follow relationships to concrete objects; split the wildcard into its own relation"),
                );
            }
            if let Some(m) = self.members.get(a.type_name.name.as_str())
                && m.contains_key(target.name.as_str())
            {
                found = true;
                self.used
                    .insert((a.type_name.name.clone(), target.name.clone()));
            }
        }
        if !found
            && rel
                .allowed
                .iter()
                .all(|a| self.defs.contains_key(&a.type_name.name))
        {
            self.diags.push(
                Diagnostic::warning(
                    span,
                    format!(
                        "arrow target `{}` exists on none of the types of `{}`, so this arrow can never match",
                        target.name, relation.name
                    ),
                )
                .with_hint("check the spelling of the target or the relation's subject types"),
            );
        }
    }
}

fn flatten(
    l: Rewrite,
    r: Rewrite,
    split: impl Fn(Rewrite) -> Result<Vec<Rewrite>, Rewrite>,
    make: impl Fn(Vec<Rewrite>) -> Rewrite,
) -> Rewrite {
    let mut v = match split(l) {
        Ok(v) => v,
        Err(o) => vec![o],
    };
    v.push(r);
    make(v)
}
