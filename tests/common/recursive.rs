//! Random recursive schemas with data cycles (issue 17's bounded-work
//! property): one `node` type whose three permissions recurse through
//! `parent` arrows, `.all()`, intersections and exclusions that may
//! subtract permissions (so cycles through negation occur), over random
//! relationships among a few nodes.

use proptest::prelude::*;

pub const NODES: usize = 7;
pub const USERS: usize = 3;
pub const PERMS: [&str; 3] = ["p0", "p1", "p2"];

pub fn expr(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        Just("viewer".to_string()),
        Just("banned".to_string()),
        prop::sample::select(&PERMS[..]).prop_map(str::to_string),
        prop::sample::select(&PERMS[..]).prop_map(|p| format!("parent->{p}")),
        prop::sample::select(&PERMS[..]).prop_map(|p| format!("parent.all({p})")),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        2 => leaf,
        1 => (expr(depth - 1), expr(depth - 1)).prop_map(|(a, b)| format!("({a} + {b})")),
        1 => (expr(depth - 1), expr(depth - 1)).prop_map(|(a, b)| format!("({a} & {b})")),
        1 => (expr(depth - 1), expr(depth - 1)).prop_map(|(a, b)| format!("({a} - {b})")),
    ]
    .boxed()
}

pub fn relationship() -> BoxedStrategy<String> {
    let node = || (0..NODES).prop_map(|i| format!("node:n{i}"));
    prop_oneof![
        3 => (node(), node()).prop_map(|(a, b)| format!("{a}#parent@{b}")),
        2 => (node(), 0..USERS).prop_map(|(a, u)| format!("{a}#viewer@user:u{u}")),
        1 => (node(), 0..USERS).prop_map(|(a, u)| format!("{a}#banned@user:u{u}")),
        1 => (node(), node(), prop::sample::select(&PERMS[..]))
            .prop_map(|(a, b, p)| format!("{a}#banned@{b}#{p}")),
    ]
    .boxed()
}

pub fn schema(perms: &[String]) -> String {
    format!(
        "definition user {{}}\ndefinition node {{\n  relation parent: node\n  relation viewer: user\n  \
         relation banned: user | node#p0 | node#p1 | node#p2\n  permission p0 = {}\n  \
         permission p1 = {}\n  permission p2 = {}\n}}\n",
        perms[0], perms[1], perms[2]
    )
}
