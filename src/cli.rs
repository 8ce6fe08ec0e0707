//! The `kinbar` command line: argument parsing, the server (`serve`), the
//! offline commands (`validate`, `schema check|fmt`) and the client commands
//! (`schema read|write`, `check`, `expand`, `rel ...`). Each command is a thin
//! layer over the library; exit status 0 = success/allowed, 1 =
//! failed/denied, 2 = error.

pub mod client;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::model::Operation;
use crate::model::{ObjectRef, Relationship, SubjectRef};
use crate::schema::{self, Severity};
use client::{Connection, describe};

#[derive(Debug, Parser)]
#[command(
    name = "kinbar",
    version,
    about = "Zanzibar-style authorization service"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (embedded memory datastore by default).
    Serve(Box<crate::config::ServeArgs>),
    /// Check a permission on a server: RESOURCE PERMISSION SUBJECT.
    /// Exit status 0 = allowed, 1 = denied, 2 = error.
    Check {
        resource: String,
        permission: String,
        subject: String,
        #[arg(long)]
        json: bool,
        /// Also print the userset tree at the same revision, marking where the subject appears.
        #[arg(long)]
        explain: bool,
    },
    /// Print the userset tree of RESOURCE PERMISSION.
    Expand {
        resource: String,
        permission: String,
        #[arg(long)]
        json: bool,
    },
    /// Resources of TYPE on which SUBJECT has PERMISSION (access reviews).
    LookupResources {
        resource_type: String,
        permission: String,
        subject: String,
    },
    /// Subjects of TYPE (or TYPE#relation) that have PERMISSION on RESOURCE.
    LookupSubjects {
        resource: String,
        permission: String,
        subject_type: String,
    },
    /// Read, follow or verify the audit trail (admin scope).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Bulk-load relationships from a file (one per line; `//` comments) in one transaction.
    Import { file: PathBuf },
    /// Print every relationship (the format `import` reads).
    Export,
    /// Stream relationship changes as they commit (`+` written, `-` deleted).
    Watch,
    /// Write, delete and read relationships on a server.
    Rel {
        #[command(subcommand)]
        command: RelCommand,
    },
    /// Check SpiceDB validation files: assertions and expected relations.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also check that Check, Expand, LookupResources and LookupSubjects agree for every object in each file.
        #[arg(long)]
        exhaustive: bool,
    },
    /// Create or upgrade the Postgres datastore's tables (versioned
    /// migrations; safe to run again). `kinbar serve` refuses an
    /// unmigrated or newer database.
    Migrate {
        /// `postgres://…` URL.
        #[arg(long, env = "KINBAR_DATASTORE")]
        datastore: String,
    },
    /// Offline schema tools.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuditFilterArgs {
    /// Only changes made by this key name.
    #[arg(long)]
    pub actor: Option<String>,
    /// Only changes touching this object (`type:id`) as resource or subject.
    #[arg(long)]
    pub object: Option<String>,
    #[arg(long)]
    pub relation: Option<String>,
    /// Only changes with this subject (`type:id[#relation]`).
    #[arg(long)]
    pub subject: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print audit transactions, oldest first.
    Read(AuditFilterArgs),
    /// Print audit transactions as they commit (after the existing ones).
    Tail(AuditFilterArgs),
    /// Recompute the hash chain; exit 1 and name the first broken transaction if altered.
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum RelCommand {
    /// Create relationships (fails if one exists): `doc:1#viewer@user:anna`...
    Create { relationships: Vec<String> },
    /// Create or keep relationships.
    Touch { relationships: Vec<String> },
    /// Delete relationships.
    Delete { relationships: Vec<String> },
    /// Offboarding: move every relationship of subject FROM to subject TO in
    /// one atomic write (FROM loses access exactly when TO gains it).
    Handover { from: String, to: String },
    /// Read relationships matching `type[:id][#relation][@subject_type[:id][#relation]]`.
    Read {
        filter: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Print the schema stored on a server.
    Read,
    /// Write a schema file to a server.
    Write { file: PathBuf },
    /// Type-check a schema file; prints errors and warnings.
    Check { file: PathBuf },
    /// Print a schema file in canonical layout.
    Fmt {
        file: PathBuf,
        /// Rewrite the file in place instead of printing.
        #[arg(long)]
        write: bool,
    },
}

/// Runs a parsed command line; returns the process exit status.
pub async fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Validate { files, exhaustive } => {
            let (out, code) =
                crate::validate::run_files(&files, &crate::validate::Options { exhaustive }).await;
            print!("{out}");
            code
        }
        Command::Serve(args) => serve(*args).await,
        Command::Migrate { datastore } => migrate(&datastore).await,
        Command::Schema {
            command: SchemaCommand::Read,
        } => schema_read(&cli.connection).await,
        Command::Schema {
            command: SchemaCommand::Write { file },
        } => schema_write(&cli.connection, &file).await,
        Command::Schema { command } => schema_command(command),
        Command::Check {
            resource,
            permission,
            subject,
            json,
            explain,
        } => {
            check(
                &cli.connection,
                &resource,
                &permission,
                &subject,
                json,
                explain,
            )
            .await
        }
        Command::Expand {
            resource,
            permission,
            json,
        } => expand(&cli.connection, &resource, &permission, json).await,
        Command::Rel { command } => rel(&cli.connection, command).await,
        Command::Audit { command } => audit(&cli.connection, command).await,
        Command::Import { file } => import(&cli.connection, &file).await,
        Command::Export => export(&cli.connection).await,
        Command::Watch => watch(&cli.connection).await,
        Command::LookupResources {
            resource_type,
            permission,
            subject,
        } => lookup_resources(&cli.connection, &resource_type, &permission, &subject).await,
        Command::LookupSubjects {
            resource,
            permission,
            subject_type,
        } => lookup_subjects(&cli.connection, &resource, &permission, &subject_type).await,
    }
}

async fn audit(conn: &Connection, command: AuditCommand) -> i32 {
    use crate::api::proto::kinbar::v1 as kpb;
    let mut c = match conn.connect().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let (args, follow) = match command {
        AuditCommand::Verify => {
            return match c.audit.verify_audit(kpb::VerifyAuditRequest {}).await {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.intact {
                        println!("ok  {} (head {})", r.message, r.head_hash);
                        0
                    } else {
                        println!("BROKEN  {}", r.message);
                        1
                    }
                }
                Err(s) => fail(describe(&s)),
            };
        }
        AuditCommand::Read(a) => (a, false),
        AuditCommand::Tail(a) => (a, true),
    };
    let req = kpb::ReadAuditRequest {
        optional_actor: args.actor.clone().unwrap_or_default(),
        optional_object: args.object.clone().unwrap_or_default(),
        optional_relation: args.relation.clone().unwrap_or_default(),
        optional_subject: args.subject.clone().unwrap_or_default(),
        follow,
        ..Default::default()
    };
    let stream = match c.audit.read_audit(req).await {
        Ok(s) => s.into_inner(),
        Err(s) => return fail(describe(&s)),
    };
    let printed = client::drain(stream, |r| {
        let Some(t) = r.transaction else {
            return Ok(());
        };
        let meta = serde_json::Value::Object(
            crate::api::convert::metadata(t.metadata.as_ref())
                .into_iter()
                .collect(),
        );
        let when = t
            .committed_at
            .map(|ts| ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000)
            .unwrap_or_default();
        let changes: Vec<String> = t
            .changes
            .iter()
            .map(|ch| format!("{} {}", ch.operation, ch.relationship))
            .collect();
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "sequence": t.sequence, "committed_at_ms": when, "actor": t.actor,
                    "request_id": t.request_id, "metadata": meta, "changes": changes,
                    "schema_changed": t.schema_changed, "hash": t.hash,
                })
            );
        } else {
            let schema = if t.schema_changed {
                " [schema changed]"
            } else {
                ""
            };
            let when = crate::audit::rfc3339(u64::try_from(when).unwrap_or(0));
            println!("#{} {when} by {} {meta}{schema}", t.sequence, t.actor);
            for ch in &changes {
                println!("    {ch}");
            }
        }
        Ok(())
    })
    .await;
    match printed {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

async fn import(conn: &Connection, file: &PathBuf) -> i32 {
    use crate::api::proto::authzed::api::v1 as pb;
    let text = match read(file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let mut rels = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") || line.starts_with('#') {
            continue;
        }
        match line.parse::<Relationship>() {
            Ok(r) => rels.push(crate::api::convert::relationship_pb(&r)),
            Err(e) => return fail(format!("{}:{}: {e}", file.display(), i + 1)),
        }
    }
    let mut c = match conn.connect().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let batches: Vec<pb::ImportBulkRelationshipsRequest> = rels
        .chunks(1000)
        .map(|c| pb::ImportBulkRelationshipsRequest {
            relationships: c.to_vec(),
        })
        .collect();
    match c
        .permissions
        .import_bulk_relationships(tokio_stream::iter(batches))
        .await
    {
        Ok(r) => {
            println!("imported {} relationship(s)", r.get_ref().num_loaded);
            0
        }
        Err(s) => fail(describe(&s)),
    }
}

async fn export(conn: &Connection) -> i32 {
    use crate::api::proto::authzed::api::v1 as pb;
    let mut c = match conn.connect().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let req = pb::ExportBulkRelationshipsRequest {
        consistency: client::fully_consistent(),
        optional_limit: 0,
        optional_cursor: None,
        optional_relationship_filter: None,
    };
    let stream = match c.permissions.export_bulk_relationships(req).await {
        Ok(s) => s.into_inner(),
        Err(s) => return fail(describe(&s)),
    };
    let printed = client::drain(stream, |batch| {
        for r in &batch.relationships {
            match crate::api::convert::relationship(Some(r), "relationship") {
                Ok(rel) => println!("{rel}"),
                Err(s) => return Err(describe(&s)),
            }
        }
        Ok(())
    })
    .await;
    match printed {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

async fn watch(conn: &Connection) -> i32 {
    use crate::api::proto::authzed::api::v1 as pb;
    let mut c = match conn.connect().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let req = pb::WatchRequest {
        optional_object_types: vec![],
        optional_start_cursor: None,
        optional_relationship_filters: vec![],
        optional_update_kinds: vec![],
    };
    let stream = match c.watch.watch(req).await {
        Ok(s) => s.into_inner(),
        Err(s) => return fail(describe(&s)),
    };
    let printed = client::drain(stream, |change| {
        let meta = serde_json::Value::Object(
            crate::api::convert::metadata(change.optional_transaction_metadata.as_ref())
                .into_iter()
                .collect(),
        );
        if change.schema_updated {
            println!("* schema updated {meta}");
        }
        for u in &change.updates {
            let deleted = u.operation == pb::relationship_update::Operation::Delete as i32;
            let sign = if deleted { '-' } else { '+' };
            match crate::api::convert::relationship(u.relationship.as_ref(), "relationship") {
                Ok(rel) => println!("{sign} {rel} {meta}"),
                Err(s) => return Err(describe(&s)),
            }
        }
        Ok(())
    })
    .await;
    match printed {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

async fn lookup_resources(
    conn: &Connection,
    resource_type: &str,
    permission: &str,
    subject: &str,
) -> i32 {
    use crate::api::proto::authzed::api::v1 as pb;
    let subject = match subject.parse::<SubjectRef>() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let mut c = match conn.connect().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let req = pb::LookupResourcesRequest {
        consistency: client::fully_consistent(),
        resource_object_type: resource_type.to_string(),
        permission: permission.to_string(),
        subject: Some(crate::api::convert::subject_pb(&subject)),
        context: None,
        optional_limit: 0,
        optional_cursor: None,
        with_debug: false,
    };
    let stream = match c.permissions.lookup_resources(req).await {
        Ok(s) => s.into_inner(),
        Err(s) => return fail(describe(&s)),
    };
    let printed = client::drain(stream, |r| {
        println!("{resource_type}:{}", r.resource_object_id);
        Ok(())
    })
    .await;
    match printed {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

async fn lookup_subjects(
    conn: &Connection,
    resource: &str,
    permission: &str,
    subject_type: &str,
) -> i32 {
    use crate::api::proto::authzed::api::v1 as pb;
    let resource = match resource.parse::<ObjectRef>() {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let (subject_type, relation) = match subject_type.split_once('#') {
        Some((t, r)) => (t.to_string(), r.to_string()),
        None => (subject_type.to_string(), String::new()),
    };
    let mut c = match conn.connect().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let req = pb::LookupSubjectsRequest {
        consistency: client::fully_consistent(),
        resource: Some(crate::api::convert::object_pb(&resource)),
        permission: permission.to_string(),
        subject_object_type: subject_type.clone(),
        optional_subject_relation: relation.clone(),
        context: None,
        optional_concrete_limit: 0,
        optional_cursor: None,
        wildcard_option: 0,
    };
    let stream = match c.permissions.lookup_subjects(req).await {
        Ok(s) => s.into_inner(),
        Err(s) => return fail(describe(&s)),
    };
    let suffix = if relation.is_empty() {
        String::new()
    } else {
        format!("#{relation}")
    };
    let printed = client::drain(stream, |r| {
        let id = r.subject.map(|s| s.subject_object_id).unwrap_or_default();
        let excluded: Vec<String> = r
            .excluded_subjects
            .iter()
            .map(|e| format!("{subject_type}:{}", e.subject_object_id))
            .collect();
        if excluded.is_empty() {
            println!("{subject_type}:{id}{suffix}");
        } else {
            println!(
                "{subject_type}:{id}{suffix} (except {})",
                excluded.join(", ")
            );
        }
        Ok(())
    })
    .await;
    match printed {
        Ok(()) => 0,
        Err(e) => fail(e),
    }
}

async fn migrate(url: &str) -> i32 {
    if !crate::server::is_postgres_url(url) {
        eprintln!(
            "error: `kinbar migrate` needs a postgres:// URL (the memory datastore needs no migration)"
        );
        return 2;
    }
    match crate::store::postgres::PostgresStore::migrate(url).await {
        Ok(applied) if applied.is_empty() => {
            println!("the database is up to date");
            0
        }
        Ok(applied) => {
            for v in applied {
                println!("applied migration {v}");
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

async fn serve(args: crate::config::ServeArgs) -> i32 {
    let config = match crate::config::Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    crate::telemetry::init_logging(&config.log_format);
    let listener = match tokio::net::TcpListener::bind(config.grpc_addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", config.grpc_addr);
            return 2;
        }
    };
    match crate::server::run(config, listener, shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("error: {msg}");
    2
}

async fn schema_read(conn: &Connection) -> i32 {
    let mut c = match conn.connect().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match c
        .schema
        .read_schema(crate::api::proto::authzed::api::v1::ReadSchemaRequest {})
        .await
    {
        Ok(r) => {
            print!("{}", r.get_ref().schema_text);
            0
        }
        Err(s) => fail(describe(&s)),
    }
}

async fn schema_write(conn: &Connection, file: &PathBuf) -> i32 {
    let text = match read(file) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let mut c = match conn.connect().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let req = crate::api::proto::authzed::api::v1::WriteSchemaRequest { schema: text };
    match c.schema.write_schema(req).await {
        Ok(r) => {
            let token = r
                .get_ref()
                .written_at
                .as_ref()
                .map(|t| t.token.clone())
                .unwrap_or_default();
            println!("schema written at {token}");
            0
        }
        Err(s) => fail(describe(&s)),
    }
}

async fn check(
    conn: &Connection,
    resource: &str,
    permission: &str,
    subject: &str,
    json: bool,
    explain: bool,
) -> i32 {
    let (resource, subject) = match (resource.parse::<ObjectRef>(), subject.parse::<SubjectRef>()) {
        (Ok(r), Ok(s)) => (r, s),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    let mut c = match conn.connect().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match c
        .permissions
        .check_permission(client::check_request(&resource, permission, &subject))
        .await
    {
        Ok(r) => {
            use crate::api::proto::authzed::api::v1::check_permission_response::Permissionship as P;
            let r = r.into_inner();
            let p = P::try_from(r.permissionship).unwrap_or(P::Unspecified);
            let checked_at = r.checked_at.clone();
            let token = r.checked_at.map(|t| t.token).unwrap_or_default();
            let allowed = p == P::HasPermission;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"permissionship": p.as_str_name(), "allowed": allowed, "checked_at": token})
                );
            } else {
                println!(
                    "{}",
                    if allowed {
                        "allowed"
                    } else if p == P::ConditionalPermission {
                        "conditional"
                    } else {
                        "denied"
                    }
                );
            }
            if explain {
                let req = crate::api::proto::authzed::api::v1::ExpandPermissionTreeRequest {
                    consistency: checked_at.map(|t| crate::api::proto::authzed::api::v1::Consistency {
                        requirement: Some(
                            crate::api::proto::authzed::api::v1::consistency::Requirement::AtExactSnapshot(t),
                        ),
                    }),
                    resource: Some(crate::api::convert::object_pb(&resource)),
                    permission: permission.to_string(),
                };
                match c.permissions.expand_permission_tree(req).await {
                    Ok(t) => {
                        let mut out = String::new();
                        if let Some(t) = &t.get_ref().tree_root {
                            client::render_tree(t, 0, &mut out);
                        }
                        print!("{}", mark_subject(&out, &subject));
                    }
                    Err(s) => return fail(describe(&s)),
                }
            }
            if allowed { 0 } else { 1 }
        }
        Err(s) => fail(describe(&s)),
    }
}

/// Marks the leaf lines of a rendered tree that list `subject` or its
/// type's wildcard; usersets in leaves are where the evaluation continues.
fn mark_subject(tree: &str, subject: &SubjectRef) -> String {
    let me = subject.to_string();
    let wildcard = format!("{}:*", subject.object.object_type);
    tree.lines()
        .map(|line| {
            let listed = line
                .split_once(": [")
                .map(|(_, rest)| {
                    rest.trim_end_matches(']')
                        .split(", ")
                        .any(|s| s == me || s == wildcard)
                })
                .unwrap_or(false);
            if listed {
                format!("{line}   <- {me}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

async fn expand(conn: &Connection, resource: &str, permission: &str, json: bool) -> i32 {
    let resource = match resource.parse::<ObjectRef>() {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut c = match conn.connect().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let req = crate::api::proto::authzed::api::v1::ExpandPermissionTreeRequest {
        consistency: client::fully_consistent(),
        resource: Some(crate::api::convert::object_pb(&resource)),
        permission: permission.to_string(),
    };
    match c.permissions.expand_permission_tree(req).await {
        Ok(r) => {
            let mut out = String::new();
            if let Some(t) = &r.get_ref().tree_root {
                client::render_tree(t, 0, &mut out);
            }
            if json {
                println!("{}", serde_json::json!({"tree": out}));
            } else {
                print!("{out}");
            }
            0
        }
        Err(s) => fail(describe(&s)),
    }
}

async fn rel(conn: &Connection, command: RelCommand) -> i32 {
    let (op, texts) = match command {
        RelCommand::Create { relationships } => (Operation::Create, relationships),
        RelCommand::Touch { relationships } => (Operation::Touch, relationships),
        RelCommand::Delete { relationships } => (Operation::Delete, relationships),
        RelCommand::Read { filter, json } => return rel_read(conn, &filter, json).await,
        RelCommand::Handover { from, to } => return handover(conn, &from, &to).await,
    };
    if texts.is_empty() {
        return fail("give at least one relationship, e.g. doc:1#viewer@user:anna");
    }
    let mut updates = Vec::new();
    for t in &texts {
        match t.parse::<Relationship>() {
            Ok(r) => updates.push(client::update(op, &r)),
            Err(e) => return fail(e),
        }
    }
    let mut c = match conn.connect().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let metadata = conn.reason.as_ref().map(|r| {
        crate::api::convert::json_struct(&[("reason".to_string(), serde_json::json!(r))].into())
    });
    let req = crate::api::proto::authzed::api::v1::WriteRelationshipsRequest {
        updates,
        optional_preconditions: vec![],
        optional_transaction_metadata: metadata,
    };
    match c.permissions.write_relationships(req).await {
        Ok(r) => {
            let token = r
                .get_ref()
                .written_at
                .as_ref()
                .map(|t| t.token.clone())
                .unwrap_or_default();
            let done = match op {
                Operation::Create => "created",
                Operation::Touch => "touched",
                Operation::Delete => "deleted",
            };
            println!("{} relationship(s) {done} at {token}", texts.len());
            0
        }
        Err(s) => fail(describe(&s)),
    }
}

async fn handover(conn: &Connection, from: &str, to: &str) -> i32 {
    use crate::api::proto::authzed::api::v1 as pb;
    let (from, to) = match (from.parse::<SubjectRef>(), to.parse::<SubjectRef>()) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    if from.object.object_type != to.object.object_type
        || from.relation != to.relation
        || from.is_wildcard()
        || to.is_wildcard()
    {
        return fail("FROM and TO must be concrete subjects of the same type (and relation)");
    }
    let mut c = match conn.connect().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let filter = pb::RelationshipFilter {
        optional_subject_filter: Some(pb::SubjectFilter {
            subject_type: from.object.object_type.clone(),
            optional_subject_id: from.object.object_id.clone(),
            optional_relation: Some(pb::subject_filter::RelationFilter {
                relation: from.relation.clone().unwrap_or_default(),
            }),
        }),
        ..Default::default()
    };
    let owned = match client::read_relationships(&mut c, filter).await {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    if owned.is_empty() {
        println!("{from} has no relationships; nothing to hand over");
        return 0;
    }
    let mut updates = Vec::new();
    for rel in &owned {
        updates.push(client::update(Operation::Delete, rel));
        let mut moved = rel.clone();
        moved.subject = to.clone();
        updates.push(client::update(Operation::Touch, &moved));
    }
    let reason = conn
        .reason
        .clone()
        .unwrap_or_else(|| format!("handover from {from} to {to}"));
    let metadata = crate::api::convert::json_struct(
        &[("reason".to_string(), serde_json::json!(reason))].into(),
    );
    let req = pb::WriteRelationshipsRequest {
        updates,
        optional_preconditions: vec![],
        optional_transaction_metadata: Some(metadata),
    };
    match c.permissions.write_relationships(req).await {
        Ok(r) => {
            let token = r
                .get_ref()
                .written_at
                .as_ref()
                .map(|t| t.token.clone())
                .unwrap_or_default();
            println!(
                "{} relationship(s) handed over from {from} to {to} at {token}",
                owned.len()
            );
            0
        }
        Err(s) => fail(describe(&s)),
    }
}

async fn rel_read(conn: &Connection, filter: &str, json: bool) -> i32 {
    let filter = match client::parse_filter(filter) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let mut c = match conn.connect().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match client::read_relationships(&mut c, filter).await {
        Ok(rels) => {
            for rel in rels {
                if json {
                    println!("{}", serde_json::json!({"relationship": rel.to_string()}));
                } else {
                    println!("{rel}");
                }
            }
            0
        }
        Err(e) => fail(e),
    }
}

fn read(file: &PathBuf) -> Result<String, i32> {
    std::fs::read_to_string(file).map_err(|e| {
        eprintln!("error: cannot read {}: {e}", file.display());
        2
    })
}

fn schema_command(command: SchemaCommand) -> i32 {
    match command {
        SchemaCommand::Read | SchemaCommand::Write { .. } => {
            fail("schema read/write talk to a server; they are handled in `run`")
        }
        SchemaCommand::Check { file } => {
            let src = match read(&file) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let name = file.display().to_string();
            match schema::compile(&src, &schema::Limits::default()) {
                Ok(c) => {
                    for w in &c.warnings {
                        eprint!("{}", w.render(&name, &src));
                    }
                    println!(
                        "ok  {name}  ({} definitions, {} warnings)",
                        c.schema.definitions.len(),
                        c.warnings.len()
                    );
                    0
                }
                Err(e) => {
                    eprint!("{}", e.render(&name));
                    let n = e
                        .diagnostics
                        .iter()
                        .filter(|d| d.severity == Severity::Error)
                        .count();
                    eprintln!("{name}: {n} error(s)");
                    2
                }
            }
        }
        SchemaCommand::Fmt { file, write } => {
            let src = match read(&file) {
                Ok(s) => s,
                Err(code) => return code,
            };
            match schema::parse_ast(&src, &schema::Limits::default()) {
                Ok(ast) => {
                    let out = schema::format::format(&ast);
                    if write {
                        if let Err(e) = std::fs::write(&file, out) {
                            eprintln!("error: cannot write {}: {e}", file.display());
                            return 2;
                        }
                    } else {
                        print!("{out}");
                    }
                    0
                }
                Err(e) => {
                    eprint!("{}", e.render(&file.display().to_string()));
                    2
                }
            }
        }
    }
}
