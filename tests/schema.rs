//! Schema language: one test per error kind (message and location), warnings,
//! precedence, formatter round trips, and fuzzing for panics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use kinbar::schema::{self, Limits, Rewrite, Schema, SchemaError, Severity, format};
use proptest::prelude::*;

fn err(src: &str) -> SchemaError {
    match schema::compile(src, &Limits::default()) {
        Ok(_) => panic!("expected an error for:\n{src}"),
        Err(e) => e,
    }
}

/// The first error's message, 1-based line and column.
fn first(src: &str) -> (String, usize, usize) {
    let e = err(src);
    let d = e.errors().next().expect("at least one error").clone();
    let (l, c) = d.line_col(src);
    (d.message, l, c)
}

fn assert_error(src: &str, needle: &str, line: usize, col: usize) {
    let (msg, l, c) = first(src);
    assert!(msg.contains(needle), "message `{msg}` lacks `{needle}`");
    assert_eq!((l, c), (line, col), "location of `{msg}`");
}

#[test]
fn unknown_type() {
    assert_error(
        "definition user {}\ndefinition doc {\n  relation viewer: usr\n}",
        "unknown type `usr`",
        3,
        20,
    );
    let e = err("definition user {}\ndefinition doc {\n  relation viewer: usr\n}");
    let hint = e.errors().next().unwrap().hint.clone().unwrap();
    assert!(hint.contains("did you mean `user`"), "{hint}");
}

#[test]
fn unknown_relation_in_subject_type() {
    assert_error(
        "definition user {}\ndefinition team { relation member: user }\ndefinition doc {\n  relation viewer: team#membr\n}",
        "`membr` not found on definition `team`",
        4,
        25,
    );
}

#[test]
fn unknown_relation_in_expression() {
    assert_error(
        "definition user {}\ndefinition doc {\n  relation viewer: user\n  permission view = viewer + editor\n}",
        "`editor` not found on definition `doc`",
        4,
        30,
    );
}

#[test]
fn duplicate_definition() {
    assert_error(
        "definition user {}\ndefinition user {}",
        "duplicate definition `user`",
        2,
        12,
    );
}

#[test]
fn duplicate_relation() {
    assert_error(
        "definition user {}\ndefinition doc {\n  relation viewer: user\n  relation viewer: user\n}",
        "duplicate relation `viewer`",
        4,
        12,
    );
}

#[test]
fn relation_and_permission_with_same_name() {
    assert_error(
        "definition user {}\ndefinition doc {\n  relation view: user\n  permission view = view\n}",
        "both a relation and a permission",
        4,
        14,
    );
}

#[test]
fn arrow_left_side_unknown() {
    assert_error(
        "definition user {}\ndefinition doc {\n  relation viewer: user\n  permission view = parent->view\n}",
        "relation `parent` not found",
        4,
        21,
    );
}

#[test]
fn arrow_left_side_is_permission() {
    assert_error(
        "definition user {}\ndefinition doc {\n  relation viewer: user\n  permission v = viewer\n  permission view = v->view\n}",
        "`v` is a permission",
        5,
        21,
    );
}

#[test]
fn wildcard_on_left_of_arrow() {
    assert_error(
        "definition user { relation x: user  permission y = x }\ndefinition doc {\n  relation viewer: user:*\n  permission view = viewer->y\n}",
        "allows the wildcard `user:*`",
        4,
        21,
    );
}

#[test]
fn invalid_identifier() {
    assert_error(
        "definition User {}",
        "must start with a lowercase letter",
        1,
        12,
    );
    let long = "a".repeat(65);
    assert_error(&format!("definition {long} {{}}"), "longer than 64", 1, 12);
}

#[test]
fn syntax_errors_have_location_and_hint() {
    assert_error(
        "definition doc {\n  relation viewer user\n}",
        "expected `:` after the relation name",
        2,
        19,
    );
    assert_error(
        "definition doc {\n  permission view viewer\n}",
        "expected `=`",
        2,
        19,
    );
    assert_error(
        "definition doc {\n  relation viewer: user\n",
        "expected `}` to close the definition",
        3,
        1,
    );
    assert_error(
        "definition doc {\n  permission view = (viewer\n}",
        "expected `)`",
        3,
        1,
    );
    assert_error(
        "definition doc {\n  permission view = viewer +\n}",
        "expected a relation or permission name",
        3,
        1,
    );
    assert_error(
        "definition doc {\n  permission view = viewer viewer\n}",
        "expected an operator",
        2,
        28,
    );
    assert_error("relation x: y", "expected `definition` or `caveat`", 1, 1);
    assert_error(
        "definition doc { permission v = a.none(b) }",
        "unknown arrow function `none`",
        1,
        35,
    );
    assert_error(
        "/* never closed\ndefinition doc {}",
        "unterminated `/*` comment",
        1,
        1,
    );
    let e = err("definition doc {\n  relation viewer user\n}");
    assert!(e.errors().next().unwrap().hint.is_some());
}

#[test]
fn caveats_and_expiration_are_refused_clearly() {
    assert_error(
        "caveat only_weekdays(day int) {\n  day < 6\n}\ndefinition user {}",
        "caveats are not supported yet",
        1,
        8,
    );
    assert_error(
        "definition user {}\ndefinition doc {\n  relation viewer: user with only_weekdays\n}",
        "caveats are not supported yet",
        3,
        30,
    );
    assert_error(
        "use expiration\ndefinition user {}\ndefinition doc {\n  relation viewer: user with expiration\n}",
        "expiration is not supported yet",
        1,
        5,
    );
}

#[test]
fn rendered_diagnostic_looks_like_a_compiler() {
    let src = "definition user {}\ndefinition doc {\n    relation viewer: usr\n}\n";
    let out = err(src).render("crm.zed");
    assert!(out.contains("error: unknown type `usr`"), "{out}");
    assert!(out.contains("--> crm.zed:3:22"), "{out}");
    assert!(out.contains("3 |     relation viewer: usr"), "{out}");
    assert!(out.contains("  |                      ^^^"), "{out}");
    assert!(out.contains("= hint: did you mean `user`?"), "{out}");
}

#[test]
fn warnings_do_not_fail() {
    let c = schema::compile(
        "definition user {}\ndefinition folder { relation owner: user }\ndefinition doc {\n  relation parent: folder\n  relation viewer: user\n  permission view = viewer + parent->nothing\n  permission loop = loop\n}",
        &Limits::default(),
    )
    .unwrap();
    let msgs: Vec<&str> = c.warnings.iter().map(|w| w.message.as_str()).collect();
    assert!(c.warnings.iter().all(|w| w.severity == Severity::Warning));
    assert!(
        msgs.iter().any(|m| m.contains("can never match")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("refers only to itself")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("`folder#owner` is not used")),
        "{msgs:?}"
    );
}

#[test]
fn precedence_matches_design() {
    let s = Schema::parse(
        "definition user {}\ndefinition d {\n relation a: user\n relation b: user\n relation c: user\n permission p1 = a - b + c\n permission p2 = a + b & c\n permission p3 = a & b - c\n permission p4 = a - b - c\n}",
    )
    .unwrap();
    let d = s.definition("d").unwrap();
    let r = |n: &str| Rewrite::Ref(n.into());
    assert_eq!(
        d.permissions["p1"].rewrite,
        Rewrite::Exclusion(
            Box::new(r("a")),
            Box::new(Rewrite::Union(vec![r("b"), r("c")]))
        )
    );
    assert_eq!(
        d.permissions["p2"].rewrite,
        Rewrite::Intersection(vec![Rewrite::Union(vec![r("a"), r("b")]), r("c")])
    );
    assert_eq!(
        d.permissions["p3"].rewrite,
        Rewrite::Exclusion(
            Box::new(Rewrite::Intersection(vec![r("a"), r("b")])),
            Box::new(r("c"))
        )
    );
    assert_eq!(
        d.permissions["p4"].rewrite,
        Rewrite::Exclusion(
            Box::new(Rewrite::Exclusion(Box::new(r("a")), Box::new(r("b")))),
            Box::new(r("c"))
        )
    );
}

#[test]
fn huge_expressions_are_refused_quickly() {
    let terms: Vec<String> = (0..20_000).map(|_| "a".to_string()).collect();
    let src = format!(
        "definition user {{}}\ndefinition d {{ relation a: user\n permission p = {} }}",
        terms.join(" + ")
    );
    let (msg, _, _) = first(&src);
    assert!(msg.contains("more than 1000 terms"), "{msg}");
    let deep = format!(
        "definition user {{}}\ndefinition d {{ relation a: user\n permission p = {}a{} }}",
        "(".repeat(10_000),
        ")".repeat(10_000)
    );
    let (msg, _, _) = first(&deep);
    assert!(msg.contains("nested deeper"), "{msg}");
    let big = "definition user {}\n".repeat(300_000);
    let (msg, _, _) = first(&big);
    assert!(msg.contains("more than the limit"), "{msg}");
}

#[test]
fn doc_comments_are_kept_by_fmt() {
    let src = "/** the user */ definition user {}\ndefinition doc {\n /** who may view\n  * (readers) */\n relation viewer: user\n permission view = viewer // trailing\n}";
    let ast = schema::parse_ast(src, &Limits::default()).unwrap();
    let out = format::format(&ast);
    assert!(out.contains("/** the user */\ndefinition user {}"), "{out}");
    assert!(
        out.contains(
            "    /**\n     * who may view\n     * (readers)\n     */\n    relation viewer: user"
        ),
        "{out}"
    );
}

/// Every plain comment of `src`, whitespace-normalized, in order.
fn comment_texts(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'"', _) => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1;
                }
                i += 1;
            }
            (b'/', Some(b'/')) => {
                let end = src[i..].find('\n').map_or(src.len(), |e| i + e);
                out.push(src[i..end].split_whitespace().collect::<Vec<_>>().join(" "));
                i = end;
            }
            (b'/', Some(b'*')) if b.get(i + 2) != Some(&b'*') || b.get(i + 3) == Some(&b'/') => {
                let end = src[i + 2..].find("*/").map_or(src.len(), |e| i + 2 + e + 2);
                out.push(src[i..end].split_whitespace().collect::<Vec<_>>().join(" "));
                i = end;
            }
            (b'/', Some(b'*')) => {
                i = src[i + 2..].find("*/").map_or(src.len(), |e| i + 2 + e + 2);
            }
            _ => i += 1,
        }
    }
    out
}

/// `fmt` keeps every comment in order and is stable; the result parses to
/// the same tree.
fn assert_fmt_keeps_comments(src: &str, what: &str) {
    let Ok(ast) = schema::parse_ast(src, &Limits::default()) else {
        return;
    };
    let out = format::format_source(src, &ast);
    assert_eq!(
        comment_texts(&out),
        comment_texts(src),
        "{what}: comments\n{out}"
    );
    let again = schema::parse_ast(&out, &Limits::default())
        .unwrap_or_else(|e| panic!("{what}: formatted output does not parse: {e:?}\n{out}"));
    assert_eq!(
        again.without_spans(),
        ast.without_spans(),
        "{what}: tree changed"
    );
    assert_eq!(
        format::format_source(&out, &again),
        out,
        "{what}: not stable"
    );
}

#[test]
fn fmt_keeps_every_comment() {
    let src = "// header: the CRM model\n/* block\n   over lines */\n/** the user */ definition user {} // users\n\ndefinition doc {\n    // who reads\n    relation viewer: user // direct\n    /* editors */ relation editor: user\n    permission view = viewer + /* inline */ editor\n    // before the end\n}\ndefinition empty {\n  // nothing yet\n}\n// the end\n";
    assert_fmt_keeps_comments(src, "inline sample");
    let ast = schema::parse_ast(src, &Limits::default()).unwrap();
    let out = format::format_source(src, &ast);
    assert!(
        out.contains("    relation viewer: user // direct\n"),
        "{out}"
    );
    assert!(out.contains("definition user {} // users\n"), "{out}");
    assert!(
        out.contains("definition empty {\n    // nothing yet\n}"),
        "{out}"
    );
}

/// The whole conformance corpus (and our files and the CRM example).
#[test]
fn fmt_keeps_comments_on_the_whole_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        "tests/conformance/spicedb",
        "tests/validation",
        "examples/crm",
    ] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            files.push(e.unwrap().path());
        }
    }
    let mut with_comments = 0;
    let mut schemas = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let src = match f.extension().and_then(|e| e.to_str()) {
            Some("zed") => text,
            Some("yaml") => {
                let v: serde_norway::Value = serde_norway::from_str(&text).unwrap();
                match v.get("schema").and_then(|s| s.as_str()) {
                    Some(s) => s.to_string(),
                    None => continue,
                }
            }
            _ => continue,
        };
        schemas += 1;
        with_comments += usize::from(!comment_texts(&src).is_empty());
        assert_fmt_keeps_comments(&src, &f.display().to_string());
    }
    assert!(schemas > 70, "only {schemas} schemas found");
    assert!(with_comments > 0, "no schema with comments in the corpus");
}

// ---- Property tests: formatter round trip, no panics on arbitrary input ----

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("viewer".to_string()),
        Just("owner".to_string()),
        Just("parent".to_string()),
        Just("member".to_string()),
        "[a-z][a-z0-9_]{0,6}",
    ]
}

fn expr_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        name(),
        Just("nil".to_string()),
        (name(), name()).prop_map(|(a, b)| format!("{a}->{b}")),
        (name(), name()).prop_map(|(a, b)| format!("{a}.all({b})")),
        (name(), name()).prop_map(|(a, b)| format!("{a}.any({b})")),
    ];
    leaf.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} + {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} & {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} - {b}")),
            inner.prop_map(|a| format!("({a})")),
        ]
    })
}

fn schema_text() -> impl Strategy<Value = String> {
    let relation = (
        name(),
        prop::collection::vec(
            prop_oneof![
                Just("user".to_string()),
                Just("user:*".to_string()),
                Just("team#member".to_string()),
                Just("ns/thing".to_string()),
            ],
            1..3,
        ),
    )
        .prop_map(|(n, types)| format!("  relation {n}: {}\n", types.join(" | ")));
    let permission = (name(), expr_text()).prop_map(|(n, e)| format!("  permission {n} = {e}\n"));
    let member = prop_oneof![relation, permission];
    let doc = prop::option::of("[a-z ]{1,10}")
        .prop_map(|d| d.map(|t| format!("/** {t} */\n")).unwrap_or_default());
    let def = (doc, name(), prop::collection::vec(member, 0..5))
        .prop_map(|(d, n, ms)| format!("{d}definition {n} {{\n{}}}\n", ms.concat()));
    prop::collection::vec(def, 1..4).prop_map(|ds| ds.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn fmt_output_reparses_to_the_same_ast(src in schema_text()) {
        let ast = schema::parse_ast(&src, &Limits::default()).unwrap();
        let formatted = format::format(&ast);
        let again = schema::parse_ast(&formatted, &Limits::default())
            .unwrap_or_else(|e| panic!("formatted schema does not parse: {e}\n{formatted}"));
        prop_assert_eq!(ast.without_spans(), again.without_spans());
        // Formatting is idempotent.
        prop_assert_eq!(format::format(&again), formatted);
    }

    #[test]
    fn schema_parser_never_panics(src in "\\PC{0,200}") {
        let _ = schema::compile(&src, &Limits::default());
    }

    #[test]
    fn schema_parser_never_panics_on_near_misses(src in "[a-z{}()#:*|+&\\-=>. \n/]{0,120}") {
        let _ = schema::compile(&format!("definition user {{}}\ndefinition d {{ {src} }}"), &Limits::default());
        if let Err(e) = schema::compile(&src, &Limits::default()) {
            prop_assert!(e.errors().next().is_some());
            prop_assert!(!e.render("x").is_empty());
        }
    }
}
