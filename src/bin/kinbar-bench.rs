//! In-process benchmark on a dataset directory, the format any embedded
//! Zanzibar engine can be run on (`benches/data/README.md`): `schema.zed`,
//! `relationships.txt` (one relationship per line) and `checks.txt`
//! (`resource permission subject true|false`).
//!
//! `kinbar-bench run DIR [--checks N] [--lookups N] [--cache-capacity N] [--by-writes N] [--passes N] [--compare]`
//! (`--by-writes 1000`: load by WriteRelationships of 1,000, not one import)
//! loads the relationships into the memory store by one bulk import,
//! reports the load time and resident bytes per relationship, runs the
//! checks on one thread (checks/s, p50, p99, wrong answers), then
//! LookupResources for users and LookupSubjects for customers (time per
//! query, results, each lookup cross-checked against Check for a sample).
//!
//! `kinbar-bench generate DIR --customers N` writes a CRM dataset of the
//! same shape at any size (orgs → departments → teams → users, nested teams,
//! customers with owners, reps, support and a `signed` wildcard); its
//! `checks.txt` answers come from Kinbar itself (for speed comparisons; the
//! vendored `crm-small` answers were computed independently).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark tool: failing loudly is right

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kinbar::{Engine, ObjectRef, Relationship, SubjectRef, TxnMetadata};

const CRM_SCHEMA: &str = include_str!("../../benches/data/crm-small/schema.zed");

fn usage() -> ! {
    eprintln!(
        "usage: kinbar-bench run DIR [--checks N] [--lookups N] [--cache-capacity N] [--by-writes N] [--passes N] [--compare]\n       kinbar-bench generate DIR --customers N\n       kinbar-bench scale - [--customers N]   (lookup time as the answer grows)"
    );
    std::process::exit(2)
}

fn resident_bytes() -> u64 {
    status_bytes("VmRSS:")
}

/// A `/proc/self/status` figure in bytes (0 where there is none).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Measures the peak resident memory `f` adds: the peak (VmHWM) is reset
/// to the current resident size (Linux `clear_refs` 5) before, read after.
/// The benchmark runs on one thread, so the peak is the lookup's own.
async fn peak_extra<T>(f: impl std::future::Future<Output = T>) -> (T, u64) {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = resident_bytes();
    let out = f.await;
    (out, status_bytes("VmHWM:").saturating_sub(before))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Clone)]
struct Check {
    resource: ObjectRef,
    permission: String,
    subject: SubjectRef,
    expected: bool,
}

fn read_checks(dir: &Path) -> Vec<Check> {
    let text = std::fs::read_to_string(dir.join("checks.txt")).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 4, "checks.txt line `{l}`");
            Check {
                resource: f[0].parse().expect("resource"),
                permission: f[1].to_string(),
                subject: f[2].parse().expect("subject"),
                expected: f[3] == "true",
            }
        })
        .collect()
}

fn main() {
    let mut it = std::env::args().skip(1);
    let command = it.next().unwrap_or_else(|| usage());
    let dir = PathBuf::from(it.next().unwrap_or_else(|| usage()));
    let mut checks = 50_000usize;
    let mut lookups = 20usize;
    let mut customers = 0usize;
    let mut cache: Option<u64> = None;
    let mut by_writes = 0usize;
    let mut passes = 1usize;
    let mut compare = false;
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| usage())
        };
        if flag == "--compare" {
            compare = true;
            continue;
        }
        match flag.as_str() {
            "--checks" => checks = value() as usize,
            "--lookups" => lookups = value() as usize,
            "--customers" => customers = value() as usize,
            "--cache-capacity" => cache = Some(value()),
            "--by-writes" => by_writes = value() as usize,
            "--passes" => passes = value().max(1) as usize,
            _ => usage(),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match command.as_str() {
        "run" => rt.block_on(run(
            &dir,
            checks * passes,
            lookups,
            cache,
            by_writes,
            compare,
        )),
        "generate" if customers > 0 => rt.block_on(generate(&dir, customers)),
        "scale" => rt.block_on(scale(if customers > 0 { customers } else { 100_000 })),
        _ => usage(),
    }
}

/// Loads a dataset into a fresh memory store: one bulk import, or with
/// `by_writes > 0` WriteRelationships transactions of that many (the way
/// clients load, one revision each). Returns the engine, the number of
/// relationships, the load time and the resident growth.
async fn load(dir: &Path, cache: Option<u64>, by_writes: usize) -> (Engine, usize, Duration, u64) {
    let schema = std::fs::read_to_string(dir.join("schema.zed")).expect("schema.zed");
    let text = std::fs::read_to_string(dir.join("relationships.txt")).expect("relationships.txt");
    let before = resident_bytes();
    let started = Instant::now();
    let mut config = kinbar::engine::EngineConfig::default();
    if let Some(c) = cache {
        config.cache_capacity = c;
    }
    let engine = Engine::new(
        std::sync::Arc::new(kinbar::store::memory::MemoryStore::default()),
        config,
    );
    engine
        .write_schema(&schema, TxnMetadata::default())
        .await
        .expect("schema");
    let rels: Vec<Relationship> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.parse().expect("relationship"))
        .collect();
    let n = rels.len();
    eprintln!(
        "kinbar-bench: parsed {n} relationships in {:.2} s (part of the load time)",
        started.elapsed().as_secs_f64()
    );
    if by_writes > 0 {
        let mut rels = rels.into_iter().peekable();
        while rels.peek().is_some() {
            let updates: Vec<kinbar::Update> = rels
                .by_ref()
                .take(by_writes)
                .map(|relationship| kinbar::Update {
                    operation: kinbar::Operation::Touch,
                    relationship,
                })
                .collect();
            engine
                .write_relationships(updates, vec![], TxnMetadata::default())
                .await
                .expect("write");
        }
    } else {
        engine
            .import_relationships(rels, TxnMetadata::default())
            .await
            .expect("import");
    }
    let took = started.elapsed();
    let grown = resident_bytes().saturating_sub(before);
    (engine, n, took, grown)
}

/// One row of the checks table: `checks` on `engine` at `at`, timed per
/// pass of `once` checks, after a warm-up of 1,000.
async fn measure(
    engine: &Engine,
    label: &str,
    at: &kinbar::Revision,
    checks: &[Check],
    once: usize,
) -> usize {
    // Warm-up pass, then the measured pass.
    for c in checks.iter().take(1_000) {
        let _ = engine
            .check_at(at.clone(), &c.resource, &c.permission, &c.subject)
            .await;
    }
    let mut times = Vec::with_capacity(checks.len());
    let mut wrong = 0usize;
    // Each pass over the file timed on its own: on a shared (virtualised)
    // machine the best pass shows the code, the overall rate the machine.
    let mut pass_rates = Vec::new();
    let started = Instant::now();
    for pass in checks.chunks(once.max(1)) {
        let pass_started = Instant::now();
        for c in pass {
            let t = Instant::now();
            let d = engine
                .check_at(at.clone(), &c.resource, &c.permission, &c.subject)
                .await
                .expect("check");
            times.push(t.elapsed());
            wrong += usize::from(d.is_allowed() != c.expected);
        }
        pass_rates.push(pass.len() as f64 / pass_started.elapsed().as_secs_f64().max(1e-9));
    }
    let total = started.elapsed();
    times.sort();
    pass_rates.sort_by(f64::total_cmp);
    println!(
        "| {} | {label} | {} | {:.0} | {:.0} | {:.0} | {:.1} µs | {:.1} µs | {wrong} |",
        checks.len(),
        pass_rates.len(),
        checks.len() as f64 / total.as_secs_f64().max(1e-9),
        pass_rates.last().copied().unwrap_or_default(),
        pass_rates
            .get(pass_rates.len() / 2)
            .copied()
            .unwrap_or_default(),
        percentile(&times, 0.5).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
    );
    wrong
}

async fn run(
    dir: &Path,
    max_checks: usize,
    lookups: usize,
    cache: Option<u64>,
    by_writes: usize,
    compare: bool,
) {
    let (engine, n, took, grown) = load(dir, cache, by_writes).await;
    let how = if by_writes > 0 {
        format!("writes of {by_writes}")
    } else {
        "import".to_string()
    };
    println!("| dataset | relationships | load ({how}) | resident bytes / relationship |");
    println!("|---|---|---|---|");
    println!(
        "| {} | {n} | {:.2} s | {} |",
        dir.display(),
        took.as_secs_f64(),
        grown / n.max(1) as u64
    );
    let at = engine.head_revision().await.unwrap();
    let mut checks = read_checks(dir);
    // `--passes N`: the file's checks N times over (a longer measurement).
    let once = checks.len();
    while checks.len() < max_checks && once > 0 {
        checks.extend_from_within(..once.min(max_checks - checks.len()));
    }
    let checks = &checks[..checks.len().min(max_checks)];
    println!();
    println!(
        "| checks (one thread) | configuration | passes | checks/s | best pass | median pass | p50 | p99 | wrong |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut wrong = measure(&engine, "default", &at, checks, once).await;
    if compare {
        // The same store, the same run: the cache off, and the general
        // evaluator alone (no fast path), then the default again.
        let mut off = engine.config().clone();
        off.cache_capacity = 0;
        let cache_off = engine.reconfigured(off);
        let mut general = engine.config().clone();
        general.fast_path = false;
        let general = engine.reconfigured(general);
        wrong += measure(&cache_off, "cache off", &at, checks, once).await;
        wrong += measure(&general, "general evaluator only", &at, checks, once).await;
        wrong += measure(&engine, "default (again)", &at, checks, once).await;
    }
    // Lookups: the subjects and resources of the checks file (one pass).
    let checks = &checks[..once.min(checks.len())];
    let mut users: Vec<SubjectRef> = checks
        .iter()
        .filter(|c| c.subject.object.object_type == "user")
        .map(|c| c.subject.clone())
        .collect();
    users.sort();
    users.dedup();
    let mut resources: Vec<(ObjectRef, String)> = checks
        .iter()
        .filter(|c| c.resource.object_type == "customer")
        .map(|c| (c.resource.clone(), c.permission.clone()))
        .collect();
    resources.sort();
    resources.dedup();
    let step = (users.len() / lookups.max(1)).max(1);
    let mut lr_times = Vec::new();
    let mut lr_results = 0usize;
    let mut mismatches = 0usize;
    let (mut lr_peak, mut ls_peak) = (0u64, 0u64);
    for user in users.iter().step_by(step).take(lookups) {
        let t = Instant::now();
        let (ids, peak) = peak_extra(engine.lookup_resources_at(
            at.clone(),
            "customer",
            "view",
            user,
            None,
            usize::MAX,
        ))
        .await;
        let ids = ids.expect("lookup resources");
        lr_times.push(t.elapsed());
        lr_peak = lr_peak.max(peak);
        lr_results += ids.len();
        // Cross-check a sample against Check.
        for id in ids.iter().take(20) {
            let r = ObjectRef::new("customer", id.as_str());
            if !engine
                .check_at(at.clone(), &r, "view", user)
                .await
                .unwrap()
                .is_allowed()
            {
                mismatches += 1;
            }
        }
    }
    let mut ls_times = Vec::new();
    let mut ls_results = 0usize;
    let step = (resources.len() / lookups.max(1)).max(1);
    for (resource, _) in resources.iter().step_by(step).take(lookups) {
        let t = Instant::now();
        let (page, peak) = peak_extra(engine.lookup_subjects_at(
            at.clone(),
            resource,
            "view",
            "user",
            None,
            None,
            usize::MAX,
        ))
        .await;
        let page = page.expect("lookup subjects");
        ls_times.push(t.elapsed());
        ls_peak = ls_peak.max(peak);
        ls_results += page.subject_ids.len();
    }
    lr_times.sort();
    ls_times.sort();
    let mean = |v: &[Duration]| {
        v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len().max(1) as f64 * 1e3
    };
    println!();
    println!(
        "| lookup | queries | mean | p50 | max | results / query | peak extra resident (max) | lookup ⇒ check mismatches |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| LookupResources customer#view for a user | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} | {:.2} MB | {mismatches} |",
        lr_times.len(),
        mean(&lr_times),
        percentile(&lr_times, 0.5).as_secs_f64() * 1e3,
        lr_times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        lr_results as f64 / lr_times.len().max(1) as f64,
        lr_peak as f64 / 1e6,
    );
    println!(
        "| LookupSubjects customer#view of type user | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} | {:.2} MB | – |",
        ls_times.len(),
        mean(&ls_times),
        percentile(&ls_times, 0.5).as_secs_f64() * 1e3,
        ls_times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        ls_results as f64 / ls_times.len().max(1) as f64,
        ls_peak as f64 / 1e6,
    );
    if wrong > 0 || mismatches > 0 {
        std::process::exit(1);
    }
}

/// LookupResources as the answer grows: `n` documents; three users see 1%,
/// 10% and 100% of them (directly, and through a group for 100%). Reports
/// the time to the first 100 results and to all of them (one walk, then
/// candidates confirmed in order, as the gRPC stream does), and the
/// resident growth during the lookup.
async fn scale(n: usize) {
    let engine = kinbar::in_memory();
    engine
        .write_schema(
            "definition user {}\ndefinition group { relation member: user }\n\
             definition doc { relation viewer: user | group#member\n permission view = viewer }",
            TxnMetadata::default(),
        )
        .await
        .expect("schema");
    let mut rels: Vec<Relationship> = Vec::with_capacity(n * 2);
    for d in 0..n {
        rels.push(
            format!("doc:d{d:07}#viewer@group:all#member")
                .parse()
                .unwrap(),
        );
        if d % 100 == 0 {
            rels.push(
                format!("doc:d{d:07}#viewer@user:one_percent")
                    .parse()
                    .unwrap(),
            );
        }
        if d % 10 == 0 {
            rels.push(
                format!("doc:d{d:07}#viewer@user:ten_percent")
                    .parse()
                    .unwrap(),
            );
        }
        // Background: other users, so the store is larger than any answer.
        rels.push(
            format!("doc:d{d:07}#viewer@user:other{}", d % 997)
                .parse()
                .unwrap(),
        );
    }
    rels.push("group:all#member@user:everyone".parse().unwrap());
    engine
        .import_relationships(rels, TxnMetadata::default())
        .await
        .expect("import");
    let at = engine.head_revision().await.unwrap();
    println!(
        "| {n} documents: user sees | results | first 100 results | all results | peak extra resident |"
    );
    println!("|---|---|---|---|---|");
    for (who, share) in [
        ("one_percent", "1%"),
        ("ten_percent", "10%"),
        ("everyone", "100%"),
    ] {
        let subject = SubjectRef::object(ObjectRef::new("user", who));
        // As the gRPC stream does it: one walk, then candidates confirmed
        // in order; the first page is out after 100 confirmations.
        let t = Instant::now();
        let ((total, first_page), grown) = peak_extra(async {
            let candidates = engine
                .resource_candidates_at(at.clone(), "doc", "view", &subject)
                .await
                .expect("lookup");
            let mut total = 0usize;
            let mut first_page = None;
            for id in candidates.iter() {
                if engine
                    .resource_granted(&at, "doc", id, "view", &subject)
                    .await
                    .expect("check")
                {
                    total += 1;
                    if total == 100 {
                        first_page = Some(t.elapsed());
                    }
                }
            }
            (total, first_page)
        })
        .await;
        let all = t.elapsed();
        let first_page = first_page.unwrap_or(all);
        assert!(total > 0);
        println!(
            "| {share} | {total} | {:.2} ms | {:.1} ms | {:.1} MB |",
            first_page.as_secs_f64() * 1e3,
            all.as_secs_f64() * 1e3,
            grown as f64 / 1e6
        );
    }
}

/// A deterministic pseudo-random sequence (no dependency, reproducible files).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

async fn generate(dir: &Path, customers: usize) {
    std::fs::create_dir_all(dir).expect("create the dataset directory");
    let users = customers * 4 / 5;
    let teams = (customers / 10).max(1);
    let departments = (customers / 50).max(1);
    let orgs = (customers / 3_000).max(5);
    let mut rng = Rng(0x6b69_6e62_6172);
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    for o in 0..orgs {
        for a in 0..2 {
            line(format!("org:o{o}#admin@user:u{}", (o * 7 + a * 13) % users));
        }
    }
    for u in 0..users {
        line(format!("org:o{}#member@user:u{u}", u % orgs));
    }
    for d in 0..departments {
        line(format!("department:d{d}#org@org:o{}", d % orgs));
        line(format!(
            "department:d{d}#manager@user:u{}",
            rng.below(users)
        ));
    }
    for t in 0..teams {
        line(format!(
            "team:t{t}#department@department:d{}",
            t % departments
        ));
        line(format!("team:t{t}#manager@user:u{}", rng.below(users)));
        if t % 2 == 1 {
            line(format!("team:t{t}#member@team:t{}#member", t - 1));
        }
    }
    for u in 0..users {
        line(format!("team:t{}#member@user:u{u}", u % teams));
    }
    for c in 0..customers {
        let team = rng.below(teams);
        line(format!("customer:c{c}#org@org:o{}", c % orgs));
        line(format!("customer:c{c}#team@team:t{team}"));
        let owner = rng.below(users);
        line(format!("customer:c{c}#owner@user:u{owner}"));
        if c % 2 == 0 {
            line(format!("customer:c{c}#sales_rep@user:u{owner}"));
        } else {
            line(format!("customer:c{c}#sales_rep@team:t{team}#member"));
        }
        if c % 3 == 0 {
            line(format!(
                "customer:c{c}#support@team:t{}#member",
                rng.below(teams)
            ));
        } else {
            line(format!("customer:c{c}#support@user:u{}", rng.below(users)));
        }
        if c % 10 < 3 {
            line(format!("customer:c{c}#signed@user:*"));
        }
    }
    std::fs::write(dir.join("relationships.txt"), &out).expect("write relationships.txt");
    std::fs::write(dir.join("schema.zed"), CRM_SCHEMA).expect("write schema.zed");
    // Checks with Kinbar's own answers.
    let (engine, _, _, _) = load(dir, None, 0).await;
    let mut checks = String::new();
    let permissions = ["view", "edit", "manage", "add_friend"];
    for i in 0..50_000 {
        let c = rng.below(customers);
        let u = rng.below(users);
        let p = permissions[i % permissions.len()];
        let r = ObjectRef::new("customer", format!("c{c}"));
        let s = SubjectRef::object(ObjectRef::new("user", format!("u{u}")));
        let d = engine.check(&r, p, &s).await.expect("check");
        let _ = writeln!(checks, "{r} {p} {s} {}", d.is_allowed());
    }
    std::fs::write(dir.join("checks.txt"), checks).expect("write checks.txt");
    println!("{} relationships in {}", out_len(dir), dir.display());
}

fn out_len(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("relationships.txt"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}
