//! Replays the committed fuzz corpora (`fuzz/corpus/TARGET/`, seeded from
//! the conformance files and minimized) and every crash artifact ever found
//! (`fuzz/artifacts/TARGET/`) through the same harnesses the cargo-fuzz
//! targets run (`kinbar::fuzzing`), so a fixed crash stays fixed without
//! a fuzzer installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::Path;

fn replay(target: &str, harness: fn(&[u8])) -> usize {
    let mut n = 0;
    for dir in ["corpus", "artifacts"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz")
            .join(dir)
            .join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| harness(&data));
            assert!(outcome.is_ok(), "{} panics", path.display());
            n += 1;
        }
    }
    n
}

#[test]
fn schema_corpus() {
    assert!(replay("schema", kinbar::fuzzing::schema) >= 40);
}

#[test]
fn relationship_corpus() {
    assert!(replay("relationship", kinbar::fuzzing::relationship) >= 100);
}

#[test]
fn zedtoken_corpus() {
    assert!(replay("zedtoken", kinbar::fuzzing::zedtoken) >= 5);
}

#[test]
fn validation_yaml_corpus() {
    assert!(replay("validation_yaml", kinbar::fuzzing::validation_yaml) >= 40);
}

#[test]
fn request_corpus() {
    assert!(replay("request", kinbar::fuzzing::request) >= 8);
}
