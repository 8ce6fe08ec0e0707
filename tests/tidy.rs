//! Tidy: the architectural rules of ARCHITECTURE.md that a program can
//! check, checked on every test run (in the style of rust-analyzer's tidy).
//! Each rule names the files that break it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap().display().to_string()
}

/// Source lines without `//` comments (so a rule can be explained in a
/// comment without tripping it).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, l)| {
        let code = l.split("//").next().unwrap_or("");
        (!code.trim().is_empty()).then_some((i + 1, code))
    })
}

/// The files of the layers below the API: domain, schema, storage, engine,
/// audit, validation, configuration.
fn below_api() -> Vec<PathBuf> {
    let src = root().join("src");
    rust_files(&src)
        .into_iter()
        .filter(|p| {
            let r = rel(p);
            [
                "src/model",
                "src/schema",
                "src/store",
                "src/engine",
                "src/audit.rs",
            ]
            .iter()
            .any(|prefix| r.starts_with(prefix))
                || r == "src/validate.rs"
                || r == "src/config.rs"
        })
        .collect()
}

fn violations(files: &[PathBuf], bad: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in code_lines(&text) {
            if bad(line) {
                out.push(format!("{}:{n}: {}", rel(f), line.trim()));
            }
        }
    }
    out
}

#[test]
fn nothing_below_the_api_names_tonic_or_prost() {
    let files = below_api();
    assert!(files.len() > 20, "{files:?}");
    let v = violations(&files, |l| l.contains("tonic") || l.contains("prost"));
    assert!(
        v.is_empty(),
        "protobuf/gRPC types belong to src/api only:\n{}",
        v.join("\n")
    );
}

#[test]
fn audit_and_model_do_not_import_the_store() {
    let files: Vec<PathBuf> = rust_files(&root().join("src"))
        .into_iter()
        .filter(|p| {
            let r = rel(p);
            r == "src/audit.rs" || r.starts_with("src/model")
        })
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    let v = violations(&files, |l| l.contains("store::"));
    assert!(
        v.is_empty(),
        "audit and model depend on model only (the store depends on them):\n{}",
        v.join("\n")
    );
}

#[test]
fn only_the_engine_and_server_reach_the_datastore_handle() {
    let files: Vec<PathBuf> = rust_files(&root().join("src"))
        .into_iter()
        .filter(|p| {
            let r = rel(p);
            !(r == "src/engine.rs" || r.starts_with("src/engine/") || r == "src/server.rs")
        })
        .collect();
    let v = violations(&files, |l| l.contains(".store()"));
    assert!(
        v.is_empty(),
        "the API goes through the engine's methods, not its datastore:\n{}",
        v.join("\n")
    );
}

#[test]
fn every_source_file_starts_with_a_module_doc() {
    let mut missing = Vec::new();
    for f in rust_files(&root().join("src")) {
        let text = std::fs::read_to_string(&f).unwrap();
        if !text.starts_with("//!") {
            missing.push(rel(&f));
        }
    }
    assert!(
        missing.is_empty(),
        "files without a `//!` summary:\n{}",
        missing.join("\n")
    );
}

/// Every `DESIGN.md §N` in code and docs names a section of docs/DESIGN.md.
#[test]
fn every_design_reference_resolves() {
    let design = std::fs::read_to_string(root().join("docs/DESIGN.md")).unwrap();
    let sections: Vec<u32> = design
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .filter_map(|l| l.split('.').next()?.trim().parse().ok())
        .collect();
    assert!(sections.len() >= 10, "{sections:?}");
    let mut files = rust_files(&root().join("src"));
    // This file spells the pattern out itself.
    files.extend(
        rust_files(&root().join("tests"))
            .into_iter()
            .filter(|p| !p.ends_with("tidy.rs")),
    );
    for doc in ["README.md", "ARCHITECTURE.md", "BENCHMARKS.md"] {
        files.push(root().join(doc));
    }
    let mut broken = Vec::new();
    let mut seen = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(i) = rest.find("DESIGN.md §") {
                rest = &rest[i + "DESIGN.md §".len()..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                seen += 1;
                match digits.parse::<u32>() {
                    Ok(s) if sections.contains(&s) => {}
                    _ => broken.push(format!("{}:{}: §{digits}", rel(f), n + 1)),
                }
            }
        }
    }
    assert!(seen > 10, "expected references, found {seen}");
    assert!(
        broken.is_empty(),
        "references to missing DESIGN.md sections:\n{}",
        broken.join("\n")
    );
}

/// SQL is never built from values: every string handed to sqlx as raw SQL
/// (`AssertSqlSafe(…)`) or pushed into a `QueryBuilder` with `format!`
/// interpolates only `UPPER_CASE` constants, or carries a `// SQL-SAFE:`
/// comment (on the line or within the three above) saying why what it
/// interpolates cannot come from a request. Values go in as bind
/// parameters.
#[test]
fn sql_is_built_from_constants_or_justified() {
    let files: Vec<PathBuf> = rust_files(&root().join("src"))
        .into_iter()
        .filter(|p| std::fs::read_to_string(p).unwrap().contains("sqlx"))
        .collect();
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let raw = code.contains("AssertSqlSafe(") && !code.trim_start().starts_with("use ");
            let pushed = code.contains(".push(format!(");
            if !(raw || pushed) {
                continue;
            }
            let justified = lines[i.saturating_sub(3)..=i]
                .iter()
                .any(|l| l.contains("// SQL-SAFE:"));
            if justified {
                continue;
            }
            // The statement: this line and the next few, up to `;`.
            let statement: String = lines[i..lines.len().min(i + 6)].join("\n");
            let statement = statement.split(';').next().unwrap_or("");
            let only_constants = statement.contains("format!(")
                && placeholders(statement)
                    .iter()
                    .all(|p| p.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
            if !only_constants {
                bad.push(format!("{}:{}: {}", rel(f), i + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "raw SQL built from something other than constants, without a `// SQL-SAFE:` reason:\n{}",
        bad.join("\n")
    );
}

/// The `{name}` placeholders of the format strings in `text`.
fn placeholders(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        rest = &rest[start + 1..];
        if rest.starts_with('{') {
            rest = &rest[1..];
            continue;
        }
        let end = rest.find('}').unwrap_or(rest.len());
        let name = rest[..end].split(':').next().unwrap_or("").trim();
        out.push(name.to_string());
        rest = &rest[end..];
    }
    out
}
