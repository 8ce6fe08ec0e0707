//! The `kinbar` command line: argument parsing and dispatch. The commands
//! live by concern: `offline` (serve, migrate, validate, schema check|fmt),
//! `permissions` (schema read|write, check, expand), `relationships` (rel,
//! handover, import, export, watch), `lookups`, `audit`; `client` holds the
//! connection and what every client command shares. Each command is a thin
//! layer over the library returning `Result<ExitCode, CliError>`: exit
//! status 0 = success/allowed, 1 = failed/denied, 2 = error.

mod audit;
pub mod client;
mod lookups;
mod offline;
mod permissions;
mod relationships;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use client::Connection;

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
        /// One JSON object per line, with the revision read at.
        #[arg(long)]
        json: bool,
    },
    /// Subjects of TYPE (or TYPE#relation) that have PERMISSION on RESOURCE.
    LookupSubjects {
        resource: String,
        permission: String,
        subject_type: String,
        /// One JSON object per line, with the revision read at.
        #[arg(long)]
        json: bool,
    },
    /// Access review at one revision: every resource and permission a
    /// subject holds (--subject), or every subject per permission of a
    /// resource (--resource); CSV, or one JSON document with --json.
    Review {
        #[arg(
            long,
            conflicts_with = "resource",
            required_unless_present = "resource"
        )]
        subject: Option<String>,
        #[arg(long)]
        resource: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Read, follow or verify the audit trail (admin scope).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Bulk-load relationships from a file (one per line; `//` comments) in one transaction.
    Import { file: PathBuf },
    /// Print every relationship (the format `import` reads).
    Export {
        /// One JSON object per line (`relationship`); all at one revision.
        #[arg(long)]
        json: bool,
    },
    /// Stream relationship changes as they commit (`+` written, `-` deleted).
    Watch {
        /// One JSON object per transaction (`revision`, `metadata`,
        /// `schema_updated`, `changes`).
        #[arg(long)]
        json: bool,
        /// Start after this revision (a `revision` printed by `--json`, or
        /// any ZedToken) instead of at the head: a consumer that stores the
        /// last revision it handled resumes after a restart without missing
        /// a change. Refused once the revision is older than the server's
        /// history (GC window).
        #[arg(long, value_name = "REVISION")]
        since: Option<String>,
    },
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
    /// Offboarding: remove every relationship whose subject is SUBJECT (or,
    /// with --handover, give each to SUCCESSOR) in one audited transaction,
    /// for any number of relationships; fails (retry) if SUBJECT's
    /// relationships change while it runs.
    Offboard {
        /// `type:id[#relation]`, e.g. `user:anna`.
        subject: String,
        /// Who takes over (same type and relation).
        #[arg(long, value_name = "SUCCESSOR")]
        handover: Option<String>,
        /// Print what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Create or upgrade the Postgres datastore's tables (versioned
    /// migrations; safe to run again). `kinbar serve` refuses an
    /// unmigrated or newer database.
    Migrate {
        /// `postgres://…` URL (as the migration role, which owns the tables).
        #[arg(
            long,
            env = "KINBAR_DATASTORE",
            required_unless_present_any = ["print_grants", "datastore_file"]
        )]
        datastore: Option<String>,
        /// Read the URL from this file instead (a mounted Secret: keeps the
        /// password out of the environment and the process list).
        #[arg(long, env = "KINBAR_DATASTORE_FILE", conflicts_with = "datastore")]
        datastore_file: Option<std::path::PathBuf>,
        /// Print the GRANTs a least-privilege runtime role ROLE needs for
        /// `kinbar serve`, instead of migrating.
        #[arg(long, value_name = "ROLE")]
        print_grants: Option<String>,
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
    /// Print the security events instead: calls Kinbar refused (a key's
    /// refusals one by one, calls without a valid key per peer and minute).
    #[arg(long, conflicts_with_all = ["actor", "object", "relation", "subject"])]
    pub security: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print audit transactions, oldest first.
    Read(AuditFilterArgs),
    /// Print audit transactions as they commit (after the existing ones).
    Tail(AuditFilterArgs),
    /// Recompute the hash chain; exit 1 and name the first broken transaction if altered.
    Verify {
        /// Also replay the audited changes and compare them with the stored
        /// relationships: exit 1 if any relationship is unaccounted for.
        #[arg(long)]
        complete: bool,
        /// The result as one JSON document.
        #[arg(long)]
        json: bool,
    },
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
    Read {
        /// One JSON document (`schema`, `read_at`).
        #[arg(long)]
        json: bool,
    },
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

/// A command that could not do its job: reported as `error: …` on stderr,
/// exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Message(String),
    /// Already reported on stderr (e.g. compiler-style diagnostics).
    #[error("see the messages above")]
    Reported,
}

impl CliError {
    /// An error from anything printable (parse errors, I/O errors…).
    pub fn msg(e: impl std::fmt::Display) -> Self {
        CliError::Message(e.to_string())
    }
}

impl From<String> for CliError {
    fn from(s: String) -> Self {
        CliError::Message(s)
    }
}

impl From<&str> for CliError {
    fn from(s: &str) -> Self {
        CliError::Message(s.to_string())
    }
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Message(client::describe(&s))
    }
}

/// What a command returns.
pub type CliResult = Result<ExitCode, CliError>;

/// Exit status 1: the command worked and the answer is "no" (denied,
/// failed assertion, broken chain).
pub(crate) fn no() -> CliResult {
    Ok(ExitCode::from(1))
}

/// Runs a parsed command line; returns the process exit status.
pub async fn run(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(code) => code,
        Err(CliError::Reported) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(cli: Cli) -> CliResult {
    let conn = &cli.connection;
    match cli.command {
        Command::Validate { files, exhaustive } => offline::validate(&files, exhaustive).await,
        Command::Serve(args) => offline::serve(*args).await,
        Command::Offboard {
            subject,
            handover,
            dry_run,
            json,
        } => relationships::offboard(conn, &subject, handover.as_deref(), dry_run, json).await,
        Command::Migrate {
            datastore,
            datastore_file,
            print_grants,
        } => {
            let datastore = match datastore_file {
                Some(path) => Some(crate::config::read_secret_file(&path).map_err(CliError::msg)?),
                None => datastore,
            };
            offline::migrate(datastore.as_deref(), print_grants.as_deref()).await
        }
        Command::Schema {
            command: SchemaCommand::Read { json },
        } => permissions::schema_read(conn, json).await,
        Command::Schema {
            command: SchemaCommand::Write { file },
        } => permissions::schema_write(conn, &file).await,
        Command::Schema {
            command: SchemaCommand::Check { file },
        } => offline::schema_check(&file),
        Command::Schema {
            command: SchemaCommand::Fmt { file, write },
        } => offline::schema_fmt(&file, write),
        Command::Check {
            resource,
            permission,
            subject,
            json,
            explain,
        } => permissions::check(conn, &resource, &permission, &subject, json, explain).await,
        Command::Expand {
            resource,
            permission,
            json,
        } => permissions::expand(conn, &resource, &permission, json).await,
        Command::Rel { command } => relationships::rel(conn, command).await,
        Command::Audit { command } => audit::audit(conn, command).await,
        Command::Import { file } => relationships::import(conn, &file).await,
        Command::Export { json } => relationships::export(conn, json).await,
        Command::Watch { json, since } => relationships::watch(conn, json, since).await,
        Command::LookupResources {
            resource_type,
            permission,
            subject,
            json,
        } => lookups::lookup_resources(conn, &resource_type, &permission, &subject, json).await,
        Command::LookupSubjects {
            resource,
            permission,
            subject_type,
            json,
        } => lookups::lookup_subjects(conn, &resource, &permission, &subject_type, json).await,
        Command::Review {
            subject,
            resource,
            json,
        } => lookups::review(conn, subject.as_deref(), resource.as_deref(), json).await,
    }
}

/// Reads a file the user named.
pub(crate) fn read(file: &std::path::Path) -> Result<String, CliError> {
    std::fs::read_to_string(file)
        .map_err(|e| CliError::Message(format!("cannot read {}: {e}", file.display())))
}
