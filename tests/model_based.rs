//! Model-based property test: the engine against a deliberately naive
//! reference evaluator on random schemas and random relationships.
//!
//! The reference computes every membership set by plain iteration to a
//! fixpoint: first the relations (direct subjects, wildcards and group
//! usersets), then the permissions from the empty set upwards. Exclusions
//! only subtract relations (which are fixed by then), so the permission step
//! is monotone and the iteration reaches the least fixpoint — the semantics of
//! DESIGN.md §4. Data cycles (group in group, doc parent of itself) are
//! generated on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::{BTreeMap, BTreeSet};

use kinbar::store::{Operation, TxnMetadata, Update};
use kinbar::{ObjectRef, Relationship, SubjectRef};
use proptest::prelude::*;

const USERS: usize = 4;
const DOCS: usize = 5;
const GROUPS: usize = 3;

#[derive(Debug, Clone)]
enum E {
    Nil,
    Ref(&'static str),
    Arrow(&'static str, bool), // target, all?
    Union(Box<E>, Box<E>),
    Inter(Box<E>, Box<E>),
    /// The subtrahend is a union of relations only (stratified).
    Excl(Box<E>, Vec<&'static str>),
}

impl E {
    fn text(&self) -> String {
        match self {
            E::Nil => "nil".into(),
            E::Ref(n) => n.to_string(),
            E::Arrow(t, false) => format!("parent->{t}"),
            E::Arrow(t, true) => format!("parent.all({t})"),
            E::Union(a, b) => format!("({} + {})", a.text(), b.text()),
            E::Inter(a, b) => format!("({} & {})", a.text(), b.text()),
            E::Excl(a, rs) => format!("({} - ({}))", a.text(), rs.join(" + ")),
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    group_perms: Vec<E>, // gp0, gp1 (no arrows: group has no parent)
    doc_perms: Vec<E>,   // p0, p1, p2
    rels: Vec<String>,
}

const DOC_RELS: [&str; 3] = ["viewer", "editor", "banned"];
const GROUP_RELS: [&str; 2] = ["member", "owner"];
const ARROW_TARGETS: [&str; 8] = [
    "member", "owner", "gp0", "viewer", "editor", "p0", "p2", "p3",
];

fn expr(
    refs: &'static [&'static str],
    rels: &'static [&'static str],
    arrows: bool,
) -> BoxedStrategy<E> {
    let mut leaves: Vec<BoxedStrategy<E>> = vec![
        Just(E::Nil).boxed(),
        prop::sample::select(refs).prop_map(E::Ref).boxed(),
        prop::sample::select(refs).prop_map(E::Ref).boxed(),
    ];
    if arrows {
        leaves.push(
            (prop::sample::select(&ARROW_TARGETS[..]), any::<bool>())
                .prop_map(|(t, all)| E::Arrow(t, all))
                .boxed(),
        );
        leaves.push(
            prop::sample::select(&ARROW_TARGETS[..])
                .prop_map(|t| E::Arrow(t, false))
                .boxed(),
        );
    }
    let leaf = prop::strategy::Union::new(leaves);
    leaf.prop_recursive(3, 12, 2, move |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| E::Union(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| E::Inter(Box::new(a), Box::new(b))),
            (inner, prop::sample::subsequence(rels, 1..=2))
                .prop_map(|(a, rs)| E::Excl(Box::new(a), rs)),
        ]
    })
    .boxed()
}

fn relationships() -> impl Strategy<Value = Vec<String>> {
    let user = (0..USERS).prop_map(|u| format!("user:u{u}"));
    let user_or_star = prop_oneof![4 => user.clone(), 1 => Just("user:*".to_string())];
    let userset = (0..GROUPS).prop_map(|g| format!("group:g{g}#member"));
    let doc = 0..DOCS;
    let group = 0..GROUPS;
    // Doc-to-doc parent edges are weighted up: cycles through arrows are
    // where cycle tabling can go wrong.
    let one = prop_oneof![
        2 => (
            doc.clone(),
            prop_oneof![user_or_star.clone(), userset.clone()]
        )
            .prop_map(|(d, s)| format!("doc:d{d}#viewer@{s}")),
        2 => (doc.clone(), prop_oneof![user.clone(), userset.clone()])
            .prop_map(|(d, s)| format!("doc:d{d}#editor@{s}")),
        2 => (doc.clone(), user.clone()).prop_map(|(d, s)| format!("doc:d{d}#banned@{s}")),
        5 => (doc.clone(), doc.clone()).prop_map(|(d, p)| format!("doc:d{d}#parent@doc:d{p}")),
        2 => (doc.clone(), group.clone()).prop_map(|(d, g)| format!("doc:d{d}#parent@group:g{g}")),
        2 => (group.clone(), prop_oneof![user_or_star, userset])
            .prop_map(|(g, s)| format!("group:g{g}#member@{s}")),
        2 => (group, user).prop_map(|(g, s)| format!("group:g{g}#owner@{s}")),
    ];
    prop::collection::vec(one, 0..26)
}

fn case() -> impl Strategy<Value = Case> {
    const GREFS: [&str; 4] = ["member", "owner", "gp0", "gp1"];
    const DREFS: [&str; 6] = ["viewer", "editor", "banned", "p0", "p1", "p2"];
    (
        prop::collection::vec(expr(&GREFS, &GROUP_RELS, false), 2),
        prop::collection::vec(expr(&DREFS, &DOC_RELS, true), 3),
        relationships(),
    )
        .prop_map(|(group_perms, doc_perms, rels)| Case {
            group_perms,
            doc_perms,
            rels,
        })
}

fn schema_text(c: &Case) -> String {
    format!(
        "definition user {{}}\n\
         definition group {{\n  relation member: user | user:* | group#member\n  relation owner: user\n  permission gp0 = {}\n  permission gp1 = {}\n}}\n\
         definition doc {{\n  relation viewer: user | user:* | group#member\n  relation editor: user | group#member\n  relation banned: user\n  relation parent: doc | group\n  permission p0 = {}\n  permission p1 = {}\n  permission p2 = {}\n  permission p3 = parent->p3 + p0\n  permission p4 = parent.all(p3)\n}}\n",
        c.group_perms[0].text(),
        c.group_perms[1].text(),
        c.doc_perms[0].text(),
        c.doc_perms[1].text(),
        c.doc_perms[2].text(),
    )
}

// ---- The reference ----

type Key = (String, &'static str); // (object, member)
type Sets = BTreeMap<Key, BTreeSet<usize>>;

fn all_users() -> BTreeSet<usize> {
    (0..USERS).collect()
}

fn reference(c: &Case) -> Sets {
    let rels: Vec<Relationship> = c.rels.iter().map(|r| r.parse().unwrap()).collect();
    let objects: Vec<(String, &str)> = (0..DOCS)
        .map(|d| (format!("doc:d{d}"), "doc"))
        .chain((0..GROUPS).map(|g| (format!("group:g{g}"), "group")))
        .collect();
    let subjects_of = |obj: &str, rel: &str| -> Vec<&SubjectRef> {
        rels.iter()
            .filter(|r| r.resource.to_string() == obj && r.relation == rel)
            .map(|r| &r.subject)
            .collect()
    };
    let user_index = |s: &SubjectRef| s.object.object_id[1..].parse::<usize>().unwrap();

    // Stratum 1: relations.
    let mut sets: Sets = BTreeMap::new();
    loop {
        let mut next = sets.clone();
        for (obj, ty) in &objects {
            let rel_names: &[&'static str] = if *ty == "doc" {
                &["viewer", "editor", "banned", "parent"]
            } else {
                &["member", "owner"]
            };
            for rel in rel_names {
                let mut set = BTreeSet::new();
                for s in subjects_of(obj, rel) {
                    if s.object.object_type == "user" {
                        if s.is_wildcard() {
                            set.extend(all_users());
                        } else {
                            set.insert(user_index(s));
                        }
                    } else if let Some(r) = &s.relation {
                        let key = (
                            s.object.to_string(),
                            if r == "member" { "member" } else { "owner" },
                        );
                        set.extend(sets.get(&key).cloned().unwrap_or_default());
                    }
                }
                next.insert((obj.clone(), rel), set);
            }
        }
        if next == sets {
            break;
        }
        sets = next;
    }

    // Stratum 2: permissions, from empty upwards.
    let perm_names = |ty: &str| -> Vec<&'static str> {
        if ty == "doc" {
            vec!["p0", "p1", "p2", "p3", "p4"]
        } else {
            vec!["gp0", "gp1"]
        }
    };
    // p3 = parent->p3 + p0 (arrow first: recursion that is cut and later
    // revisited), p4 = parent.all(p3): fixed shapes that stress cycle tabling.
    let mut doc_exprs = c.doc_perms.clone();
    doc_exprs.push(E::Union(
        Box::new(E::Arrow("p3", false)),
        Box::new(E::Ref("p0")),
    ));
    doc_exprs.push(E::Arrow("p3", true));
    loop {
        let mut next = sets.clone();
        for (obj, ty) in &objects {
            for (i, p) in perm_names(ty).into_iter().enumerate() {
                let e = if *ty == "doc" {
                    &doc_exprs[i]
                } else {
                    &c.group_perms[i]
                };
                next.insert((obj.clone(), p), eval(e, obj, &sets, &subjects_of));
            }
        }
        if next == sets {
            break;
        }
        sets = next;
    }
    sets
}

fn has_member(obj: &str, member: &str) -> bool {
    let doc = [
        "viewer", "editor", "banned", "parent", "p0", "p1", "p2", "p3", "p4",
    ];
    let group = ["member", "owner", "gp0", "gp1"];
    if obj.starts_with("doc:") {
        doc.contains(&member)
    } else {
        group.contains(&member)
    }
}

fn eval<'a>(
    e: &E,
    obj: &str,
    sets: &Sets,
    subjects_of: &dyn Fn(&str, &str) -> Vec<&'a SubjectRef>,
) -> BTreeSet<usize> {
    let get = |o: &str, m: &'static str| sets.get(&(o.to_string(), m)).cloned().unwrap_or_default();
    match e {
        E::Nil => BTreeSet::new(),
        E::Ref(n) => get(obj, n),
        E::Arrow(t, all) => {
            let targets: BTreeSet<String> = subjects_of(obj, "parent")
                .iter()
                .map(|s| s.object.to_string())
                .collect();
            let per: Vec<BTreeSet<usize>> = targets
                .iter()
                .map(|o| {
                    if has_member(o, t) {
                        get(o, t)
                    } else {
                        BTreeSet::new()
                    }
                })
                .collect();
            if *all {
                let mut it = per.into_iter();
                match it.next() {
                    None => BTreeSet::new(),
                    Some(first) => it.fold(first, |acc, s| acc.intersection(&s).cloned().collect()),
                }
            } else {
                per.into_iter().flatten().collect()
            }
        }
        E::Union(a, b) => {
            let mut s = eval(a, obj, sets, subjects_of);
            s.extend(eval(b, obj, sets, subjects_of));
            s
        }
        E::Inter(a, b) => {
            let x = eval(a, obj, sets, subjects_of);
            let y = eval(b, obj, sets, subjects_of);
            x.intersection(&y).cloned().collect()
        }
        E::Excl(a, rs) => {
            let mut s = eval(a, obj, sets, subjects_of);
            for r in rs {
                for u in get(obj, r) {
                    s.remove(&u);
                }
            }
            s
        }
    }
}

fn run_case(c: &Case) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let engine = kinbar::in_memory();
        let schema = schema_text(c);
        engine
            .write_schema(&schema, TxnMetadata::default())
            .await
            .map_err(|e| TestCaseError::fail(format!("schema rejected: {e}\n{schema}")))?;
        let mut rels: Vec<Relationship> = c.rels.iter().map(|r| r.parse().unwrap()).collect();
        rels.sort();
        rels.dedup();
        let updates = rels
            .into_iter()
            .map(|relationship| Update {
                operation: Operation::Touch,
                relationship,
            })
            .collect();
        engine
            .write_relationships(updates, vec![], TxnMetadata::default())
            .await
            .unwrap();
        let expected = reference(c);
        let at = engine.head_revision().await.unwrap();
        // Check ⇔ LookupSubjects ⇔ LookupResources (DESIGN.md §4).
        for ((obj, member), set) in &expected {
            if *member == "parent" {
                continue;
            }
            let resource: ObjectRef = obj.parse().unwrap();
            let page = engine
                .lookup_subjects_at(
                    at.clone(),
                    &resource,
                    member,
                    "user",
                    None,
                    None,
                    usize::MAX,
                )
                .await
                .map_err(|e| TestCaseError::fail(format!("lookup_subjects error: {e}")))?;
            for u in 0..USERS {
                let id = format!("u{u}");
                let via_wildcard = page.wildcard.as_ref().is_some_and(|ex| !ex.contains(&id));
                let listed = page.subject_ids.contains(&id);
                prop_assert_eq!(
                    listed || via_wildcard,
                    set.contains(&u),
                    "lookup_subjects {}#{} user:u{}",
                    obj,
                    member,
                    u
                );
            }
            let mut sorted = page.subject_ids.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(&sorted, &page.subject_ids, "sorted, no duplicates");
        }
        for member in ["p0", "p1", "p2", "p3", "p4", "viewer"] {
            for u in 0..USERS {
                let subject: SubjectRef = format!("user:u{u}").parse().unwrap();
                let got = engine
                    .lookup_resources_at(at.clone(), "doc", member, &subject, None, usize::MAX)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("lookup_resources error: {e}")))?;
                let want: Vec<String> = (0..DOCS)
                    .filter(|d| {
                        expected
                            .get(&(format!("doc:d{d}"), member))
                            .is_some_and(|s| s.contains(&u))
                    })
                    .map(|d| format!("d{d}"))
                    .collect();
                prop_assert_eq!(&got, &want, "lookup_resources doc#{} user:u{}", member, u);
                // Pages of any size concatenate to the whole answer, also
                // while writes commit later revisions between the pages
                // (one stored relationship removed and restored in turn).
                let size = 1 + (u + member.len()) % 3;
                let mut paged: Vec<String> = Vec::new();
                let toggled: Option<Relationship> = c.rels.first().map(|r| r.parse().unwrap());
                let mut pages = 0usize;
                loop {
                    if let Some(rel) = &toggled {
                        pages += 1;
                        let operation = if pages % 2 == 1 {
                            Operation::Delete
                        } else {
                            Operation::Touch
                        };
                        engine
                            .write_relationships(
                                vec![Update {
                                    operation,
                                    relationship: rel.clone(),
                                }],
                                vec![],
                                TxnMetadata::default(),
                            )
                            .await
                            .unwrap();
                    }
                    let page = engine
                        .lookup_resources_at(
                            at.clone(),
                            "doc",
                            member,
                            &subject,
                            paged.last().map(String::as_str),
                            size,
                        )
                        .await
                        .map_err(|e| TestCaseError::fail(format!("lookup_resources error: {e}")))?;
                    let done = page.len() < size;
                    paged.extend(page);
                    if done {
                        break;
                    }
                }
                if let Some(rel) = toggled {
                    engine
                        .write_relationships(
                            vec![Update {
                                operation: Operation::Touch,
                                relationship: rel,
                            }],
                            vec![],
                            TxnMetadata::default(),
                        )
                        .await
                        .unwrap();
                }
                prop_assert_eq!(
                    &paged,
                    &want,
                    "paged by {} (writes in between): doc#{} user:u{}",
                    size,
                    member,
                    u
                );
            }
        }
        // Userset subjects (groups, and docs' own usersets: a userset is a
        // member of itself): LookupResources ⇔ Check.
        let mut usersets: Vec<SubjectRef> = (0..GROUPS)
            .map(|g| format!("group:g{g}#member").parse().unwrap())
            .collect();
        usersets.push("doc:d0#p0".parse().unwrap());
        usersets.push("doc:d9#viewer".parse().unwrap());
        for member in ["p0", "p1", "viewer"] {
            for subject in &usersets {
                let got = engine
                    .lookup_resources_at(at.clone(), "doc", member, subject, None, usize::MAX)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("lookup_resources error: {e}")))?;
                let mut want = Vec::new();
                for d in (0..DOCS).chain([9]) {
                    let resource = ObjectRef::new("doc", format!("d{d}"));
                    let allowed = engine
                        .check_at(at.clone(), &resource, member, subject)
                        .await
                        .map_err(|e| TestCaseError::fail(format!("check error: {e}")))?;
                    if allowed.is_allowed() {
                        want.push(format!("d{d}"));
                    }
                }
                prop_assert_eq!(got, want, "lookup_resources doc#{} {}", member, subject);
            }
        }
        // CheckBulk (shared evaluation per subject, duplicates once) gives
        // exactly the single checks' answers, in order.
        let mut items = Vec::new();
        let mut want = Vec::new();
        for u in (0..USERS).rev() {
            for ((obj, member), set) in &expected {
                if *member == "parent" {
                    continue;
                }
                let resource: ObjectRef = obj.parse().unwrap();
                let subject: SubjectRef = format!("user:u{u}").parse().unwrap();
                items.push((resource, member.to_string(), subject));
                want.push(set.contains(&u));
            }
        }
        let dup = items.first().cloned();
        if let Some(d) = dup {
            want.push(want[0]);
            items.push(d);
        }
        let got = engine.check_bulk_at(at.clone(), &items).await;
        for ((item, got), want) in items.iter().zip(got).zip(want) {
            let got = got.map_err(|e| TestCaseError::fail(format!("bulk check error: {e}")))?;
            prop_assert_eq!(
                got.is_allowed(),
                want,
                "bulk {}#{}@{}\nschema:\n{}\nrelationships:\n{}",
                item.0,
                item.1,
                item.2,
                schema,
                c.rels.join("\n")
            );
        }
        for ((obj, member), set) in &expected {
            if *member == "parent" {
                continue;
            }
            let resource: ObjectRef = obj.parse().unwrap();
            for u in 0..USERS {
                let subject: SubjectRef = format!("user:u{u}").parse().unwrap();
                let got = engine
                    .check(&resource, member, &subject)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("check error: {e}")))?;
                prop_assert_eq!(
                    got.is_allowed(),
                    set.contains(&u),
                    "{}#{}@user:u{} disagrees with the reference\nschema:\n{}\nrelationships:\n{}",
                    obj,
                    member,
                    u,
                    schema,
                    c.rels.join("\n")
                );
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn engine_agrees_with_naive_reference(c in case()) {
        run_case(&c)?;
    }
}
