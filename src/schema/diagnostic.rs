//! Compiler-style diagnostics: a message, a source span, a label and a hint,
//! rendered as `file:line:col` with a caret snippet.

use std::fmt;

/// A byte range in the schema source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub span: Span,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn error(span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span,
            hint: None,
        }
    }

    pub fn warning(span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            message: message.into(),
            span,
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// 1-based line and column (in characters) of the span start.
    pub fn line_col(&self, source: &str) -> (usize, usize) {
        line_col(source, self.span.start)
    }

    /// Renders like a compiler:
    ///
    /// ```text
    /// error: unknown type `usr`
    ///  --> schema.zed:3:22
    ///   |
    /// 3 |     relation viewer: usr
    ///   |                      ^^^
    ///   = hint: ...
    /// ```
    pub fn render(&self, file: &str, source: &str) -> String {
        let (line, col) = self.line_col(source);
        let line_text = source.lines().nth(line - 1).unwrap_or("");
        let width = line.to_string().len();
        let pad = " ".repeat(width);
        let line_chars = line_text.chars().count();
        let span_chars = source
            .get(self.span.start..self.span.end.min(source.len()))
            .map(|s| s.lines().next().unwrap_or("").chars().count())
            .unwrap_or(1);
        let carets = span_chars.clamp(1, line_chars.saturating_sub(col - 1).max(1));
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut out = format!(
            "{kind}: {}\n{pad}--> {file}:{line}:{col}\n{pad} |\n{line} | {line_text}\n{pad} | {}{}\n",
            self.message,
            " ".repeat(col - 1),
            "^".repeat(carets)
        );
        if let Some(hint) = &self.hint {
            out.push_str(&format!("{pad} = hint: {hint}\n"));
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// 1-based line and character column of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let mut line = 1;
    let mut line_start = 0;
    for (i, b) in source.bytes().enumerate() {
        if i >= offset {
            break;
        }
        if b == b'\n' {
            line += 1;
            line_start = i + 1;
        }
    }
    let col = source
        .get(line_start..offset)
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Where compilation stopped: the text did not parse (syntax, or a size
/// limit checked while parsing), or it parsed but does not type-check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaStage {
    Parse,
    Type,
}

/// A schema that failed to compile: every error (and warning) found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SchemaError {
    pub stage: SchemaStage,
    pub diagnostics: Vec<Diagnostic>,
    pub text: String,
}

impl SchemaError {
    /// The errors (not warnings).
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    /// All diagnostics rendered compiler-style against `file`.
    pub fn render(&self, file: &str) -> String {
        self.diagnostics
            .iter()
            .map(|d| d.render(file, &self.text))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for d in self.errors() {
            if !first {
                write!(f, "; ")?;
            }
            first = false;
            let (line, col) = d.line_col(&self.text);
            write!(f, "schema:{line}:{col}: {d}")?;
        }
        Ok(())
    }
}
