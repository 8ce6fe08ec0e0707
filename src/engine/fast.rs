//! The fast check path: a schema compiled into a plan of indices, evaluated
//! synchronously over a datastore's interned symbols ([`SymbolView`]).
//!
//! It answers only where its answer is the general evaluator's by
//! construction, and otherwise *bails* (returns `None`) so the caller runs
//! the general evaluator ([`super::check`]) from scratch:
//!
//! - a `(resource, member)` met again on the current path (a data cycle):
//!   the general evaluator's cut-and-assume machinery decides those;
//! - the depth limit, or more than [`MAX_STEPS`] sub-problems or
//!   [`MAX_ROWS`] relationship versions looked at (the general evaluator
//!   then applies the request's budget, memoises, and reports the limit);
//! - anything the plan could not resolve (a name missing from the schema).
//!
//! Without a cycle every sub-result is exact, so plain recursion with
//! short-circuiting unions, intersections and exclusions computes the
//! least fixpoint. Stored relationships always match the schema at their
//! revision (writes are validated and a schema change that would orphan one
//! is refused), so a lookup the schema rules out (a subject type a relation
//! does not allow, a wildcard it does not allow) is skipped, not read.
//!
//! Nothing here allocates per step except the path stack (reused) and
//! nothing awaits: a check is a handful of index seeks under one read lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::model::{ObjectRef, SubjectRef, WILDCARD_ID};
use crate::schema::{AllowedType, ArrowKind, Rewrite, Schema};
use crate::store::{NO_RELATION, Sym, SymbolView};

/// Sub-problems one fast check may evaluate before it hands over to the
/// general evaluator (a CRM check takes 5–30).
pub(crate) const MAX_STEPS: u32 = 4_096;
/// Relationship versions one fast check may look at before handing over.
pub(crate) const MAX_ROWS: u64 = 65_536;

/// Symbols for ids the store does not hold: they match no relationship.
/// Two different ones, so that an unknown resource and an unknown subject
/// are told apart (and equal when their ids are equal strings).
const UNKNOWN_SUBJECT: Sym = Sym::MAX;
const UNKNOWN_RESOURCE: Sym = Sym::MAX - 1;

type TypeIx = u16;
type MemberIx = u16;

/// A name's symbol in the engine's datastore, looked up once: a symbol
/// never changes once given, so only "not yet interned" is looked up again.
#[derive(Debug)]
struct SymCell {
    name: Box<str>,
    /// 0: not known yet.
    sym: AtomicU32,
}

impl SymCell {
    fn new(name: &str) -> Self {
        SymCell {
            name: name.into(),
            sym: AtomicU32::new(0),
        }
    }

    fn get(&self, view: &dyn SymbolView) -> Option<Sym> {
        match self.sym.load(Ordering::Relaxed) {
            0 => {
                let sym = view.sym(&self.name)?;
                self.sym.store(sym, Ordering::Relaxed);
                Some(sym)
            }
            sym => Some(sym),
        }
    }
}

#[derive(Debug)]
enum Expr {
    Nil,
    Ref(MemberIx),
    Union(Vec<Expr>),
    Intersection(Vec<Expr>),
    Exclusion(Box<Expr>, Box<Expr>),
    /// `relation->target`: `targets[t]` is the target member on type `t`.
    Arrow {
        relation: MemberIx,
        targets: Vec<Option<MemberIx>>,
        all: bool,
    },
    /// Something the plan could not resolve: bail.
    Unresolved,
}

/// What a relation may hold, by the schema.
#[derive(Debug)]
struct RelationPlan {
    /// Subject `(type, relation)` pairs that may be stored directly.
    exact: Vec<(TypeIx, Option<MemberIx>)>,
    /// Types whose wildcard may be stored.
    wildcard: Vec<TypeIx>,
    /// Usersets `type#member` to expand.
    usersets: Vec<(TypeIx, MemberIx)>,
}

#[derive(Debug)]
enum Rule {
    Relation(RelationPlan),
    Permission(Expr),
}

#[derive(Debug)]
struct MemberPlan {
    sym: SymCell,
    rule: Rule,
}

#[derive(Debug)]
struct TypePlan {
    sym: SymCell,
    members: Vec<MemberPlan>,
    by_name: HashMap<Box<str>, MemberIx>,
}

/// A schema compiled for the fast path: types and members by index.
#[derive(Debug)]
pub(crate) struct Plan {
    types: Vec<TypePlan>,
    by_name: HashMap<Box<str>, TypeIx>,
    wildcard: SymCell,
}

impl Plan {
    pub(crate) fn compile(schema: &Schema) -> Plan {
        let by_name: HashMap<Box<str>, TypeIx> = schema
            .definitions
            .keys()
            .enumerate()
            .map(|(i, n)| (n.as_str().into(), i as TypeIx))
            .collect();
        // Members: relations then permissions, in name order.
        let members: Vec<HashMap<Box<str>, MemberIx>> = schema
            .definitions
            .values()
            .map(|d| {
                d.relations
                    .keys()
                    .chain(d.permissions.keys())
                    .enumerate()
                    .map(|(i, n)| (n.as_str().into(), i as MemberIx))
                    .collect()
            })
            .collect();
        let ty = |n: &str| by_name.get(n).copied();
        let member = |t: Option<TypeIx>, n: &str| {
            t.and_then(|t| members.get(usize::from(t))?.get(n).copied())
        };
        let types = schema
            .definitions
            .values()
            .zip(&members)
            .enumerate()
            .map(|(ti, (d, names))| {
                let ti = ti as TypeIx;
                let relations = d.relations.values().map(|r| {
                    let mut exact = Vec::new();
                    let mut wildcard = Vec::new();
                    let mut usersets = Vec::new();
                    let mut unresolved = false;
                    for a in &r.allowed {
                        match a {
                            AllowedType::Direct(t) => match ty(t) {
                                Some(t) => exact.push((t, None)),
                                None => unresolved = true,
                            },
                            AllowedType::Wildcard(t) => match ty(t) {
                                Some(t) => wildcard.push(t),
                                None => unresolved = true,
                            },
                            AllowedType::Userset(t, m) => match (ty(t), member(ty(t), m)) {
                                (Some(t), Some(m)) => {
                                    exact.push((t, Some(m)));
                                    usersets.push((t, m));
                                }
                                _ => unresolved = true,
                            },
                        }
                    }
                    MemberPlan {
                        sym: SymCell::new(&r.name),
                        rule: if unresolved {
                            Rule::Permission(Expr::Unresolved)
                        } else {
                            Rule::Relation(RelationPlan {
                                exact,
                                wildcard,
                                usersets,
                            })
                        },
                    }
                });
                let permissions = d.permissions.iter().map(|(name, p)| MemberPlan {
                    sym: SymCell::new(name),
                    rule: Rule::Permission(compile_rewrite(
                        &p.rewrite,
                        &|n| member(Some(ti), n),
                        &|target| members.iter().map(|m| m.get(target).copied()).collect(),
                    )),
                });
                TypePlan {
                    sym: SymCell::new(&d.name),
                    members: relations.chain(permissions).collect(),
                    by_name: names.clone(),
                }
            })
            .collect();
        Plan {
            types,
            by_name,
            wildcard: SymCell::new(WILDCARD_ID),
        }
    }

    fn member(&self, t: TypeIx, m: MemberIx) -> Option<&MemberPlan> {
        self.types.get(usize::from(t))?.members.get(usize::from(m))
    }

    /// The store's symbol of type `t`'s name (`None`: no relationship
    /// names it yet).
    fn type_sym(&self, view: &dyn SymbolView, t: TypeIx) -> Option<Sym> {
        self.types.get(usize::from(t))?.sym.get(view)
    }

    fn type_of_sym(&self, view: &dyn SymbolView, sym: Sym) -> Option<TypeIx> {
        self.types
            .iter()
            .position(|t| t.sym.get(view) == Some(sym))
            .map(|i| i as TypeIx)
    }
}

fn compile_rewrite(
    rewrite: &Rewrite,
    member: &dyn Fn(&str) -> Option<MemberIx>,
    targets: &dyn Fn(&str) -> Vec<Option<MemberIx>>,
) -> Expr {
    let all = |children: &[Rewrite]| {
        children
            .iter()
            .map(|c| compile_rewrite(c, member, targets))
            .collect()
    };
    match rewrite {
        Rewrite::Nil => Expr::Nil,
        Rewrite::Ref(name) => member(name).map_or(Expr::Unresolved, Expr::Ref),
        Rewrite::Union(c) => Expr::Union(all(c)),
        Rewrite::Intersection(c) => Expr::Intersection(all(c)),
        Rewrite::Exclusion(b, s) => Expr::Exclusion(
            Box::new(compile_rewrite(b, member, targets)),
            Box::new(compile_rewrite(s, member, targets)),
        ),
        Rewrite::Arrow {
            relation,
            target,
            kind,
        } => match member(relation) {
            Some(relation) => Expr::Arrow {
                relation,
                targets: targets(target),
                all: *kind == ArrowKind::All,
            },
            None => Expr::Unresolved,
        },
    }
}

/// The work a fast check did, for the dispatch metrics.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Work {
    pub steps: u32,
    pub depth: u32,
}

/// Hand the question to the general evaluator.
struct Bail;

/// The subject being checked, in plan indices and symbols.
struct Subject {
    ty: TypeIx,
    ty_sym: Option<Sym>,
    id: Sym,
    /// The subject relation's member index on the subject's type.
    rel: Option<MemberIx>,
    /// Its symbol ([`NO_RELATION`] for none; [`UNKNOWN_SUBJECT`] when the
    /// store never saw the name, so no stored subject has it).
    rel_sym: Sym,
}

struct Eval<'a> {
    view: &'a dyn SymbolView,
    plan: &'a Plan,
    subject: Subject,
    path: Vec<(TypeIx, Sym, MemberIx)>,
    max_depth: u32,
    rows: u64,
    work: Work,
}

/// Is `subject` in `resource#member`? `None`: the fast path does not
/// decide this one (see the module docs); ask the general evaluator.
pub(crate) fn check(
    view: &dyn SymbolView,
    plan: &Plan,
    resource: &ObjectRef,
    member: &str,
    subject: &SubjectRef,
    max_depth: u32,
) -> Option<(bool, Work)> {
    let rt = *plan.by_name.get(resource.object_type.as_str())?;
    let rm = *plan.types.get(usize::from(rt))?.by_name.get(member)?;
    let st = *plan.by_name.get(subject.object.object_type.as_str())?;
    let st_plan = plan.types.get(usize::from(st))?;
    let rel = match &subject.relation {
        None => None,
        Some(r) => Some(*st_plan.by_name.get(r.as_str())?),
    };
    let rel_sym = match &subject.relation {
        None => NO_RELATION,
        Some(r) => view.sym(r).unwrap_or(UNKNOWN_SUBJECT),
    };
    let sid = view
        .sym(&subject.object.object_id)
        .unwrap_or(UNKNOWN_SUBJECT);
    let rid = view.sym(&resource.object_id).unwrap_or(
        if resource.object_id == subject.object.object_id {
            UNKNOWN_SUBJECT
        } else {
            UNKNOWN_RESOURCE
        },
    );
    let mut eval = Eval {
        view,
        plan,
        subject: Subject {
            ty: st,
            ty_sym: st_plan.sym.get(view),
            id: sid,
            rel,
            rel_sym,
        },
        path: Vec::with_capacity(16),
        max_depth,
        rows: 0,
        work: Work::default(),
    };
    let allowed = eval.check(rt, rid, rm, 0).ok()?;
    Some((allowed, eval.work))
}

impl Eval<'_> {
    fn check(&mut self, t: TypeIx, id: Sym, m: MemberIx, depth: u32) -> Result<bool, Bail> {
        let s = &self.subject;
        // A userset is a member of itself.
        if s.rel == Some(m) && s.ty == t && s.id == id {
            return Ok(true);
        }
        if depth >= self.max_depth || self.path.contains(&(t, id, m)) {
            return Err(Bail);
        }
        self.work.steps += 1;
        if self.work.steps > MAX_STEPS {
            return Err(Bail);
        }
        self.work.depth = self.work.depth.max(depth);
        let plan = self.plan;
        let member = plan.member(t, m).ok_or(Bail)?;
        self.path.push((t, id, m));
        let result = match &member.rule {
            Rule::Relation(r) => self.relation(t, id, &member.sym, r, depth),
            Rule::Permission(e) => self.expr(t, id, e, depth),
        };
        self.path.pop();
        result
    }

    /// Relation `name` (its rule `r`) of object `(t, id)`.
    fn relation(
        &mut self,
        t: TypeIx,
        id: Sym,
        name: &SymCell,
        r: &RelationPlan,
        depth: u32,
    ) -> Result<bool, Bail> {
        let view = self.view;
        let plan = self.plan;
        let (Some(tsym), Some(rsym)) = (plan.type_sym(view, t), name.get(view)) else {
            // No relationship names this type or relation yet.
            return Ok(false);
        };
        let s = &self.subject;
        if let Some(st) = s.ty_sym {
            if r.exact.contains(&(s.ty, s.rel))
                && view.contains(&[tsym, id, rsym, st, s.id, s.rel_sym])
            {
                return Ok(true);
            }
            if r.wildcard.contains(&s.ty)
                && let Some(star) = plan.wildcard.get(view)
                && view.contains(&[tsym, id, rsym, st, star, NO_RELATION])
            {
                return Ok(true);
            }
        }
        for &(ut, um) in &r.usersets {
            let (Some(usym), Some(msym)) = (
                plan.type_sym(view, ut),
                plan.member(ut, um).ok_or(Bail)?.sym.get(view),
            ) else {
                continue;
            };
            let mut found = Ok(false);
            let seen = view.subjects(&[tsym, id, rsym, usym], &mut |_, sid, srel| {
                if srel != msym {
                    return true;
                }
                found = self.check(ut, sid, um, depth + 1);
                matches!(found, Ok(false))
            });
            self.count_rows(seen)?;
            if found? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn expr(&mut self, t: TypeIx, id: Sym, e: &Expr, depth: u32) -> Result<bool, Bail> {
        match e {
            Expr::Nil => Ok(false),
            Expr::Unresolved => Err(Bail),
            Expr::Ref(m) => self.check(t, id, *m, depth + 1),
            Expr::Union(children) => {
                for c in children {
                    if self.expr(t, id, c, depth)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Expr::Intersection(children) => {
                for c in children {
                    if !self.expr(t, id, c, depth)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Expr::Exclusion(base, subtract) => {
                Ok(self.expr(t, id, base, depth)? && !self.expr(t, id, subtract, depth)?)
            }
            Expr::Arrow {
                relation,
                targets,
                all,
            } => self.arrow(t, id, *relation, targets, *all, depth),
        }
    }

    fn arrow(
        &mut self,
        t: TypeIx,
        id: Sym,
        relation: MemberIx,
        targets: &[Option<MemberIx>],
        all: bool,
        depth: u32,
    ) -> Result<bool, Bail> {
        let view = self.view;
        let plan = self.plan;
        let tsym = plan.type_sym(view, t);
        let rsym = plan.member(t, relation).ok_or(Bail)?.sym.get(view);
        let (Some(tsym), Some(rsym)) = (tsym, rsym) else {
            return Ok(false);
        };
        // `.any()`: the first object granting decides; `.all()`: the first
        // denying one does, and no object at all is a denial.
        let mut result: Result<Option<bool>, Bail> = Ok(None);
        let mut last: Option<(Sym, Sym)> = None;
        let seen = view.subjects(&[tsym, id, rsym], &mut |ty, oid, _| {
            // Arrows follow objects, ignoring subject relations; versions
            // of one object are adjacent in key order.
            if last == Some((ty, oid)) {
                return true;
            }
            last = Some((ty, oid));
            let granted = match plan
                .type_of_sym(view, ty)
                .and_then(|ot| Some((ot, targets.get(usize::from(ot)).copied()??)))
            {
                Some((ot, target)) => match self.check(ot, oid, target, depth + 1) {
                    Ok(g) => g,
                    Err(b) => {
                        result = Err(b);
                        return false;
                    }
                },
                None => false,
            };
            result = Ok(Some(granted));
            granted == all
        });
        self.count_rows(seen)?;
        Ok(result?.unwrap_or(false))
    }

    /// Counts relationship versions looked at; past [`MAX_ROWS`], bail.
    fn count_rows(&mut self, seen: u64) -> Result<(), Bail> {
        self.rows += seen;
        if self.rows > MAX_ROWS {
            return Err(Bail);
        }
        Ok(())
    }
}
