//! The engine: Check and Expand over relationships read at one revision,
//! plus validated writes of relationships and schemas.
//!
//! It talks only to the [`Datastore`] trait and never knows which backend it
//! has, nor anything about gRPC. Errors fail closed: a store error or an
//! exceeded limit is an [`Error`], never an `Allowed` or a `Denied`.
//!
//! Structure (DESIGN.md §10): request → evaluator, which consults the moka
//! cache (keyed by revision) only for shared sub-problems: nodes reached by
//! a hop to another object that are more than one direct lookup.

mod check;
mod expand;
mod fast;
mod lookup;
mod prefetch;
mod reach;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::future::Cache;

pub use expand::{ExpandKind, ExpandTree};
pub use lookup::SubjectsPage;

use crate::model::{
    CommittedTxn, Consistency, DeleteByFilter, Imported, ObjectRef, Page, Precondition,
    PreconditionKind, Relationship, RelationshipFilter, Revision, SubjectFilter, SubjectRef,
    TxnMetadata, Update, validate_name, validate_object_id, validate_type_name,
};
use crate::schema::{self, AllowedType, Compiled, Diagnostic, MemberKind, Schema, SchemaError};
use crate::store::{Datastore, SchemaWrite, StoreError, StoredSchema, WriteTxn};

/// The answer to a check. Three-valued so that caveats (phase 2) fit:
/// `Conditional` means "allowed if the missing caveat context holds".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    Denied,
    Conditional,
    Allowed,
}

impl Decision {
    pub fn or(self, other: Decision) -> Decision {
        self.max(other)
    }
    pub fn and(self, other: Decision) -> Decision {
        self.min(other)
    }
    pub fn negate(self) -> Decision {
        match self {
            Decision::Denied => Decision::Allowed,
            Decision::Conditional => Decision::Conditional,
            Decision::Allowed => Decision::Denied,
        }
    }
    pub fn is_allowed(self) -> bool {
        self == Decision::Allowed
    }
}

/// Engine errors. The API layer maps each to one gRPC status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("no schema has been written yet")]
    NoSchema,
    #[error("object definition `{0}` not found")]
    UnknownType(String),
    #[error("relation or permission `{member}` not found on definition `{object_type}`")]
    UnknownMember { object_type: String, member: String },
    #[error("invalid schema: {0}")]
    Schema(Box<SchemaError>),
    #[error("relationship `{relationship}` does not match the schema: {reason}")]
    SchemaViolation {
        relationship: String,
        reason: schema::Violation,
    },
    #[error("the new schema would orphan existing relationships: {0}")]
    SchemaWouldOrphan(String),
    #[error(
        "maximum depth of {depth} exceeded while evaluating; the schema or data nests too deeply (or the depth limit is too low)"
    )]
    DepthExceeded { depth: u32 },
    /// One request did more work than its budget allows (sub-problems,
    /// rows read, expand tree size or time). Never a partial answer.
    #[error(
        "this request exceeded its budget: more than {limit} {what} (limit `{setting}`); narrow the request or raise the limit"
    )]
    BudgetExceeded {
        what: &'static str,
        setting: &'static str,
        limit: u64,
    },
    /// The caller's deadline (`grpc-timeout`) passed during evaluation.
    #[error("the request's deadline passed during evaluation")]
    DeadlineExceeded,
    /// The answer is undefined: the permission depends on its own negation
    /// through a data cycle (e.g. `viewer = direct - restricted` with
    /// `doc:1#restricted@doc:1#viewer`). Never answered "allowed".
    #[error(
        "`{resource}#{member}` depends on its own exclusion through a cycle in the data (via `{via}`), so it has no defined answer; remove the relationship that closes the cycle"
    )]
    CycleThroughExclusion {
        resource: String,
        member: String,
        via: String,
    },
    #[error("{0}")]
    Store(#[from] StoreError),
}

tokio::task_local! {
    /// The deadline of the request being served, from its `grpc-timeout`
    /// (set by the server's edge layer around each call). Evaluation reads
    /// it because a memory-store evaluation never yields, so the
    /// transport's own timeout cannot interrupt it.
    pub static REQUEST_DEADLINE: std::time::Instant;
}

/// Work one request may do before it is refused with
/// [`Error::BudgetExceeded`]: the engine never aborts or allocates without
/// bound on a caller's input.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Sub-problems (`(object, member, subject)` evaluations) per request.
    pub max_subproblems: u64,
    /// Relationships read from the datastore per request.
    pub max_rows_read: u64,
    /// Nodes plus leaf subjects of one Expand response.
    pub max_expand_elements: u64,
    /// Wall time of one evaluation.
    pub max_duration: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_subproblems: 200_000,
            max_rows_read: 2_000_000,
            max_expand_elements: 100_000,
            max_duration: Duration::from_secs(10),
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Maximum evaluation depth (hops); exceeding it is an error.
    pub max_depth: u32,
    /// Maximum updates in one write.
    pub max_updates_per_write: usize,
    /// Bytes of the shared sub-problem cache (0: off), each entry weighed
    /// by its key's strings plus a fixed overhead.
    pub cache_capacity: u64,
    /// Cache entries age out after this long.
    pub cache_ttl: Duration,
    pub schema_limits: schema::Limits,
    /// Per-request work limits.
    pub budget: Budget,
    /// Answer checks on the fast path where the datastore allows it
    /// (`fast.rs`). Off only to compare it with the general evaluator.
    pub fast_path: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_depth: 50,
            max_updates_per_write: 1_000,
            cache_capacity: 32 * 1024 * 1024,
            cache_ttl: Duration::from_secs(60),
            schema_limits: schema::Limits::default(),
            budget: Budget::default(),
            fast_path: true,
        }
    }
}

#[derive(Debug, Default)]
pub struct EngineMetrics {
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// What the cache saved: for every hit, the time the entry took to
    /// compute when it was stored (microseconds).
    pub cache_saved_micros: AtomicU64,
    /// LookupResources requests that resumed from a kept walk instead of
    /// walking again (see `Engine::walks`).
    pub walk_reuses: AtomicU64,
    /// Checks answered by the fast path (`fast.rs`), and by the general
    /// evaluator (no symbol reads, a data cycle, a limit, or turned off).
    pub fast_answers: AtomicU64,
    pub general_answers: AtomicU64,
    /// Statements the evaluators sent to the datastore: one per read, one
    /// per batch of prefetched reads (round trips on Postgres).
    pub datastore_queries: AtomicU64,
}

impl EngineMetrics {
    fn cache_hit(&self, cost_micros: u32) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
        self.cache_saved_micros
            .fetch_add(u64::from(cost_micros), Ordering::Relaxed);
    }
    fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
    }
}

type CacheKey = (Revision, ObjectRef, String, SubjectRef);
/// A cached sub-problem: its decision and what computing it cost
/// (microseconds), counted as saved on every hit.
type Cached = (Decision, u32);
/// `(revision, resource type, permission, subject)` of a LookupResources walk.
type WalkKey = (Revision, String, String, SubjectRef);

/// Walks smaller than this are cheaper to redo than to keep.
pub(crate) const KEEP_WALKS_FROM: usize = 1_000;
type MemoKey = (ObjectRef, String, SubjectRef);

/// The authorization engine over one datastore. Cheap to share (`Arc`).
pub struct Engine {
    store: Arc<dyn Datastore>,
    config: EngineConfig,
    cache: Cache<CacheKey, Cached>,
    /// Recent large LookupResources walks by revision and query, so a
    /// request resuming from a cursor confirms from where it left off
    /// instead of walking the neighbourhood again (a walk at a revision
    /// never changes). Bounded by bytes; only walks of at least
    /// [`KEEP_WALKS_FROM`] candidates are kept.
    walks: Cache<WalkKey, Arc<std::collections::BTreeSet<String>>>,
    /// The last compiled schema, by the revision that wrote it.
    /// With its fast-path plan (`fast.rs`), compiled once per schema.
    compiled: Mutex<Option<CompiledAt>>,
    /// The latest revision this engine committed (wakes Watch streams).
    /// Counts this engine's commits; streams wait on it for news.
    commits: tokio::sync::watch::Sender<u64>,
    pub metrics: EngineMetrics,
}

/// A compiled schema and its fast-path plan, by the revision that wrote it.
type CompiledAt = (Revision, Arc<Schema>, Arc<fast::Plan>);

/// One check's work for the dispatch metrics, from either evaluator:
/// sub-problems evaluated and the deepest hop.
fn record_dispatch_work(subproblems: f64, depth: u32) {
    metrics::histogram!("kinbar_dispatch_subproblems").record(subproblems);
    metrics::histogram!("kinbar_dispatch_depth").record(f64::from(depth));
}

/// The most relationships one offboarding moves in one transaction.
pub const MAX_OFFBOARD: usize = 100_000;

/// What an offboarding removed (or, in a dry run, would remove).
#[derive(Debug, Clone)]
pub struct Offboarded {
    /// The commit's revision, or the revision read in a dry run.
    pub revision: Revision,
    /// The relationships whose subject was the departing one.
    pub relationships: Vec<Relationship>,
    pub committed: bool,
}

/// The result of a schema write.
#[derive(Debug, Clone)]
pub struct SchemaWriteResult {
    pub revision: Revision,
    pub warnings: Vec<Diagnostic>,
}

/// Evaluation state for one request: a schema and a revision.
pub(crate) struct Evaluator<'e> {
    engine: &'e Engine,
    schema: Arc<Schema>,
    at: Revision,
    max_depth: u32,
    /// Path frame ids, unique within the request; also counts sub-problems.
    frames: AtomicU64,
    memo: Mutex<check::Memo>,
    /// Relationships read so far by this request.
    rows: AtomicU64,
    started: std::time::Instant,
    /// The caller's own deadline (`grpc-timeout`), when sooner than the
    /// server's maximum.
    caller_deadline: Option<std::time::Instant>,
    budget: Budget,
    /// Expand: nodes already rendered in this response, and elements so far.
    expanded: Mutex<std::collections::HashSet<(ObjectRef, String)>>,
    expand_elements: AtomicU64,
    /// Lookup walk steps so far.
    walked: AtomicU64,
    /// The deepest sub-problem reached (hops through relations and
    /// permissions), for the dispatch-depth metric.
    deepest: std::sync::atomic::AtomicU32,
    /// Reads asked ahead in batches (`prefetch.rs`), each taken by the
    /// first [`Evaluator::read`] of its filter. `None` on a store whose
    /// reads are not round trips.
    prefetched: Option<Mutex<prefetch::Prefetched>>,
}

impl Evaluator<'_> {
    async fn read(&self, filter: &RelationshipFilter) -> Result<Vec<Relationship>, Error> {
        if let Some(rows) = self.take_prefetched(filter) {
            self.count_rows(rows.len())?;
            return Ok(rows);
        }
        self.read_page(filter, &Page::default()).await
    }

    /// Adds `n` relationships read to the request's total, refused past
    /// its budget.
    fn count_rows(&self, n: usize) -> Result<(), Error> {
        let total = self
            .rows
            .fetch_add(n as u64, Ordering::Relaxed)
            .saturating_add(n as u64);
        if total > self.budget.max_rows_read {
            return Err(Error::BudgetExceeded {
                what: "relationships read",
                setting: "max_rows_per_request",
                limit: self.budget.max_rows_read,
            });
        }
        Ok(())
    }

    /// One page of [`Evaluator::read`].
    async fn read_page(
        &self,
        filter: &RelationshipFilter,
        page: &Page,
    ) -> Result<Vec<Relationship>, Error> {
        let started = std::time::Instant::now();
        self.engine
            .metrics
            .datastore_queries
            .fetch_add(1, Ordering::Relaxed);
        let span = tracing::trace_span!("datastore.query", rows = tracing::field::Empty);
        let rows = tracing::Instrument::instrument(
            self.engine.store.query(&self.at, filter, page),
            span.clone(),
        )
        .await?;
        span.record("rows", rows.len());
        metrics::histogram!("kinbar_datastore_query_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        self.count_rows(rows.len())?;
        Ok(rows)
    }

    /// Exports how much work this evaluation did: sub-problems and depth.
    fn record_work(&self) {
        record_dispatch_work(
            self.frames.load(Ordering::Relaxed) as f64,
            self.deepest.load(Ordering::Relaxed),
        );
    }

    /// A new sub-problem: a fresh frame id, refused past the request's
    /// sub-problem or time budget.
    fn enter(&self) -> Result<u64, Error> {
        let frame = self.frames.fetch_add(1, Ordering::Relaxed);
        if frame >= self.budget.max_subproblems {
            return Err(Error::BudgetExceeded {
                what: "sub-problems",
                setting: "max_subproblems",
                limit: self.budget.max_subproblems,
            });
        }
        self.check_clock(frame)?;
        Ok(frame)
    }

    /// The caller's deadline and the wall-time budget, read once every 256
    /// counted steps (`n`) to keep the clock off the hot path.
    fn check_clock(&self, n: u64) -> Result<(), Error> {
        if n % 256 != 255 {
            return Ok(());
        }
        let now = std::time::Instant::now();
        if self.caller_deadline.is_some_and(|deadline| now >= deadline) {
            return Err(Error::DeadlineExceeded);
        }
        if now.duration_since(self.started) > self.budget.max_duration {
            return Err(Error::BudgetExceeded {
                what: "milliseconds of evaluation",
                setting: "request_timeout_secs",
                limit: self.budget.max_duration.as_millis() as u64,
            });
        }
        Ok(())
    }

    /// `n` steps of a lookup walk (`reach.rs`): bounded by the rows budget
    /// (every step was reached through a row read) and the clock, not by
    /// the sub-problem budget — a user who may see 100,000 resources takes
    /// 200,000 steps, which is no sign of a runaway evaluation.
    fn walk_steps(&self, n: u64) -> Result<(), Error> {
        if n == 0 {
            return Ok(());
        }
        let before = self.walked.fetch_add(n, Ordering::Relaxed);
        let last = before.saturating_add(n - 1);
        if last > self.budget.max_rows_read {
            return Err(Error::BudgetExceeded {
                what: "lookup steps",
                setting: "max_rows_per_request",
                limit: self.budget.max_rows_read,
            });
        }
        // The clock is read once per 256 steps: whenever these steps
        // cross a multiple of 256.
        if before / 256 != (last + 1) / 256 {
            return self.check_clock(255);
        }
        Ok(())
    }

    /// Counts `n` elements of the Expand response being built.
    fn expand_grow(&self, n: u64) -> Result<(), Error> {
        let total = self
            .expand_elements
            .fetch_add(n, Ordering::Relaxed)
            .saturating_add(n);
        if total > self.budget.max_expand_elements {
            return Err(Error::BudgetExceeded {
                what: "nodes and subjects in the expand tree",
                setting: "max_expand_elements",
                limit: self.budget.max_expand_elements,
            });
        }
        Ok(())
    }

    /// The relationships of `resource#relation` at this evaluator's revision.
    async fn read_relation(
        &self,
        resource: &ObjectRef,
        relation: &str,
    ) -> Result<Vec<Relationship>, Error> {
        self.read(&RelationshipFilter::resource_relation(
            &resource.object_type,
            &resource.object_id,
            relation,
        ))
        .await
    }

    fn cache_key(&self, resource: &ObjectRef, member: &str, subject: &SubjectRef) -> CacheKey {
        (
            self.at.clone(),
            resource.clone(),
            member.to_string(),
            subject.clone(),
        )
    }
}

impl Engine {
    pub fn new(store: Arc<dyn Datastore>, config: EngineConfig) -> Self {
        let cache = Cache::builder()
            .max_capacity(config.cache_capacity)
            .weigher(|k: &CacheKey, _: &Cached| {
                // The key's strings plus the entry's share of moka's and the
                // key's fixed-size parts.
                let (revision, resource, member, subject) = k;
                let strings = revision.as_str().len()
                    + resource.object_type.len()
                    + resource.object_id.len()
                    + member.len()
                    + subject.object.object_type.len()
                    + subject.object.object_id.len()
                    + subject.relation.as_ref().map_or(0, String::len);
                u32::try_from(strings + 160).unwrap_or(u32::MAX)
            })
            .time_to_live(config.cache_ttl)
            .build();
        let walks = Cache::builder()
            .weigher(
                |_: &WalkKey, ids: &Arc<std::collections::BTreeSet<String>>| {
                    // Roughly the set's bytes: each id plus a node's share.
                    let bytes = ids.iter().map(|id| id.len() + 48).sum::<usize>();
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                },
            )
            .max_capacity(64 << 20)
            .time_to_live(Duration::from_secs(60))
            .build();
        Engine {
            store,
            config,
            cache,
            walks,
            compiled: Mutex::new(None),
            commits: tokio::sync::watch::Sender::new(0),
            metrics: EngineMetrics::default(),
        }
    }

    /// Notified with each revision this engine commits.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    fn committed(&self) {
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Another engine over the same datastore with other settings (its own
    /// cache), e.g. to run one tool with different limits.
    pub fn reconfigured(&self, config: EngineConfig) -> Engine {
        Engine::new(self.store.clone(), config)
    }

    /// The datastore's stable id (carried in ZedTokens).
    pub fn datastore_id(&self) -> &str {
        self.store.id()
    }

    /// The revision a read with `consistency` happens at (DESIGN.md §7),
    /// checked to be still readable. `quantum` is the `minimize_latency`
    /// window.
    pub async fn resolve(
        &self,
        consistency: &Consistency,
        quantum: Duration,
    ) -> Result<Revision, Error> {
        let store = &self.store;
        let rev = match consistency {
            Consistency::MinimizeLatency => store.optimized_revision(quantum).await?,
            Consistency::FullyConsistent => store.head_revision().await?,
            Consistency::AtLeastAsFresh(wanted) => {
                let opt = store.optimized_revision(quantum).await?;
                store.at_least_as_fresh(wanted, opt).await?
            }
            Consistency::AtExactSnapshot(at) => at.clone(),
        };
        self.check_revision(&rev).await?;
        Ok(rev)
    }

    /// Fails unless `at` is still readable (not garbage-collected, not in
    /// the future, a revision of this datastore).
    pub async fn check_revision(&self, at: &Revision) -> Result<(), Error> {
        Ok(self.store.check_revision(at).await?)
    }

    /// Committed transactions after `after`, in commit order (Watch).
    pub async fn changes_since(
        &self,
        after: &Revision,
        limit: usize,
    ) -> Result<Vec<CommittedTxn>, Error> {
        Ok(self.store.changes_since(after, limit).await?)
    }

    /// Audit records after sequence `after` that match `filter`.
    pub async fn read_audit(
        &self,
        after: u64,
        filter: &crate::audit::AuditFilter,
        limit: usize,
    ) -> Result<Vec<crate::audit::AuditRecord>, Error> {
        Ok(self.store.read_audit(after, filter, limit).await?)
    }

    /// Stores refused calls (see [`crate::audit::SecurityEvent`]).
    pub async fn record_security_events(
        &self,
        events: &[crate::audit::SecurityEvent],
    ) -> Result<(), Error> {
        Ok(self.store.record_security_events(events).await?)
    }

    /// Stored security events after id `after`, oldest first.
    pub async fn read_security_events(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::audit::StoredSecurityEvent>, Error> {
        Ok(self.store.read_security_events(after, limit).await?)
    }

    /// Where the store's retained audit chain starts, if it pruned older
    /// records.
    pub async fn audit_horizon(&self) -> Result<Option<crate::audit::AuditHorizon>, Error> {
        Ok(self.store.audit_horizon().await?)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub async fn head_revision(&self) -> Result<Revision, Error> {
        Ok(self.store.head_revision().await?)
    }

    /// Whether the datastore can serve (reachable, migrations current).
    pub async fn ready(&self) -> Result<(), Error> {
        Ok(self.store.ready().await?)
    }

    /// The datastore's pool, audit-sealer and GC figures.
    pub async fn datastore_stats(&self) -> crate::store::DatastoreStats {
        self.store.stats().await
    }

    /// The compiled schema in force at `at`.
    pub async fn schema_at(&self, at: Revision) -> Result<Arc<Schema>, Error> {
        Ok(self.compiled_at(&at).await?.0)
    }

    /// The schema at the head, compiled, and the revision that wrote it
    /// (what a write validated against it expects to still be current).
    async fn head_schema(&self) -> Result<(Revision, Arc<Schema>), Error> {
        let head = self.store.head_revision().await?;
        let stored = self
            .store
            .read_schema(&head)
            .await?
            .ok_or(Error::NoSchema)?;
        let (schema, _) = self.compiled(&stored)?;
        Ok((stored.written_at, schema))
    }

    /// The compiled schema in force at `at` and its fast-path plan.
    async fn compiled_at(&self, at: &Revision) -> Result<(Arc<Schema>, Arc<fast::Plan>), Error> {
        let stored = self.store.read_schema(at).await?.ok_or(Error::NoSchema)?;
        self.compiled(&stored)
    }

    /// `stored` compiled with its fast-path plan: the kept one when it is
    /// the last compiled schema, else compiled now and kept.
    fn compiled(&self, stored: &StoredSchema) -> Result<(Arc<Schema>, Arc<fast::Plan>), Error> {
        if let Ok(guard) = self.compiled.lock()
            && let Some((rev, schema, plan)) = guard.as_ref()
            && *rev == stored.written_at
        {
            return Ok((schema.clone(), plan.clone()));
        }
        // Stored schemas were validated on write, so this only fails if the
        // limits were lowered since; report it rather than guessing.
        let compiled = schema::compile(
            &stored.text,
            &schema::Limits {
                max_schema_bytes: usize::MAX,
                max_expression_terms: usize::MAX,
                max_nesting: self.config.schema_limits.max_nesting,
            },
        )
        .map_err(|e| Error::Schema(Box::new(e)))?;
        let plan = Arc::new(fast::Plan::compile(&compiled.schema));
        let schema = Arc::new(compiled.schema);
        if let Ok(mut guard) = self.compiled.lock() {
            *guard = Some((stored.written_at.clone(), schema.clone(), plan.clone()));
        }
        Ok((schema, plan))
    }

    /// The fast path's answer (`fast.rs`), where the datastore has symbol
    /// reads and the fast path decides the question; `Ok(None)`: ask the
    /// general evaluator.
    fn fast_check(
        &self,
        plan: &fast::Plan,
        at: &Revision,
        resource: &ObjectRef,
        permission: &str,
        subject: &SubjectRef,
    ) -> Result<Option<Decision>, Error> {
        // Trace-level `dispatch` spans (one per sub-problem) come from the
        // general evaluator: with them enabled, every check takes it.
        if !self.config.fast_path
            || tracing::enabled!(target: "kinbar::engine::check", tracing::Level::TRACE)
        {
            return Ok(None);
        }
        let Some(reads) = self.store.symbol_reads() else {
            return Ok(None);
        };
        // The fast path is bounded (`fast::MAX_STEPS`), so the caller's
        // deadline is read once, before it starts.
        if REQUEST_DEADLINE
            .try_with(|d| std::time::Instant::now() >= *d)
            .unwrap_or(false)
        {
            return Err(Error::DeadlineExceeded);
        }
        let mut answer = None;
        reads.with_view(at, &mut |view| {
            answer = fast::check(
                view,
                plan,
                resource,
                permission,
                subject,
                self.config.max_depth,
            );
        })?;
        Ok(answer.map(|(allowed, work)| {
            self.metrics.fast_answers.fetch_add(1, Ordering::Relaxed);
            record_dispatch_work(f64::from(work.steps), work.depth);
            if allowed {
                Decision::Allowed
            } else {
                Decision::Denied
            }
        }))
    }

    /// The schema text in force at `at`, and the revision that wrote it.
    pub async fn read_schema_text(&self, at: Revision) -> Result<(String, Revision), Error> {
        let stored = self.store.read_schema(&at).await?.ok_or(Error::NoSchema)?;
        Ok((stored.text.to_string(), stored.written_at))
    }

    async fn evaluator(&self, at: Revision) -> Result<Evaluator<'_>, Error> {
        let schema = self.schema_at(at.clone()).await?;
        Ok(self.evaluator_with(schema, at))
    }

    /// A fresh per-request evaluation state (budgets start now).
    fn evaluator_with(&self, schema: Arc<Schema>, at: Revision) -> Evaluator<'_> {
        Evaluator {
            engine: self,
            schema,
            at,
            max_depth: self.config.max_depth,
            frames: AtomicU64::new(0),
            memo: Mutex::new(check::Memo::default()),
            rows: AtomicU64::new(0),
            started: std::time::Instant::now(),
            caller_deadline: REQUEST_DEADLINE.try_with(|d| *d).ok(),
            budget: self.config.budget.clone(),
            expanded: Mutex::new(std::collections::HashSet::new()),
            expand_elements: AtomicU64::new(0),
            walked: AtomicU64::new(0),
            deepest: std::sync::atomic::AtomicU32::new(0),
            prefetched: self.store.batches_reads().then(Default::default),
        }
    }

    /// Compiles `text` and installs it, refusing (with
    /// [`Error::SchemaWouldOrphan`]) a change that would leave stored
    /// relationships outside the schema.
    pub async fn write_schema(
        &self,
        text: &str,
        metadata: TxnMetadata,
    ) -> Result<SchemaWriteResult, Error> {
        self.write_schema_from(|_| Ok(text.to_string()), metadata)
            .await
    }

    /// Like [`Engine::write_schema`], with the text made from the schema
    /// text in force (`None`: none yet) by `make` — called again if the
    /// schema changes before the write commits, so a change made from the
    /// current schema (a tenant replacing its own definitions) never
    /// overwrites one committed in between.
    pub async fn write_schema_from(
        &self,
        make: impl Fn(Option<&str>) -> Result<String, Error>,
        metadata: TxnMetadata,
    ) -> Result<SchemaWriteResult, Error> {
        for attempt in 0.. {
            let head = self.store.head_revision().await?;
            let current = self.store.read_schema(&head).await?;
            let text = make(current.as_ref().map(|c| &*c.text))?;
            let Compiled {
                schema, warnings, ..
            } = schema::compile(&text, &self.config.schema_limits)
                .map_err(|e| Error::Schema(Box::new(e)))?;
            let (expected, preconditions) = match &current {
                None => (None, Vec::new()),
                Some(stored) => {
                    let old = self.schema_at(head).await?;
                    (
                        Some(stored.written_at.clone()),
                        orphan_filters(&old, &schema),
                    )
                }
            };
            let txn = WriteTxn {
                expected_schema: Some(expected),
                preconditions: preconditions.clone(),
                schema: Some(SchemaWrite { text }),
                metadata: metadata.clone(),
                ..Default::default()
            };
            match self.store.write(&txn).await {
                Ok(c) => {
                    self.committed();
                    return Ok(SchemaWriteResult {
                        revision: c.revision,
                        warnings,
                    });
                }
                Err(StoreError::SchemaChanged) if attempt < 5 => continue,
                Err(StoreError::PreconditionFailed { index, .. }) => {
                    let filter = &preconditions[index].filter;
                    let examples = self
                        .store
                        .query(
                            &self.store.head_revision().await?,
                            filter,
                            &Page {
                                after: None,
                                limit: Some(5),
                            },
                        )
                        .await?;
                    let list: Vec<String> = examples.iter().map(|r| format!("`{r}`")).collect();
                    return Err(Error::SchemaWouldOrphan(format!(
                        "{}; for example {}; delete those relationships first",
                        describe_orphan(filter),
                        list.join(", ")
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Store(StoreError::SchemaChanged))
    }

    /// Validates and applies relationship updates atomically, after checking
    /// the preconditions. Returns the committed transaction.
    pub async fn write_relationships(
        &self,
        updates: Vec<Update>,
        preconditions: Vec<Precondition>,
        metadata: TxnMetadata,
    ) -> Result<CommittedTxn, Error> {
        if updates.len() > self.config.max_updates_per_write {
            return Err(Error::InvalidArgument(format!(
                "{} updates in one write, more than the limit of {}",
                updates.len(),
                self.config.max_updates_per_write
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for u in &updates {
            validate_relationship(&u.relationship)?;
            if !seen.insert(&u.relationship) {
                return Err(Error::InvalidArgument(format!(
                    "relationship `{}` appears more than once in the same write",
                    u.relationship
                )));
            }
        }
        self.write_validated(WriteTxn {
            preconditions,
            updates,
            metadata,
            ..Default::default()
        })
        .await
    }

    /// Creates many relationships in one transaction (ImportBulkRelationships):
    /// all or nothing; an existing relationship, or one listed twice, fails
    /// the import (`InvalidArgument` for a duplicate).
    pub async fn import_relationships(
        &self,
        relationships: Vec<Relationship>,
        metadata: TxnMetadata,
    ) -> Result<Imported, Error> {
        for r in &relationships {
            validate_relationship(r)?;
        }
        let (written_at, schema) = self.head_schema().await?;
        for r in &relationships {
            conforms(&schema, r)?;
        }
        // No retry when the schema changes meanwhile (the relationships
        // are handed over, not copied): the import fails with ABORTED and
        // the caller retries, as after any serialization failure.
        let imported = self
            .store
            .import(relationships, written_at, metadata)
            .await
            .map_err(|e| match e {
                StoreError::DuplicateInImport(r) => Error::InvalidArgument(format!(
                    "relationship `{r}` appears more than once in the import"
                )),
                e => e.into(),
            })?;
        self.committed();
        Ok(imported)
    }

    /// Offboarding: removes every relationship whose subject is exactly
    /// `subject`, and with a `successor` gives each to it instead — in one
    /// audited transaction, for any number of relationships (up to
    /// [`MAX_OFFBOARD`]). The set is read first and the write only commits
    /// if exactly that set is still there (a concurrent grant or revoke makes
    /// it fail with `ChangedConcurrently`, to be retried), so nothing is left
    /// behind and nothing is handed over that the subject no longer held.
    /// With `dry_run`, only reports what would change.
    pub async fn offboard(
        &self,
        subject: &SubjectRef,
        successor: Option<&SubjectRef>,
        metadata: TxnMetadata,
        dry_run: bool,
    ) -> Result<Offboarded, Error> {
        if subject.is_wildcard() {
            return Err(Error::InvalidArgument(format!(
                "cannot offboard the wildcard `{subject}`; name one subject"
            )));
        }
        if let Some(s) = successor {
            if s.is_wildcard()
                || s.object.object_type != subject.object.object_type
                || s.relation != subject.relation
            {
                return Err(Error::InvalidArgument(format!(
                    "the successor `{s}` must be a concrete subject of the same type (and relation) as `{subject}`"
                )));
            }
            if s == subject {
                return Err(Error::InvalidArgument(format!(
                    "`{subject}` cannot hand over to itself"
                )));
            }
        }
        let at = self.store.head_revision().await?;
        let schema = self.schema_at(at.clone()).await?;
        validate_object(&schema, &subject.object)?;
        let filter = RelationshipFilter {
            subject: Some(SubjectFilter {
                subject_type: subject.object.object_type.clone(),
                subject_ids: vec![subject.object.object_id.clone()],
                relation: Some(subject.relation.clone()),
                exclude_wildcard: true,
            }),
            ..Default::default()
        };
        let held = self
            .store
            .query(
                &at,
                &filter,
                &Page {
                    after: None,
                    limit: Some(MAX_OFFBOARD + 1),
                },
            )
            .await?;
        if held.len() > MAX_OFFBOARD {
            return Err(Error::InvalidArgument(format!(
                "`{subject}` holds more than {MAX_OFFBOARD} relationships; offboard by resource type with DeleteRelationships"
            )));
        }
        if dry_run || held.is_empty() {
            return Ok(Offboarded {
                revision: at,
                relationships: held,
                committed: false,
            });
        }
        let updates = successor
            .map(|s| {
                held.iter()
                    .map(|r| Update {
                        operation: crate::model::Operation::Touch,
                        relationship: Relationship::new(
                            r.resource.clone(),
                            r.relation.clone(),
                            s.clone(),
                        ),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let committed = self
            .write_validated(WriteTxn {
                deletes: vec![DeleteByFilter {
                    filter,
                    limit: Some(held.len()),
                    allow_partial: false,
                    expect_exactly: true,
                }],
                updates,
                metadata,
                ..Default::default()
            })
            .await?;
        Ok(Offboarded {
            revision: committed.revision,
            relationships: held,
            committed: true,
        })
    }

    /// Deletes relationships matching `filter` (DeleteRelationships).
    pub async fn delete_relationships(
        &self,
        delete: DeleteByFilter,
        preconditions: Vec<Precondition>,
        metadata: TxnMetadata,
    ) -> Result<CommittedTxn, Error> {
        self.write_validated(WriteTxn {
            preconditions,
            deletes: vec![delete],
            metadata,
            ..Default::default()
        })
        .await
    }

    /// Validates updates and filters against the schema and commits, retrying
    /// if the schema changed between the read and the commit.
    async fn write_validated(&self, mut txn: WriteTxn) -> Result<CommittedTxn, Error> {
        for attempt in 0.. {
            let (written_at, schema) = self.head_schema().await?;
            for u in &txn.updates {
                if u.operation != crate::model::Operation::Delete {
                    conforms(&schema, &u.relationship)?;
                }
            }
            for p in &txn.preconditions {
                validate_filter(&schema, &p.filter)?;
            }
            for d in &txn.deletes {
                validate_filter(&schema, &d.filter)?;
            }
            txn.expected_schema = Some(Some(written_at));
            match self.store.write(&txn).await {
                Err(StoreError::SchemaChanged) if attempt < 5 => continue,
                Ok(c) => {
                    self.committed();
                    return Ok(c);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Store(StoreError::SchemaChanged))
    }

    /// Refuses a read filter naming a type, relation or subject relation
    /// the schema at `at` does not define (as SpiceDB does), instead of
    /// answering an empty stream that hides the caller's typo.
    pub async fn validate_filter_at(
        &self,
        at: Revision,
        filter: &RelationshipFilter,
    ) -> Result<(), Error> {
        match self.schema_at(at).await {
            Ok(schema) => validate_filter(&schema, filter),
            // Without a schema every named type is unknown.
            Err(Error::NoSchema) => match (&filter.resource_type, &filter.subject) {
                (Some(t), _) => Err(Error::UnknownType(t.clone())),
                (None, Some(s)) => Err(Error::UnknownType(s.subject_type.clone())),
                (None, None) => Ok(()),
            },
            Err(e) => Err(e),
        }
    }

    /// Relationships matching `filter` at `at`, paged.
    pub async fn read_relationships(
        &self,
        at: Revision,
        filter: &RelationshipFilter,
        page: &Page,
    ) -> Result<Vec<Relationship>, Error> {
        Ok(self.store.query(&at, filter, page).await?)
    }

    /// Every relationship stored at `at`, in order (audit completeness
    /// checks, exports of a quiesced store). Reads in pages; holds them all.
    pub async fn all_relationships_at(&self, at: Revision) -> Result<Vec<Relationship>, Error> {
        let mut out: Vec<Relationship> = Vec::new();
        loop {
            let page = Page {
                after: out.last().cloned(),
                limit: Some(10_000),
            };
            let batch = self
                .store
                .query(&at, &RelationshipFilter::default(), &page)
                .await?;
            let done = batch.len() < 10_000;
            out.extend(batch);
            if done {
                return Ok(out);
            }
        }
    }

    /// Checks at the head revision.
    pub async fn check(
        &self,
        resource: &ObjectRef,
        permission: &str,
        subject: &SubjectRef,
    ) -> Result<Decision, Error> {
        let at = self.store.head_revision().await?;
        self.check_at(at.clone(), resource, permission, subject)
            .await
    }

    /// Is `subject` in `resource#permission` at revision `at`?
    #[tracing::instrument(level = "debug", name = "check", skip_all,
        fields(resource_type = %resource.object_type, permission = %permission))]
    pub async fn check_at(
        &self,
        at: Revision,
        resource: &ObjectRef,
        permission: &str,
        subject: &SubjectRef,
    ) -> Result<Decision, Error> {
        let (schema, plan) = self.compiled_at(&at).await?;
        validate_check(&schema, resource, permission, subject)?;
        if let Some(decision) = self.fast_check(&plan, &at, resource, permission, subject)? {
            return Ok(decision);
        }
        // Whole answers are not cached: measured on the 1M CRM set, one
        // lookup and one insert per check cost 25–45% of the throughput at a
        // near-zero hit rate (BENCHMARKS.md); the shared sub-problems below
        // are cached. (`kinbar validate --exhaustive`, which repeats checks,
        // memoizes them itself.)
        self.metrics.general_answers.fetch_add(1, Ordering::Relaxed);
        let eval = self.evaluator_with(schema, at);
        let decision = eval
            .check(resource, permission, subject, 0, None)
            .await
            .map(|o| o.decision);
        eval.record_work();
        decision
    }

    /// Many checks at one revision (CheckBulkPermissions), answered in
    /// order, each item its own result. Work is shared: identical items are
    /// evaluated once, and items with the same subject share one
    /// evaluation state, so a sub-problem they have in common (the user's
    /// team memberships, a department's managers) is computed once; those
    /// items also share one request budget.
    pub async fn check_bulk_at(
        &self,
        at: Revision,
        items: &[(ObjectRef, String, SubjectRef)],
    ) -> Vec<Result<Decision, Error>> {
        let (schema, plan) = match self.compiled_at(&at).await {
            Ok(s) => s,
            Err(e) => return items.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut evaluators: std::collections::HashMap<&SubjectRef, Evaluator<'_>> =
            std::collections::HashMap::new();
        let mut answered: std::collections::HashMap<&(ObjectRef, String, SubjectRef), usize> =
            std::collections::HashMap::new();
        let mut out: Vec<Result<Decision, Error>> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let Some(&j) = answered.get(item) {
                let again = out[j].clone();
                out.push(again);
                continue;
            }
            let (resource, permission, subject) = item;
            let result = match validate_check(&schema, resource, permission, subject)
                .and_then(|()| self.fast_check(&plan, &at, resource, permission, subject))
            {
                Err(e) => Err(e),
                Ok(Some(decision)) => Ok(decision),
                Ok(None) => {
                    self.metrics.general_answers.fetch_add(1, Ordering::Relaxed);
                    let eval = evaluators
                        .entry(subject)
                        .or_insert_with(|| self.evaluator_with(schema.clone(), at.clone()));
                    eval.check(resource, permission, subject, 0, None)
                        .await
                        .map(|o| o.decision)
                }
            };
            answered.insert(item, i);
            out.push(result);
        }
        for eval in evaluators.values() {
            eval.record_work();
        }
        out
    }

    /// Expands at the head revision.
    pub async fn expand(
        &self,
        resource: &ObjectRef,
        permission: &str,
    ) -> Result<ExpandTree, Error> {
        let at = self.store.head_revision().await?;
        self.expand_at(at.clone(), resource, permission).await
    }

    /// The userset tree of `resource#permission` at `at`.
    #[tracing::instrument(level = "debug", name = "expand", skip_all,
        fields(resource_type = %resource.object_type, permission = %permission))]
    pub async fn expand_at(
        &self,
        at: Revision,
        resource: &ObjectRef,
        permission: &str,
    ) -> Result<ExpandTree, Error> {
        let eval = self.evaluator(at.clone()).await?;
        validate_object(&eval.schema, resource)?;
        validate_member(&eval.schema, &resource.object_type, permission)?;
        eval.expand(resource, permission).await
    }
}

/// `rel` as `schema` allows it, else the schema violation.
fn conforms(schema: &Schema, rel: &Relationship) -> Result<(), Error> {
    schema
        .check_relationship(rel)
        .map_err(|reason| Error::SchemaViolation {
            relationship: rel.to_string(),
            reason,
        })
}

fn validate_relationship(rel: &Relationship) -> Result<(), Error> {
    let bad = |e: String| Error::InvalidArgument(format!("relationship `{rel}`: {e}"));
    validate_type_name(&rel.resource.object_type).map_err(bad)?;
    validate_object_id(&rel.resource.object_id).map_err(bad)?;
    validate_name(&rel.relation).map_err(bad)?;
    validate_type_name(&rel.subject.object.object_type).map_err(bad)?;
    if !rel.subject.is_wildcard() {
        validate_object_id(&rel.subject.object.object_id).map_err(bad)?;
    } else if rel.subject.relation.is_some() {
        return Err(bad("a wildcard subject cannot have a relation".into()));
    }
    if let Some(r) = &rel.subject.relation {
        validate_name(r).map_err(bad)?;
    }
    Ok(())
}

fn validate_object(schema: &Schema, object: &ObjectRef) -> Result<(), Error> {
    validate_type_name(&object.object_type).map_err(Error::InvalidArgument)?;
    validate_object_id(&object.object_id).map_err(Error::InvalidArgument)?;
    if schema.definition(&object.object_type).is_none() {
        return Err(Error::UnknownType(object.object_type.clone()));
    }
    Ok(())
}

fn validate_member(schema: &Schema, object_type: &str, member: &str) -> Result<MemberKind, Error> {
    validate_name(member).map_err(Error::InvalidArgument)?;
    schema
        .definition(object_type)
        .and_then(|d| d.member_kind(member))
        .ok_or_else(|| Error::UnknownMember {
            object_type: object_type.to_string(),
            member: member.to_string(),
        })
}

fn validate_check(
    schema: &Schema,
    resource: &ObjectRef,
    permission: &str,
    subject: &SubjectRef,
) -> Result<(), Error> {
    validate_object(schema, resource)?;
    validate_member(schema, &resource.object_type, permission)?;
    if subject.is_wildcard() {
        return Err(Error::InvalidArgument(format!(
            "cannot check the wildcard subject `{subject}`; check a concrete subject"
        )));
    }
    validate_object(schema, &subject.object)?;
    if let Some(r) = &subject.relation {
        validate_member(schema, &subject.object.object_type, r)?;
    }
    Ok(())
}

fn validate_filter(schema: &Schema, filter: &RelationshipFilter) -> Result<(), Error> {
    if let Some(t) = &filter.resource_type {
        if schema.definition(t).is_none() {
            return Err(Error::UnknownType(t.clone()));
        }
        if let Some(r) = &filter.relation {
            validate_member(schema, t, r)?;
        }
    }
    if let Some(s) = &filter.subject {
        if schema.definition(&s.subject_type).is_none() {
            return Err(Error::UnknownType(s.subject_type.clone()));
        }
        if let Some(Some(r)) = &s.relation {
            validate_member(schema, &s.subject_type, r)?;
        }
    }
    Ok(())
}

/// MUST_NOT_MATCH filters for every relationship the old schema allowed and
/// the new one does not: removed definitions, removed relations, removed
/// subject types.
fn orphan_filters(old: &Schema, new: &Schema) -> Vec<Precondition> {
    let mut out = Vec::new();
    let mut push = |filter| {
        out.push(Precondition {
            kind: PreconditionKind::MustNotMatch,
            filter,
        })
    };
    for (name, def) in &old.definitions {
        let Some(new_def) = new.definition(name) else {
            push(RelationshipFilter {
                resource_type: Some(name.clone()),
                ..Default::default()
            });
            continue;
        };
        for (rname, rel) in &def.relations {
            let Some(new_rel) = new_def.relations.get(rname) else {
                push(RelationshipFilter {
                    resource_type: Some(name.clone()),
                    relation: Some(rname.clone()),
                    ..Default::default()
                });
                continue;
            };
            for allowed in &rel.allowed {
                if new_rel.allowed.contains(allowed) {
                    continue;
                }
                let subject = match allowed {
                    AllowedType::Direct(t) => SubjectFilter {
                        subject_type: t.clone(),
                        relation: Some(None),
                        exclude_wildcard: true,
                        ..Default::default()
                    },
                    AllowedType::Wildcard(t) => SubjectFilter {
                        subject_type: t.clone(),
                        subject_ids: vec![crate::model::WILDCARD_ID.to_string()],
                        relation: Some(None),
                        ..Default::default()
                    },
                    AllowedType::Userset(t, r) => SubjectFilter {
                        subject_type: t.clone(),
                        relation: Some(Some(r.clone())),
                        ..Default::default()
                    },
                };
                push(RelationshipFilter {
                    resource_type: Some(name.clone()),
                    relation: Some(rname.clone()),
                    subject: Some(subject),
                    ..Default::default()
                });
            }
        }
    }
    out
}

fn describe_orphan(filter: &RelationshipFilter) -> String {
    let t = filter.resource_type.as_deref().unwrap_or("?");
    match (&filter.relation, &filter.subject) {
        (None, _) => format!("definition `{t}` is removed but relationships on it exist"),
        (Some(r), None) => format!("relation `{t}#{r}` is removed but relationships on it exist"),
        (Some(r), Some(s)) => {
            let what = match &s.relation {
                Some(Some(sr)) => format!("{}#{sr}", s.subject_type),
                _ if s.subject_ids.first().map(String::as_str) == Some("*") => {
                    format!("{}:*", s.subject_type)
                }
                _ => s.subject_type.clone(),
            };
            format!(
                "subject type `{what}` is removed from relation `{t}#{r}` but relationships with it exist"
            )
        }
    }
}
