//! The canonical layout of a schema (`kinbar schema fmt`). Its output parses
//! back to the same AST (property-tested). Doc comments are part of the AST;
//! [`format_source`] also keeps every plain comment (`//`, `/* */`): each is
//! put back before the item or member it preceded, or at the end of the
//! line it ended (tested over the whole conformance corpus: nothing lost,
//! formatting twice changes nothing).

use super::ast::*;
use super::diagnostic::Span;

/// Formats a schema AST in canonical layout (without plain comments).
pub fn format(ast: &SchemaAst) -> String {
    Printer {
        src: "",
        comments: Vec::new(),
        next: 0,
        out: String::new(),
    }
    .schema(ast)
}

/// Formats `src` (already parsed into `ast`) in canonical layout, keeping
/// its plain comments.
pub fn format_source(src: &str, ast: &SchemaAst) -> String {
    // Comments inside a caveat are kept verbatim in its body.
    let caveats: Vec<Span> = ast
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Caveat(c) => Some(c.span),
            _ => None,
        })
        .collect();
    let comments = super::lexer::plain_comments(src)
        .into_iter()
        .filter(|c| !caveats.iter().any(|k| k.start <= c.start && c.end <= k.end))
        .collect();
    Printer {
        src,
        comments,
        next: 0,
        out: String::new(),
    }
    .schema(ast)
}

struct Printer<'s> {
    src: &'s str,
    comments: Vec<Span>,
    /// The first comment not yet printed.
    next: usize,
    out: String,
}

impl Printer<'_> {
    fn schema(mut self, ast: &SchemaAst) -> String {
        for (i, item) in ast.items.iter().enumerate() {
            if i > 0 {
                self.out.push('\n');
            }
            match item {
                Item::Definition(d) => {
                    self.comments_before(d.span.start, "");
                    doc(&mut self.out, &d.doc, "");
                    let inner_comments = self.has_comment_before(d.span.end);
                    if d.members.is_empty() && !inner_comments {
                        self.out
                            .push_str(&format!("definition {} {{}}", d.name.name));
                        self.trailing_comment(d.span.end);
                        self.out.push('\n');
                        continue;
                    }
                    self.out
                        .push_str(&format!("definition {} {{\n", d.name.name));
                    for m in &d.members {
                        self.member(m);
                    }
                    self.comments_before(d.span.end.saturating_sub(1), "    ");
                    self.out.push('}');
                    self.trailing_comment(d.span.end);
                    self.out.push('\n');
                }
                Item::Caveat(c) => {
                    self.comments_before(c.span.start, "");
                    doc(&mut self.out, &c.doc, "");
                    self.out.push_str(&format!(
                        "caveat {}({}) {{\n    {}\n}}\n",
                        c.name.name, c.params, c.body
                    ));
                }
                Item::UseDirective(u) => {
                    self.comments_before(u.span.start, "");
                    self.out.push_str(&format!("use {}", u.name));
                    self.trailing_comment(u.span.end);
                    self.out.push('\n');
                }
            }
        }
        if self.next < self.comments.len() {
            if !ast.items.is_empty() {
                self.out.push('\n');
            }
            self.comments_before(usize::MAX, "");
        }
        self.out
    }

    fn member(&mut self, m: &Member) {
        let span = match m {
            Member::Relation(r) => r.span,
            Member::Permission(p) => p.span,
        };
        self.comments_before(span.start, "    ");
        match m {
            Member::Relation(r) => {
                doc(&mut self.out, &r.doc, "    ");
                let types: Vec<String> = r.allowed.iter().map(allowed).collect();
                self.out.push_str(&format!(
                    "    relation {}: {}",
                    r.name.name,
                    types.join(" | ")
                ));
            }
            Member::Permission(p) => {
                doc(&mut self.out, &p.doc, "    ");
                // Comments inside the expression go before the member.
                self.comments_before(span.end, "    ");
                self.out.push_str(&format!(
                    "    permission {} = {}",
                    p.name.name,
                    expr(&p.expr)
                ));
            }
        }
        self.trailing_comment(span.end);
        self.out.push('\n');
    }

    fn has_comment_before(&self, pos: usize) -> bool {
        self.comments.get(self.next).is_some_and(|c| c.start < pos)
    }

    /// Prints, each on its own line, the comments that start before `pos`.
    fn comments_before(&mut self, pos: usize, indent: &str) {
        while let Some(c) = self.comments.get(self.next).copied() {
            if c.start >= pos {
                break;
            }
            self.next += 1;
            self.out.push_str(indent);
            self.out.push_str(self.src[c.start..c.end].trim_end());
            self.out.push('\n');
        }
    }

    /// A comment on the same source line right after `end` stays at the end
    /// of the printed line.
    fn trailing_comment(&mut self, end: usize) {
        let Some(c) = self.comments.get(self.next).copied() else {
            return;
        };
        let between = self.src.get(end..c.start).unwrap_or("\n");
        let text = &self.src[c.start..c.end];
        let same_line = !between.contains('\n') && between.trim().is_empty();
        if same_line && !text.contains('\n') {
            self.next += 1;
            self.out.push(' ');
            self.out.push_str(text.trim_end());
        }
    }
}

fn doc(out: &mut String, doc: &Option<String>, indent: &str) {
    let Some(text) = doc else { return };
    // One line, unless the text starts with `*`: the lexer strips one `*`
    // at the start of each doc line, so `/** *x */` would read back as `x`
    // (found by fuzzing); ` * *x` on its own line reads back as `*x`.
    if !text.contains('\n') && !text.starts_with('*') {
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
