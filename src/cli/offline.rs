//! Commands that need no server: `serve` itself, `migrate`, `validate`,
//! `schema check` and `schema fmt`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{CliError, CliResult, read};
use crate::schema::{self, Severity};

pub(super) async fn validate(files: &[PathBuf], exhaustive: bool) -> CliResult {
    let (out, code) =
        crate::validate::run_files(files, &crate::validate::Options { exhaustive }).await;
    print!("{out}");
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(2)))
}

pub(super) async fn migrate(url: Option<&str>, print_grants: Option<&str>) -> CliResult {
    if let Some(role) = print_grants {
        print!(
            "{}",
            crate::store::postgres::PostgresStore::runtime_grants(role)?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let url = url.unwrap_or_default();
    if !crate::server::is_postgres_url(url) {
        return Err(
            "`kinbar migrate` needs a postgres:// URL (the memory datastore needs no migration)"
                .into(),
        );
    }
    let applied = crate::store::postgres::PostgresStore::migrate(url)
        .await
        .map_err(CliError::msg)?;
    if applied.is_empty() {
        println!("the database is up to date");
    }
    for v in applied {
        println!("applied migration {v}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn serve(args: crate::config::ServeArgs) -> CliResult {
    let config = crate::config::Config::load(&args)?;
    if args.print_config {
        print!("{}", config.to_redacted_toml()?);
        return Ok(ExitCode::SUCCESS);
    }
    let telemetry = crate::telemetry::init(&config.log_format, config.otlp_endpoint.as_deref())?;
    let listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.grpc_addr))?;
    crate::server::run(config, listener, shutdown_signal())
        .await
        .map_err(CliError::msg)?;
    // Buffered spans go out before the process ends.
    telemetry.flush();
    Ok(ExitCode::SUCCESS)
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

/// Compiles a schema file: warnings and errors compiler-style on stderr.
pub(super) fn schema_check(file: &Path) -> CliResult {
    let src = read(file)?;
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
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprint!("{}", e.render(&name));
            let n = e
                .diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            eprintln!("{name}: {n} error(s)");
            Err(CliError::Reported)
        }
    }
}

/// Prints (or with `write`, rewrites) a schema file in canonical layout.
pub(super) fn schema_fmt(file: &Path, write: bool) -> CliResult {
    let src = read(file)?;
    let ast = schema::parse_ast(&src, &schema::Limits::default()).map_err(|e| {
        eprint!("{}", e.render(&file.display().to_string()));
        CliError::Reported
    })?;
    let out = schema::format::format_source(&src, &ast);
    if write {
        std::fs::write(file, out).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    } else {
        print!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}
