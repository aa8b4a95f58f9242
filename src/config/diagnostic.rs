//! Config errors as users see them: [`ConfigError`], [`Diagnostic`] and the
//! rustc-style renderer (`error: ...`, `--> file:line:col`, the source line
//! with carets under the offending text, `= help: ...`).
//!
//! Diagnostics are built from byte spans into the file text and resolved here
//! to line, column and the quoted source line, so an error stays printable
//! after the text is gone. Deciding *what* is wrong is not this module's job.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in a config file, located and ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Lowercase sentence, no location (`unknown key "memroy" in [[vms]]`).
    pub message: String,
    /// 1-based line and column (in characters) of the offending text;
    /// `None` when the problem has no single place in the file.
    pub location: Option<Location>,
    /// How to fix it.
    pub help: Option<String>,
    /// Extra context, e.g. where a duplicate was first defined.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
    /// The whole source line, without its newline.
    pub source_line: String,
    /// How many characters to underline (at least 1).
    pub width: usize,
}

/// Why a config could not be loaded. `Display` is the full rendered message,
/// starting with `error: `, ready to print as is.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read { path: PathBuf, source: io::Error },
    /// The file was read but is not a valid castra.toml.
    Invalid {
        path: PathBuf,
        diagnostics: Vec<Diagnostic>,
    },
}

impl ConfigError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. } | ConfigError::Invalid { path, .. } => path,
        }
    }

    /// The problems found (empty for a read error).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { diagnostics, .. } => diagnostics,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "error: could not read {}: {source}", path.display())
            }
            ConfigError::Invalid { path, diagnostics } => f.write_str(&render(path, diagnostics)),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A problem found while checking, still as a byte span into the text.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    pub message: String,
    pub span: Option<Range<usize>>,
    pub help: Option<String>,
    pub notes: Vec<String>,
}

impl Problem {
    pub fn new(message: impl Into<String>, span: Range<usize>) -> Self {
        Problem {
            message: message.into(),
            span: Some(span),
            help: None,
            notes: Vec::new(),
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub fn locate(self, text: &str) -> Diagnostic {
        Diagnostic {
            message: self.message,
            location: self.span.map(|s| locate(text, s)),
            help: self.help,
            notes: self.notes,
        }
    }
}

/// Line, column and underline width of a byte span in `text`.
pub(crate) fn locate(text: &str, span: Range<usize>) -> Location {
    let start = floor_char_boundary(text, span.start.min(text.len()));
    let end = floor_char_boundary(text, span.end.clamp(start, text.len()));
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let source_line = text[line_start..line_end]
        .trim_end_matches('\r')
        .to_string();
    let width = text[start..end.min(line_end)].chars().count().max(1);
    Location {
        line,
        column,
        source_line,
        width,
    }
}

/// `line:col` of a byte offset, for notes that point at a second place.
pub(crate) fn line_col(text: &str, offset: usize) -> String {
    let loc = locate(text, offset..offset);
    format!("{}:{}", loc.line, loc.column)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Renders diagnostics rustc style, separated by blank lines, with a summary
/// line when there are several.
pub(crate) fn render(path: &Path, diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in diagnostics.iter().enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        render_one(&mut out, path, d);
    }
    if diagnostics.len() > 1 {
        out.push_str(&format!(
            "\n\nerror: {} has {} errors",
            path.display(),
            diagnostics.len()
        ));
    }
    out
}

fn render_one(out: &mut String, path: &Path, d: &Diagnostic) {
    out.push_str(&format!("error: {}", d.message));
    let pad = match &d.location {
        Some(loc) => " ".repeat(loc.line.to_string().len()),
        None => " ".into(),
    };
    match &d.location {
        Some(loc) => {
            out.push_str(&format!(
                "\n{pad} --> {}:{}:{}",
                path.display(),
                loc.line,
                loc.column
            ));
            out.push_str(&format!("\n{pad} |"));
            // Tabs become single spaces so carets line up with columns.
            let line = loc.source_line.replace('\t', " ");
            out.push_str(&format!("\n{} | {line}", loc.line));
            out.push_str(&format!(
                "\n{pad} | {}{}",
                " ".repeat(loc.column - 1),
                "^".repeat(loc.width)
            ));
        }
        None => out.push_str(&format!("\n{pad} --> {}", path.display())),
    }
    if let Some(help) = &d.help {
        out.push_str(&format!("\n{pad} = help: {help}"));
    }
    for note in &d.notes {
        out.push_str(&format!("\n{pad} = note: {note}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_counts_lines_and_characters() {
        let text = "a = 1\nnäme = \"x\"\r\nlast";
        let loc = locate(text, 6..11);
        assert_eq!(loc.line, 2);
        assert_eq!(loc.column, 1);
        assert_eq!(loc.source_line, "näme = \"x\"");
        assert_eq!(loc.width, 4);
        let loc = locate(text, 14..17);
        assert_eq!((loc.line, loc.column, loc.width), (2, 8, 3));
        // A span running past its line is cut at the line's end.
        let loc = locate(text, 0..text.len());
        assert_eq!((loc.line, loc.column, loc.width), (1, 1, 5));
        // An empty span at the end of the file still gets one caret.
        let loc = locate(text, text.len()..text.len());
        assert_eq!((loc.line, loc.column, loc.width), (3, 5, 1));
        assert_eq!(line_col(text, 14), "2:8");
    }

    #[test]
    fn renders_rustc_style() {
        let text = "[[vms]]\nname = \"web\"\nmemroy = \"1G\"\n";
        let d = Problem::new("unknown key \"memroy\" in [[vms]]", 21..27)
            .help("did you mean \"memory\"?")
            .locate(text);
        let out = render(Path::new("castra.toml"), &[d]);
        insta::assert_snapshot!(out, @r#"
        error: unknown key "memroy" in [[vms]]
          --> castra.toml:3:1
          |
        3 | memroy = "1G"
          | ^^^^^^
          = help: did you mean "memory"?
        "#);
    }

    #[test]
    fn renders_wide_gutters_notes_and_a_summary() {
        let text = format!("{}x = 1\n", "\n".repeat(11));
        let a = Problem::new("first", 11..12)
            .note("see also 1:1")
            .locate(&text);
        let b = Problem {
            message: "second".into(),
            span: None,
            help: Some("fix it".into()),
            notes: vec![],
        }
        .locate(&text);
        let out = render(Path::new("castra.toml"), &[a, b]);
        insta::assert_snapshot!(out, @r"
        error: first
           --> castra.toml:12:1
           |
        12 | x = 1
           | ^
           = note: see also 1:1

        error: second
          --> castra.toml
          = help: fix it

        error: castra.toml has 2 errors
        ");
    }

    #[test]
    fn read_errors_name_the_file() {
        let err = ConfigError::Read {
            path: PathBuf::from("/nowhere/castra.toml"),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(
            err.to_string(),
            "error: could not read /nowhere/castra.toml: entity not found"
        );
        assert!(err.diagnostics().is_empty());
        assert_eq!(err.path(), Path::new("/nowhere/castra.toml"));
    }
}
