//! SpiceDB validation files (DESIGN.md §5) and the `kinbar validate` runner.
//!
//! A file has a `schema` (or `schemaFile`), `relationships` (one per line),
//! `assertions` (`assertTrue` / `assertFalse` / `assertCaveated`) and
//! `validation` (expected subjects per `resource#permission`). Each file is
//! loaded into a fresh in-memory engine and every assertion is checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use crate::engine::{Decision, Engine, EngineConfig, ExpandKind, ExpandTree};
use crate::model::{ObjectRef, Relationship, Revision, SubjectRef};
use crate::model::{Operation, TxnMetadata, Update};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ValidationFile {
    schema: Option<String>,
    schema_file: Option<String>,
    relationships: Option<String>,
    assertions: Option<Assertions>,
    validation: Option<BTreeMap<String, Option<Vec<String>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Assertions {
    assert_true: Option<Vec<String>>,
    assert_false: Option<Vec<String>>,
    assert_caveated: Option<Vec<String>>,
}

/// One failed assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub line: usize,
    pub message: String,
}

/// The outcome for one file.
#[derive(Debug, Clone, Default)]
pub struct FileReport {
    pub path: String,
    pub passed: usize,
    pub failures: Vec<Failure>,
    /// The file could not be read, parsed or loaded (exit status 2).
    pub error: Option<String>,
}

impl FileReport {
    /// Human-readable lines for this file.
    pub fn render(&self) -> String {
        if let Some(e) = &self.error {
            return format!("ERROR  {}\n{}\n", self.path, indent(e));
        }
        if self.failures.is_empty() {
            return format!("ok  {}  ({} assertions)\n", self.path, self.passed);
        }
        let mut out = format!(
            "FAIL  {}  ({} passed, {} failed)\n",
            self.path,
            self.passed,
            self.failures.len()
        );
        for f in &self.failures {
            out.push_str(&format!("  {}:{}: {}\n", self.path, f.line, f.message));
        }
        out
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Options of `kinbar validate`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Also check Check ⇔ Expand consistency over every object in the file.
    pub exhaustive: bool,
}

/// Validates one file on a fresh embedded memory store.
pub async fn validate_file(path: &Path, options: &Options) -> FileReport {
    validate_file_in(
        path,
        options,
        std::sync::Arc::new(crate::store::memory::MemoryStore::default()),
    )
    .await
}

/// Validates one file, loading it into `store` (which must be empty).
pub async fn validate_file_in(
    path: &Path,
    options: &Options,
    store: std::sync::Arc<dyn crate::store::Datastore>,
) -> FileReport {
    let display = path.display().to_string();
    let mut report = FileReport {
        path: display.clone(),
        ..Default::default()
    };
    let raw = match std::fs::read_to_string(path) {
        Ok(r) => r,
        Err(e) => {
            report.error = Some(format!("cannot read {display}: {e}"));
            return report;
        }
    };
    if let Err(e) = run(path, &raw, options, store, &mut report).await {
        report.error = Some(e);
    }
    report
}

/// Validates file contents already in memory (`path` is used for messages
/// and to resolve `schemaFile`).
pub async fn validate_text(path: &Path, raw: &str, options: &Options) -> FileReport {
    let mut report = FileReport {
        path: path.display().to_string(),
        ..Default::default()
    };
    let store = std::sync::Arc::new(crate::store::memory::MemoryStore::default());
    if let Err(e) = run(path, raw, options, store, &mut report).await {
        report.error = Some(e);
    }
    report
}

async fn run(
    path: &Path,
    raw: &str,
    options: &Options,
    store: std::sync::Arc<dyn crate::store::Datastore>,
    report: &mut FileReport,
) -> Result<(), String> {
    let display = path.display().to_string();
    let file: ValidationFile = serde_norway::from_str(raw)
        .map_err(|e| format!("{display}: not a valid validation file: {e}"))?;
    let schema_text = match (&file.schema, &file.schema_file) {
        (Some(s), _) => s.clone(),
        (None, Some(f)) => {
            let p = path.parent().unwrap_or(Path::new(".")).join(f);
            std::fs::read_to_string(&p)
                .map_err(|e| format!("{display}: cannot read schemaFile {}: {e}", p.display()))?
        }
        (None, None) => return Err(format!("{display}: no `schema` or `schemaFile`")),
    };
    let schema_line = line_of(raw, "schema", 0).unwrap_or(1);
    let engine = Engine::new(
        store,
        EngineConfig {
            max_updates_per_write: usize::MAX,
            ..Default::default()
        },
    );
    if let Err(e) = engine
        .write_schema(&schema_text, TxnMetadata::default())
        .await
    {
        return Err(match e {
            crate::Error::Schema(se) => se.render(&format!("{display}:{schema_line} (schema)")),
            other => format!("{display}: {other}"),
        });
    }

    // Relationships.
    let rel_line = line_of(raw, "relationships", 0).unwrap_or(1);
    let mut updates = Vec::new();
    let mut objects: BTreeSet<ObjectRef> = BTreeSet::new();
    let mut subjects: BTreeSet<SubjectRef> = BTreeSet::new();
    for text in relationship_lines(file.relationships.as_deref().unwrap_or("")) {
        let line = line_of(raw, &text, rel_line).unwrap_or(rel_line);
        let rel = Relationship::parse(&text).map_err(|e| format!("{display}:{line}: {e}"))?;
        objects.insert(rel.resource.clone());
        if !rel.subject.is_wildcard() {
            objects.insert(rel.subject.object.clone());
        }
        subjects.insert(rel.subject.clone());
        updates.push(Update {
            operation: Operation::Touch,
            relationship: rel,
        });
    }
    updates.sort_by(|a, b| a.relationship.cmp(&b.relationship));
    updates.dedup_by(|a, b| a.relationship == b.relationship);
    if !updates.is_empty() {
        engine
            .write_relationships(updates, vec![], TxnMetadata::default())
            .await
            .map_err(|e| format!("{display}: {e}"))?;
    }
    let at = engine.head_revision().await.map_err(|e| e.to_string())?;

    // Assertions.
    let assert_line = line_of(raw, "assertions", 0).unwrap_or(1);
    let assertions = file.assertions.unwrap_or_default();
    if let Some(c) = assertions
        .assert_caveated
        .as_ref()
        .filter(|c| !c.is_empty())
    {
        let line = line_of(raw, &c[0], assert_line).unwrap_or(assert_line);
        return Err(format!(
            "{display}:{line}: assertCaveated: caveats are not supported yet"
        ));
    }
    for (list, expect, key) in [
        (
            assertions.assert_true.unwrap_or_default(),
            true,
            "assertTrue",
        ),
        (
            assertions.assert_false.unwrap_or_default(),
            false,
            "assertFalse",
        ),
    ] {
        // Items are found in order after their list's key, so repeated
        // assertion texts get their own lines.
        let mut from = line_of(raw, key, assert_line).unwrap_or(assert_line);
        for text in list {
            let line = line_of(raw, &text, from).unwrap_or(from);
            from = line + 1;
            if text.contains(" with ") || text.contains('[') {
                return Err(format!(
                    "{display}:{line}: assertion `{text}` has caveat context: caveats are not supported yet"
                ));
            }
            let rel = Relationship::parse(&text)
                .map_err(|e| format!("{display}:{line}: bad assertion: {e}"))?;
            let kind = if expect { "assertTrue" } else { "assertFalse" };
            match engine
                .check_at(at.clone(), &rel.resource, &rel.relation, &rel.subject)
                .await
            {
                Ok(d) if d.is_allowed() == expect => report.passed += 1,
                Ok(d) => report.failures.push(Failure {
                    line,
                    message: format!("{kind} {text} failed: the check returned {d:?}"),
                }),
                Err(e) => report.failures.push(Failure {
                    line,
                    message: format!("{kind} {text}: check error: {e}"),
                }),
            }
        }
    }

    // Expected relations.
    let validation_line = line_of(raw, "validation", 0).unwrap_or(1);
    for (key, expected) in file.validation.unwrap_or_default() {
        let line = line_of(raw, &key, validation_line).unwrap_or(validation_line);
        let (resource_text, member) = key.split_once('#').ok_or_else(|| {
            format!("{display}:{line}: expected `resource#permission`, found `{key}`")
        })?;
        let resource =
            ObjectRef::parse(resource_text).map_err(|e| format!("{display}:{line}: {e}"))?;
        let mut want = BTreeSet::new();
        for entry in expected.unwrap_or_default() {
            want.insert(expected_subject(&entry).map_err(|e| format!("{display}:{line}: {e}"))?);
        }
        match subject_set(&engine, at.clone(), &resource, member, &subjects).await {
            Ok(got) if covered(&got, &want) == want => report.passed += 1,
            Ok(got) => {
                let got = covered(&got, &want);
                let missing: Vec<_> = want.difference(&got).cloned().collect();
                let extra: Vec<_> = got.difference(&want).cloned().collect();
                report.failures.push(Failure {
                    line,
                    message: format!(
                        "expected relations for {key} differ: missing [{}], unexpected [{}]",
                        missing.join(", "),
                        extra.join(", ")
                    ),
                });
            }
            Err(e) => report.failures.push(Failure {
                line,
                message: format!("expected relations for {key}: {e}"),
            }),
        }
    }

    if options.exhaustive {
        exhaustive(&engine, at.clone(), &objects, &subjects, report).await;
    }
    Ok(())
}

/// Relationship lines of the `relationships` block (blank lines and `//`
/// comments skipped; folded YAML may join several on one line).
fn relationship_lines(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in block.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        if line.contains('[') {
            out.push(line.to_string());
        } else {
            out.extend(line.split_whitespace().map(str::to_string));
        }
    }
    out
}

/// 1-based line of the first occurrence of `needle` at or after line `from`.
fn line_of(raw: &str, needle: &str, from: usize) -> Option<usize> {
    raw.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
}

/// `[user:tom] is <document:1#viewer>` → `user:tom`; wildcard exclusions
/// (`[user:* - {user:a}]`) compare by their base.
fn expected_subject(entry: &str) -> Result<String, String> {
    let start = entry
        .find('[')
        .ok_or_else(|| format!("expected `[subject] is <...>`, found `{entry}`"))?;
    let end = entry[start..]
        .find(']')
        .ok_or_else(|| format!("unclosed `[` in `{entry}`"))?;
    let inner = entry[start + 1..start + end].trim();
    let base = inner.split(" - ").next().unwrap_or(inner).trim();
    if base.contains('[') || base.contains(" with ") {
        return Err(format!("caveats are not supported yet (`{entry}`)"));
    }
    let s = SubjectRef::parse(base).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// `got` without the concrete subjects that a wildcard in both sets already
/// covers (a file may list them or not).
fn covered(got: &BTreeSet<String>, want: &BTreeSet<String>) -> BTreeSet<String> {
    got.iter()
        .filter(|s| {
            want.contains(*s)
                || !s.split_once(':').is_some_and(|(t, _)| {
                    let wildcard = format!("{t}:*");
                    want.contains(&wildcard) && got.contains(&wildcard)
                })
        })
        .cloned()
        .collect()
}

/// Every subject in the file (and each subject type's wildcard, probed with
/// an id that appears nowhere) that has `resource#member`.
async fn subject_set(
    engine: &Engine,
    at: Revision,
    resource: &ObjectRef,
    member: &str,
    subjects: &BTreeSet<SubjectRef>,
) -> Result<BTreeSet<String>, crate::Error> {
    let mut out = BTreeSet::new();
    let mut types = BTreeSet::new();
    for s in subjects {
        types.insert(s.object.object_type.clone());
        if s.is_wildcard() {
            continue;
        }
        if engine
            .check_at(at.clone(), resource, member, s)
            .await?
            .is_allowed()
        {
            out.insert(s.to_string());
        }
    }
    for t in types {
        let probe = SubjectRef::object(ObjectRef::new(t.clone(), "kinbar--wildcard--probe"));
        if engine
            .check_at(at.clone(), resource, member, &probe)
            .await?
            .is_allowed()
        {
            out.insert(format!("{t}:*"));
        }
    }
    Ok(out)
}

/// Check ⇔ Expand ⇔ LookupSubjects ⇔ LookupResources over every object,
/// member and object subject of the file.
async fn exhaustive(
    engine: &Engine,
    at: Revision,
    objects: &BTreeSet<ObjectRef>,
    subjects: &BTreeSet<SubjectRef>,
    report: &mut FileReport,
) {
    let Ok(schema) = engine.schema_at(at.clone()).await else {
        return;
    };
    let mut candidates: Vec<SubjectRef> = subjects
        .iter()
        .filter(|s| s.relation.is_none() && !s.is_wildcard())
        .cloned()
        .collect();
    // A subject of each type that appears nowhere: granted only by wildcards.
    let types: BTreeSet<String> = subjects
        .iter()
        .map(|s| s.object.object_type.clone())
        .collect();
    for t in types {
        candidates.push(SubjectRef::object(ObjectRef::new(
            t,
            "kinbar--unseen--subject",
        )));
    }
    // Userset subjects: those of the file, and for every type and member
    // one with an id that appears nowhere (a userset is a member of itself,
    // so `LookupResources(T, M, T:unseen#M)` must name `unseen`).
    let mut usersets: Vec<SubjectRef> = subjects
        .iter()
        .filter(|s| s.relation.is_some())
        .cloned()
        .collect();
    for (t, def) in &schema.definitions {
        for m in def.relations.keys().chain(def.permissions.keys()) {
            usersets.push(SubjectRef {
                object: ObjectRef::new(t.clone(), "kinbar--unseen--subject"),
                relation: Some(m.clone()),
            });
        }
    }
    let mut looked_up: BTreeMap<(String, String, SubjectRef), Vec<String>> = BTreeMap::new();
    let mut pairs: Vec<(ObjectRef, String)> = Vec::new();
    for object in objects {
        if let Some(def) = schema.definition(&object.object_type) {
            for m in def.relations.keys().chain(def.permissions.keys()) {
                pairs.push((object.clone(), m.clone()));
            }
        }
    }
    for (t, def) in &schema.definitions {
        for m in def.relations.keys().chain(def.permissions.keys()) {
            pairs.push((
                ObjectRef::new(t.clone(), "kinbar--unseen--subject"),
                m.clone(),
            ));
        }
    }
    for (object, member) in &pairs {
        for s in &usersets {
            let check = engine.check_at(at.clone(), object, member, s).await;
            let key = (object.object_type.clone(), member.clone(), s.clone());
            if !looked_up.contains_key(&key) {
                match every_resource(engine, &at, &object.object_type, member, s).await {
                    Ok(ids) => {
                        looked_up.insert(key.clone(), ids);
                    }
                    Err(e) => report.failures.push(Failure {
                        line: 0,
                        message: format!(
                            "lookup resources {}#{member} for {s}: {e}",
                            object.object_type
                        ),
                    }),
                }
            }
            match (check, looked_up.get(&key)) {
                (Ok(d), Some(ids)) if ids.contains(&object.object_id) == d.is_allowed() => {
                    report.passed += 1
                }
                (Ok(d), Some(ids)) => report.failures.push(Failure {
                    line: 0,
                    message: format!(
                        "inconsistent: check {object}#{member}@{s} = {d:?} but LookupResources gave {ids:?}"
                    ),
                }),
                (Err(e), _) => report.failures.push(Failure {
                    line: 0,
                    message: format!("check {object}#{member}@{s}: {e}"),
                }),
                (Ok(_), None) => {}
            }
        }
    }
    let leaf_checks = LeafChecks::default();
    for object in objects {
        let Some(def) = schema.definition(&object.object_type) else {
            continue;
        };
        let members = def.relations.keys().chain(def.permissions.keys());
        for member in members {
            let tree = match engine.expand_at(at.clone(), object, member).await {
                Ok(t) => t,
                Err(e) => {
                    report.failures.push(Failure {
                        line: 0,
                        message: format!("expand {object}#{member}: {e}"),
                    });
                    continue;
                }
            };
            let types: BTreeSet<&str> = candidates
                .iter()
                .map(|s| s.object.object_type.as_str())
                .collect();
            let mut via_lookup: BTreeMap<&str, crate::engine::SubjectsPage> = BTreeMap::new();
            for t in types {
                match engine
                    .lookup_subjects_at(at.clone(), object, member, t, None, None, usize::MAX)
                    .await
                {
                    Ok(page) => {
                        via_lookup.insert(t, page);
                    }
                    Err(e) => report.failures.push(Failure {
                        line: 0,
                        message: format!("lookup subjects {object}#{member} of type {t}: {e}"),
                    }),
                }
            }
            for s in &candidates {
                let check = engine.check_at(at.clone(), object, member, s).await;
                if let (Ok(d), Some(page)) = (&check, via_lookup.get(s.object.object_type.as_str()))
                {
                    let id = &s.object.object_id;
                    let listed = page.subject_ids.contains(id)
                        || page.wildcard.as_ref().is_some_and(|ex| !ex.contains(id));
                    if listed != d.is_allowed() {
                        report.failures.push(Failure {
                            line: 0,
                            message: format!("inconsistent: check {object}#{member}@{s} = {d:?} but LookupSubjects says {listed}"),
                        });
                    }
                    let resources =
                        every_resource(engine, &at, &object.object_type, member, s).await;
                    match resources {
                        Ok(ids) if ids.contains(&object.object_id) == d.is_allowed() => {}
                        other => report.failures.push(Failure {
                            line: 0,
                            message: format!("inconsistent: check {object}#{member}@{s} = {d:?} but LookupResources gave {other:?}"),
                        }),
                    }
                }
                let via_tree = tree_contains(engine, at.clone(), &tree, s, &leaf_checks).await;
                match (check, via_tree) {
                    (Ok(a), Ok(b)) if a == b => report.passed += 1,
                    (a, b) => report.failures.push(Failure {
                        line: 0,
                        message: format!(
                            "inconsistent: check {object}#{member}@{s} = {a:?} but expand says {b:?}"
                        ),
                    }),
                }
            }
        }
    }
}

/// LookupResources, all pages at once.
async fn every_resource(
    engine: &Engine,
    at: &Revision,
    object_type: &str,
    member: &str,
    subject: &SubjectRef,
) -> Result<Vec<String>, crate::Error> {
    engine
        .lookup_resources_at(at.clone(), object_type, member, subject, None, usize::MAX)
        .await
}

/// Check answers for expand-tree leaves, shared by one file's exhaustive run.
type LeafChecks =
    std::sync::Mutex<std::collections::HashMap<(ObjectRef, String, SubjectRef), Decision>>;

/// Whether `subject` is in the set an expand tree describes (leaf usersets
/// resolved with Check).
fn tree_contains<'a>(
    engine: &'a Engine,
    at: Revision,
    tree: &'a ExpandTree,
    subject: &'a SubjectRef,
    leaf_checks: &'a LeafChecks,
) -> futures::future::BoxFuture<'a, Result<Decision, crate::Error>> {
    Box::pin(async move {
        match &tree.kind {
            ExpandKind::Leaf(subjects) => {
                for s in subjects {
                    if s == subject
                        || (s.is_wildcard() && s.object.object_type == subject.object.object_type)
                    {
                        return Ok(Decision::Allowed);
                    }
                    if let Some(r) = &s.relation {
                        // Large trees repeat leaves: each is checked once.
                        let key = (s.object.clone(), r.clone(), subject.clone());
                        let known = leaf_checks.lock().ok().and_then(|m| m.get(&key).copied());
                        let d = match known {
                            Some(d) => d,
                            None => {
                                let d = engine.check_at(at.clone(), &s.object, r, subject).await?;
                                if let Ok(mut m) = leaf_checks.lock() {
                                    m.insert(key, d);
                                }
                                d
                            }
                        };
                        if d.is_allowed() {
                            return Ok(Decision::Allowed);
                        }
                    }
                }
                Ok(Decision::Denied)
            }
            ExpandKind::Union(children) => {
                for c in children {
                    if tree_contains(engine, at.clone(), c, subject, leaf_checks)
                        .await?
                        .is_allowed()
                    {
                        return Ok(Decision::Allowed);
                    }
                }
                Ok(Decision::Denied)
            }
            ExpandKind::Intersection(children) => {
                if children.is_empty() {
                    return Ok(Decision::Denied);
                }
                for c in children {
                    if !tree_contains(engine, at.clone(), c, subject, leaf_checks)
                        .await?
                        .is_allowed()
                    {
                        return Ok(Decision::Denied);
                    }
                }
                Ok(Decision::Allowed)
            }
            ExpandKind::Exclusion(children) => {
                let mut it = children.iter();
                let Some(first) = it.next() else {
                    return Ok(Decision::Denied);
                };
                if !tree_contains(engine, at.clone(), first, subject, leaf_checks)
                    .await?
                    .is_allowed()
                {
                    return Ok(Decision::Denied);
                }
                for c in it {
                    if tree_contains(engine, at.clone(), c, subject, leaf_checks)
                        .await?
                        .is_allowed()
                    {
                        return Ok(Decision::Denied);
                    }
                }
                Ok(Decision::Allowed)
            }
        }
    })
}

/// Runs `kinbar validate` over files; returns the rendered output and the
/// exit status (0 all passed, 1 an assertion failed, 2 a file error).
pub async fn run_files(paths: &[std::path::PathBuf], options: &Options) -> (String, i32) {
    let mut out = String::new();
    let (mut passed, mut failed, mut errors) = (0, 0, 0);
    for p in paths {
        let r = validate_file(p, options).await;
        out.push_str(&r.render());
        passed += r.passed;
        failed += r.failures.len();
        errors += usize::from(r.error.is_some());
    }
    out.push_str(&format!("{passed} passed, {failed} failed\n"));
    let code = if errors > 0 {
        2
    } else if failed > 0 {
        1
    } else {
        0
    };
    (out, code)
}
