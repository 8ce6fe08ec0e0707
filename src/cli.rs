//! The `kinbar` command line: argument parsing and the offline commands
//! (`validate`, `schema check|fmt`). Each command is a thin layer over the
//! library; exit status 0 = success/allowed, 1 = failed/denied, 2 = error.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::schema::{self, Severity};

#[derive(Debug, Parser)]
#[command(
    name = "kinbar",
    version,
    about = "Zanzibar-style authorization service"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check SpiceDB validation files: assertions and expected relations.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also check Check ⇔ Expand consistency over every object in each file.
        #[arg(long)]
        exhaustive: bool,
    },
    /// Offline schema tools.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
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
        Command::Schema { command } => schema_command(command),
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
