//! The generator's error: every manifest mistake becomes one line,
//! `path/services.toml:LINE:COL: <what is wrong> — <what to write instead>`, so a failing
//! `build.rs` points the user at the exact place to fix.

use std::fmt;
use std::path::PathBuf;

/// Why [`compile`](crate::compile) or [`generate`](crate::generate) failed.
///
/// `Debug` prints the same text as `Display`, because a `build.rs` whose `main` returns
/// `Result<(), Box<dyn Error>>` prints the error with `Debug`.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A mistake in the manifest, located at `line:column` (both 1-based, columns in characters).
    #[error("{path}:{line}:{column}: {message}")]
    Manifest {
        /// The manifest's path, as given to the generator.
        path: String,
        /// The 1-based line of the offending value.
        line: usize,
        /// The 1-based column (in characters) of the offending value.
        column: usize,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// The manifest could not be read.
    #[error("{}: could not read the manifest: {source} — check the path given to meshrpc_build", path.display())]
    Read {
        /// The manifest's path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A generated file could not be written.
    #[error("{}: could not write generated code: {source} — check that the output directory is writable", path.display())]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The builder was configured in a way that cannot work.
    #[error("{0}")]
    Config(String),
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Error {
    /// The `(line, column)` of a manifest mistake, both 1-based.
    pub fn location(&self) -> Option<(usize, usize)> {
        match self {
            Error::Manifest { line, column, .. } => Some((*line, *column)),
            _ => None,
        }
    }
}

/// The manifest text and its path, to turn byte offsets into `path:LINE:COL` errors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub(crate) path: &'a str,
    pub(crate) text: &'a str,
}

impl Source<'_> {
    /// The 1-based line and column (in characters) of a byte offset.
    pub(crate) fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(self.text, offset.min(self.text.len()));
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// A manifest error at a byte offset; `problem` says what is wrong, `fix` what to write.
    pub(crate) fn error(
        &self,
        offset: usize,
        problem: impl fmt::Display,
        fix: impl fmt::Display,
    ) -> Error {
        let (line, column) = self.line_column(offset);
        Error::Manifest {
            path: self.path.to_owned(),
            line,
            column,
            message: format!("{problem} — {fix}"),
        }
    }
}

impl Source<'_> {
    /// A located warning line, `path:LINE:COL: <problem> — <fix>` (cargo adds `warning:`).
    pub(crate) fn warning(
        &self,
        offset: usize,
        problem: impl fmt::Display,
        fix: impl fmt::Display,
    ) -> String {
        let (line, column) = self.line_column(offset);
        format!("{}:{line}:{column}: {problem} — {fix}", self.path)
    }
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_lines_and_character_columns() {
        let source = Source {
            path: "s.toml",
            text: "ab\nçd = 1\n",
        };
        assert_eq!(source.line_column(0), (1, 1));
        assert_eq!(source.line_column(3), (2, 1));
        // `d` follows a two-byte character: byte 5, column 2.
        assert_eq!(source.line_column(5), (2, 2));
    }

    #[test]
    fn debug_prints_the_same_line_as_display() {
        let error = Source {
            path: "s.toml",
            text: "x",
        }
        .error(0, "bad", "good");
        assert_eq!(format!("{error:?}"), "s.toml:1:1: bad — good");
        assert_eq!(error.to_string(), "s.toml:1:1: bad — good");
    }
}
