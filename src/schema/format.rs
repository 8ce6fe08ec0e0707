//! The canonical layout of a schema (`kinbar schema fmt`). Its output parses
//! back to the same AST (property-tested). Doc comments are kept; plain
//! comments are not part of the AST and are dropped.

use super::ast::*;

/// Formats a schema AST in canonical layout.
pub fn format(ast: &SchemaAst) -> String {
    let mut out = String::new();
    for (i, item) in ast.items.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match item {
            Item::Definition(d) => {
                doc(&mut out, &d.doc, "");
                if d.members.is_empty() {
                    out.push_str(&format!("definition {} {{}}\n", d.name.name));
                    continue;
                }
                out.push_str(&format!("definition {} {{\n", d.name.name));
                for m in &d.members {
                    match m {
                        Member::Relation(r) => {
                            doc(&mut out, &r.doc, "    ");
                            let types: Vec<String> = r.allowed.iter().map(allowed).collect();
                            out.push_str(&format!(
                                "    relation {}: {}\n",
                                r.name.name,
                                types.join(" | ")
                            ));
                        }
                        Member::Permission(p) => {
                            doc(&mut out, &p.doc, "    ");
                            out.push_str(&format!(
                                "    permission {} = {}\n",
                                p.name.name,
                                expr(&p.expr)
                            ));
                        }
                    }
                }
                out.push_str("}\n");
            }
            Item::Caveat(c) => {
                doc(&mut out, &c.doc, "");
                out.push_str(&format!(
                    "caveat {}({}) {{\n    {}\n}}\n",
                    c.name.name, c.params, c.body
                ));
            }
            Item::UseDirective(u) => out.push_str(&format!("use {}\n", u.name)),
        }
    }
    out
}

fn doc(out: &mut String, doc: &Option<String>, indent: &str) {
    let Some(text) = doc else { return };
    if !text.contains('\n') {
        out.push_str(&format!("{indent}/** {text} */\n"));
        return;
    }
    out.push_str(&format!("{indent}/**\n"));
    for line in text.lines() {
        if line.is_empty() {
            out.push_str(&format!("{indent} *\n"));
        } else {
            out.push_str(&format!("{indent} * {line}\n"));
        }
    }
    out.push_str(&format!("{indent} */\n"));
}

fn allowed(a: &AllowedTypeAst) -> String {
    let mut s = a.type_name.name.clone();
    match &a.kind {
        AllowedKind::Direct => {}
        AllowedKind::Userset(r) => {
            s.push('#');
            s.push_str(&r.name);
        }
        AllowedKind::Wildcard => s.push_str(":*"),
    }
    let mut withs = Vec::new();
    if let Some(c) = &a.caveat {
        withs.push(c.name.clone());
    }
    if a.expiration.is_some() {
        withs.push("expiration".to_string());
    }
    if !withs.is_empty() {
        s.push_str(" with ");
        s.push_str(&withs.join(" and "));
    }
    s
}

/// Formats an expression. A nested operation is parenthesised when its
/// operator differs from its parent's (so nobody has to remember precedence)
/// or when it is the right operand of the same operator (left associativity).
pub fn expr(e: &Expr) -> String {
    match e {
        Expr::Nil(_) => "nil".into(),
        Expr::Ref(i) => i.name.clone(),
        Expr::Arrow {
            relation,
            target,
            kind,
            function_form,
            ..
        } => match (kind, function_form) {
            (ArrowKind::Any, false) => format!("{}->{}", relation.name, target.name),
            (ArrowKind::Any, true) => format!("{}.any({})", relation.name, target.name),
            (ArrowKind::All, _) => format!("{}.all({})", relation.name, target.name),
        },
        Expr::Binary {
            op, left, right, ..
        } => {
            let l = operand(left, *op, false);
            let r = operand(right, *op, true);
            format!("{l} {} {r}", op.symbol())
        }
    }
}

fn operand(e: &Expr, parent: BinOp, right: bool) -> String {
    match e {
        Expr::Binary { op, .. } if *op != parent || right => format!("({})", expr(e)),
        _ => expr(e),
    }
}
