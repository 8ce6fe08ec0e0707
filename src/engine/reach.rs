//! Where a lookup's candidates come from: walks over the relationships that
//! can matter to the answer, never over every object of a type.
//!
//! Both walks compute a *superset* of the answer; every candidate is then
//! decided by Check, so lookups stay exact by construction (DESIGN.md §4).
//!
//! - [`ReversePlan`] (LookupResources) walks upward from the subject
//!   through the by-subject index. A resource is granted a permission only
//!   through a *positive path* from the subject: a relationship naming it
//!   (or its wildcard, or the subject userset itself), then usersets, arrows
//!   and permission references up to the resource. The plan follows exactly
//!   those edges that can lie on such a path towards the asked
//!   `(type, permission)`: unions follow every branch, an intersection one
//!   branch (every granted resource is reached through each branch, so one
//!   suffices; the plan prefers a branch no wildcard feeds), an exclusion
//!   its base, `.all()` like `.any()`. Pairs `(type, member)` that cannot
//!   reach the target are pruned before any read.
//! - [`Evaluator::subject_candidates`] (LookupSubjects) walks downward from
//!   the resource through every branch (the subtracted side of exclusions
//!   too: their subjects are the exceptions of a wildcard).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use super::{Error, Evaluator};
use crate::model::{ObjectRef, Page, RelationshipFilter, SubjectFilter, SubjectRef, WILDCARD_ID};
use crate::schema::{AllowedType, MemberKind, Rewrite, Schema};

type Node = (String, String);

/// Rows a walk reads at once from one subject's relationships.
const WALK_PAGE: usize = 1_000;

/// The schema edges a LookupResources walk follows towards one target.
#[derive(Debug, Default)]
pub(crate) struct ReversePlan {
    target: Node,
    /// `(type, member)` pairs from which the target can be reached.
    relevant: HashSet<Node>,
    /// The same pairs by type, for allocation-free probes.
    relevant_by_type: HashMap<String, HashSet<String>>,
    /// `(T, M)` → permissions `Q` of `T` that reference `M` on a positive path.
    same_object: HashMap<Node, Vec<String>>,
    /// `(D, r, M)` → permissions `Q` of `D` holding `r->M` on a positive path.
    arrows: HashMap<(String, String, String), Vec<String>>,
    /// `(T, M)` whose appearances as a subject lead somewhere (usersets
    /// `T#M` allowed on a relevant relation, or arrows to `M`); the flag
    /// says whether arrows need them (then any subject relation counts).
    reads_subjects: HashMap<Node, bool>,
    /// Subject types whose wildcard is allowed on a relevant relation.
    wildcards: HashSet<String>,
    /// Pairs from which the walk reads nothing more: only permissions of
    /// the same object follow, and from those none either. Reaching one
    /// needs no queue and no memory of it: the flag says whether the
    /// target is among them (then the object is a candidate).
    sinks: HashMap<Node, bool>,
}

/// A term of a permission that can start a positive path.
#[derive(Debug, Clone)]
enum Source<'s> {
    Ref(&'s str),
    Arrow(&'s str, &'s str),
}

impl ReversePlan {
    pub(crate) fn new(schema: &Schema, resource_type: &str, permission: &str) -> ReversePlan {
        let mut plan = ReversePlan {
            target: (resource_type.to_string(), permission.to_string()),
            ..Default::default()
        };
        let wildcard_fed = wildcard_fed(schema);
        // Backwards from the target: which pairs can reach it.
        let mut queue: VecDeque<Node> = VecDeque::from([plan.target.clone()]);
        plan.relevant.insert(plan.target.clone());
        while let Some((t, m)) = queue.pop_front() {
            let Some(def) = schema.definition(&t) else {
                continue;
            };
            let mut reach = |node: Node, queue: &mut VecDeque<Node>| {
                if plan.relevant.insert(node.clone()) {
                    queue.push_back(node);
                }
            };
            match def.member_kind(&m) {
                Some(MemberKind::Relation) => {
                    for allowed in &def.relations[&m].allowed {
                        match allowed {
                            AllowedType::Userset(u, r) => {
                                plan.reads_subjects
                                    .entry((u.clone(), r.clone()))
                                    .or_insert(false);
                                reach((u.clone(), r.clone()), &mut queue);
                            }
                            AllowedType::Wildcard(u) => {
                                plan.wildcards.insert(u.clone());
                            }
                            AllowedType::Direct(_) => {}
                        }
                    }
                }
                Some(MemberKind::Permission) => {
                    let mut sources = Vec::new();
                    generators(
                        &def.permissions[&m].rewrite,
                        &t,
                        &wildcard_fed,
                        &mut sources,
                    );
                    for source in sources {
                        match source {
                            Source::Ref(n) => {
                                plan.same_object
                                    .entry((t.clone(), n.to_string()))
                                    .or_default()
                                    .push(m.clone());
                                reach((t.clone(), n.to_string()), &mut queue);
                            }
                            Source::Arrow(r, target) => {
                                plan.arrows
                                    .entry((t.clone(), r.to_string(), target.to_string()))
                                    .or_default()
                                    .push(m.clone());
                                for u in arrow_object_types(schema, &t, r) {
                                    let has_target = schema
                                        .definition(u)
                                        .is_some_and(|d| d.member_kind(target).is_some());
                                    if has_target {
                                        plan.reads_subjects
                                            .insert((u.to_string(), target.to_string()), true);
                                        reach((u.to_string(), target.to_string()), &mut queue);
                                    }
                                }
                            }
                        }
                    }
                }
                None => {}
            }
        }
        for (t, m) in &plan.relevant {
            plan.relevant_by_type
                .entry(t.clone())
                .or_default()
                .insert(m.clone());
        }
        for qs in plan
            .same_object
            .values_mut()
            .chain(plan.arrows.values_mut())
        {
            qs.sort();
            qs.dedup();
        }
        plan.sinks = plan.find_sinks();
        plan
    }

    /// The sinks among the relevant pairs (see `sinks`): the greatest set
    /// of pairs that read no subjects and lead (within their object) only
    /// to each other, each with whether the target is reachable from it.
    fn find_sinks(&self) -> HashMap<Node, bool> {
        let next = |n: &Node| -> Vec<Node> {
            self.same_object
                .get(n)
                .into_iter()
                .flatten()
                .map(|q| (n.0.clone(), q.clone()))
                .collect()
        };
        let mut sinks: HashSet<Node> = self
            .relevant
            .iter()
            .filter(|n| !self.reads_subjects.contains_key(*n))
            .cloned()
            .collect();
        loop {
            let out: Vec<Node> = sinks
                .iter()
                .filter(|n| next(n).iter().any(|q| !sinks.contains(q)))
                .cloned()
                .collect();
            if out.is_empty() {
                break;
            }
            for n in out {
                sinks.remove(&n);
            }
        }
        let mut reaches: HashSet<Node> = sinks
            .iter()
            .filter(|n| **n == self.target)
            .cloned()
            .collect();
        loop {
            let more: Vec<Node> = sinks
                .iter()
                .filter(|n| !reaches.contains(*n) && next(n).iter().any(|q| reaches.contains(q)))
                .cloned()
                .collect();
            if more.is_empty() {
                break;
            }
            reaches.extend(more);
        }
        sinks
            .into_iter()
            .map(|n| {
                let r = reaches.contains(&n);
                (n, r)
            })
            .collect()
    }

    /// For a sink pair, whether it reaches the target; `None` otherwise.
    fn sink(&self, object_type: &str, member: &str) -> Option<bool> {
        if self.sinks.is_empty() {
            return None;
        }
        self.sinks
            .get(&(object_type.to_string(), member.to_string()))
            .copied()
    }

    fn relevant(&self, object_type: &str, member: &str) -> bool {
        self.relevant_by_type
            .get(object_type)
            .is_some_and(|members| members.contains(member))
    }
}

/// Object types a `relation` of `object_type` can point an arrow at.
fn arrow_object_types<'s>(schema: &'s Schema, object_type: &str, relation: &str) -> Vec<&'s str> {
    let Some(rel) = schema.relation(object_type, relation) else {
        return Vec::new();
    };
    let mut out: Vec<&str> = rel
        .allowed
        .iter()
        .filter_map(|a| match a {
            AllowedType::Direct(u) | AllowedType::Userset(u, _) => Some(u.as_str()),
            AllowedType::Wildcard(_) => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A leaf of an expression as a term (`nil` is none).
fn term(rewrite: &Rewrite) -> Option<Source<'_>> {
    match rewrite {
        Rewrite::Ref(n) => Some(Source::Ref(n)),
        Rewrite::Arrow {
            relation, target, ..
        } => Some(Source::Arrow(relation, target)),
        _ => None,
    }
}

/// The terms of `rewrite` on which a positive path can start.
fn generators<'s>(
    rewrite: &'s Rewrite,
    object_type: &str,
    wildcard_fed: &HashSet<Node>,
    out: &mut Vec<Source<'s>>,
) {
    match rewrite {
        Rewrite::Nil | Rewrite::Ref(_) | Rewrite::Arrow { .. } => out.extend(term(rewrite)),
        Rewrite::Union(children) => {
            for c in children {
                generators(c, object_type, wildcard_fed, out);
            }
        }
        Rewrite::Intersection(children) => {
            // Every granted object is reached through each branch: one is
            // enough, preferably one that no wildcard feeds.
            let fed = |c: &Rewrite| {
                let mut s = Vec::new();
                generators(c, object_type, wildcard_fed, &mut s);
                s.iter().any(|s| match s {
                    Source::Ref(n) => {
                        wildcard_fed.contains(&(object_type.to_string(), n.to_string()))
                    }
                    Source::Arrow(..) => false,
                })
            };
            if let Some(c) = children.iter().find(|c| !fed(c)).or(children.first()) {
                generators(c, object_type, wildcard_fed, out);
            }
        }
        Rewrite::Exclusion(base, _) => generators(base, object_type, wildcard_fed, out),
    }
}

/// `(type, member)` pairs that hold a wildcard directly or through
/// references on the same object (a coarse measure of "large").
fn wildcard_fed(schema: &Schema) -> HashSet<Node> {
    let mut fed: HashSet<Node> = HashSet::new();
    for (t, def) in &schema.definitions {
        for (r, rel) in &def.relations {
            if rel
                .allowed
                .iter()
                .any(|a| matches!(a, AllowedType::Wildcard(_)))
            {
                fed.insert((t.clone(), r.clone()));
            }
        }
    }
    // Permissions whose union references a fed member, to a fixpoint.
    loop {
        let mut grew = false;
        for (t, def) in &schema.definitions {
            for (p, perm) in &def.permissions {
                if fed.contains(&(t.clone(), p.clone())) {
                    continue;
                }
                let mut refs = Vec::new();
                union_refs(&perm.rewrite, &mut refs);
                if refs
                    .iter()
                    .any(|n| fed.contains(&(t.clone(), n.to_string())))
                {
                    fed.insert((t.clone(), p.clone()));
                    grew = true;
                }
            }
        }
        if !grew {
            return fed;
        }
    }
}

fn union_refs<'s>(rewrite: &'s Rewrite, out: &mut Vec<&'s str>) {
    match rewrite {
        Rewrite::Ref(n) => out.push(n),
        Rewrite::Union(children) => children.iter().for_each(|c| union_refs(c, out)),
        Rewrite::Exclusion(base, _) => union_refs(base, out),
        _ => {}
    }
}

impl Evaluator<'_> {
    /// Ids of `plan`'s resource type that may hold its permission for
    /// `subject`: a sorted superset of the answer, built from the
    /// relationships on positive paths from the subject only.
    pub(crate) async fn resource_candidates(
        &self,
        plan: &ReversePlan,
        subject: &SubjectRef,
    ) -> Result<BTreeSet<String>, Error> {
        let mut seen: HashSet<(ObjectRef, String)> = HashSet::new();
        let mut queue: VecDeque<(ObjectRef, String)> = VecDeque::new();
        let mut out = BTreeSet::new();
        // Sinks reached: counted as walk steps, never remembered (a user
        // who may see 100,000 documents reaches 100,000 `viewer` sinks).
        let sunk = std::sync::atomic::AtomicU64::new(0);
        let mut push = |object: ObjectRef, member: String, queue: &mut VecDeque<_>| {
            if !plan.relevant(&object.object_type, &member) {
                return;
            }
            if let Some(reaches) = plan.sink(&object.object_type, &member) {
                sunk.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if reaches {
                    out.insert(object.object_id);
                }
                return;
            }
            if seen.insert((object.clone(), member.clone())) {
                queue.push_back((object, member));
            }
        };
        // Relationships naming the subject itself, or its type's wildcard.
        let st = &subject.object.object_type;
        let mut ids = vec![];
        if subject.relation.is_none() {
            ids.push(subject.object.object_id.clone());
        }
        if plan.wildcards.contains(st) {
            ids.push(WILDCARD_ID.to_string());
        }
        if !ids.is_empty() {
            let direct = self
                .read(&RelationshipFilter {
                    subject: Some(SubjectFilter {
                        subject_type: st.clone(),
                        subject_ids: ids,
                        relation: Some(None),
                        exclude_wildcard: false,
                    }),
                    ..Default::default()
                })
                .await?;
            for rel in direct {
                push(rel.resource, rel.relation, &mut queue);
            }
        }
        // A userset is a member of itself.
        if let Some(r) = &subject.relation {
            push(subject.object.clone(), r.clone(), &mut queue);
        }
        let mut targets = Vec::new();
        while let Some((object, member)) = queue.pop_front() {
            self.walk_steps(sunk.swap(0, std::sync::atomic::Ordering::Relaxed) + 1)?;
            if object.object_type == plan.target.0 && member == plan.target.1 {
                targets.push(object.object_id.clone());
            }
            let node = (object.object_type.clone(), member.clone());
            for q in plan.same_object.get(&node).into_iter().flatten() {
                push(object.clone(), q.clone(), &mut queue);
            }
            let Some(&arrows) = plan.reads_subjects.get(&node) else {
                continue;
            };
            let filter = RelationshipFilter {
                subject: Some(SubjectFilter {
                    subject_type: object.object_type.clone(),
                    subject_ids: vec![object.object_id.clone()],
                    relation: if arrows {
                        None
                    } else {
                        Some(Some(member.clone()))
                    },
                    exclude_wildcard: true,
                }),
                ..Default::default()
            };
            // In pages on the memory store, which pages a subject's rows by
            // seeks (a group of everyone is named by every document); one
            // read elsewhere (Postgres sorts a subject's rows to page them).
            let mut page = Page {
                after: None,
                limit: self.engine.store.symbol_reads().map(|_| WALK_PAGE),
            };
            loop {
                let rows = self.read_page(&filter, &page).await?;
                let more = page.limit.is_some_and(|l| rows.len() >= l);
                for rel in &rows {
                    if rel.subject.relation.as_deref() == Some(member.as_str()) {
                        push(rel.resource.clone(), rel.relation.clone(), &mut queue);
                    }
                    if arrows {
                        let key = (
                            rel.resource.object_type.clone(),
                            rel.relation.clone(),
                            member.clone(),
                        );
                        for q in plan.arrows.get(&key).into_iter().flatten() {
                            push(rel.resource.clone(), q.clone(), &mut queue);
                        }
                    }
                }
                if !more {
                    break;
                }
                page.after = rows.into_iter().last();
                self.walk_steps(sunk.swap(0, std::sync::atomic::Ordering::Relaxed))?;
            }
        }
        self.walk_steps(sunk.swap(0, std::sync::atomic::Ordering::Relaxed))?;
        out.extend(targets);
        Ok(out)
    }

    /// Subject ids of `subject_type` (with `subject_relation`) that may be
    /// in `resource#member` or excluded from a wildcard there: a sorted
    /// superset, read from the relationships below the resource only.
    /// The flag says whether a wildcard of the type was met.
    pub(crate) async fn subject_candidates(
        &self,
        resource: &ObjectRef,
        member: &str,
        subject_type: &str,
        subject_relation: Option<&str>,
    ) -> Result<(BTreeSet<String>, bool), Error> {
        let mut seen: HashSet<(ObjectRef, String)> = HashSet::new();
        let mut queue: VecDeque<(ObjectRef, String)> = VecDeque::new();
        let mut push = |object: ObjectRef, member: String, queue: &mut VecDeque<_>| {
            if seen.insert((object.clone(), member.clone())) {
                queue.push_back((object, member));
            }
        };
        push(resource.clone(), member.to_string(), &mut queue);
        let mut out = BTreeSet::new();
        let mut wildcard = false;
        while let Some((object, member)) = queue.pop_front() {
            self.walk_steps(1)?;
            // A userset is a member of itself.
            if object.object_type == subject_type && subject_relation == Some(member.as_str()) {
                out.insert(object.object_id.clone());
            }
            let Some(def) = self.schema.definition(&object.object_type) else {
                continue;
            };
            match def.member_kind(&member) {
                Some(MemberKind::Relation) => {
                    for rel in self.read_relation(&object, &member).await? {
                        let s = rel.subject;
                        if s.object.object_type == subject_type {
                            if s.is_wildcard() {
                                wildcard = true;
                            } else if s.relation.as_deref() == subject_relation {
                                out.insert(s.object.object_id.clone());
                            }
                        }
                        if let Some(r) = s.relation {
                            push(s.object, r, &mut queue);
                        }
                    }
                }
                Some(MemberKind::Permission) => {
                    let mut terms = Vec::new();
                    all_terms(&def.permissions[&member].rewrite, &mut terms);
                    for term in terms {
                        match term {
                            Source::Ref(n) => push(object.clone(), n.to_string(), &mut queue),
                            Source::Arrow(r, target) => {
                                let rows = self.read_relation(&object, r).await?;
                                let objects: BTreeSet<ObjectRef> =
                                    rows.into_iter().map(|rel| rel.subject.object).collect();
                                for o in objects {
                                    let has_target = self
                                        .schema
                                        .definition(&o.object_type)
                                        .is_some_and(|d| d.member_kind(target).is_some());
                                    if has_target {
                                        push(o, target.to_string(), &mut queue);
                                    }
                                }
                            }
                        }
                    }
                }
                None => {}
            }
        }
        Ok((out, wildcard))
    }
}

/// Every reference and arrow of `rewrite`, on either side of any operator.
fn all_terms<'s>(rewrite: &'s Rewrite, out: &mut Vec<Source<'s>>) {
    match rewrite {
        Rewrite::Nil | Rewrite::Ref(_) | Rewrite::Arrow { .. } => out.extend(term(rewrite)),
        Rewrite::Union(children) | Rewrite::Intersection(children) => {
            children.iter().for_each(|c| all_terms(c, out))
        }
        Rewrite::Exclusion(base, subtract) => {
            all_terms(base, out);
            all_terms(subtract, out);
        }
    }
}
