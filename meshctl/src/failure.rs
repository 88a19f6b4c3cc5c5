//! Why a command failed, with the exit code scripts can tell apart.

use std::fmt;

/// A call was answered with a status other than `ok`.
pub(crate) const EXIT_STATUS: u8 = 1;
/// The input was wrong: an unknown service or method, a request that does not match the
/// schema, an unreadable file.
pub(crate) const EXIT_INPUT: u8 = 3;
/// The mesh could not be reached or asked: no seed answered, a certificate was refused.
pub(crate) const EXIT_MESH: u8 = 4;

/// A failed command: the message printed after `meshctl: ` and the process's exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// What went wrong and what to do about it.
    pub(crate) message: String,
    /// The exit code.
    pub(crate) exit: u8,
}

impl Failure {
    /// Wrong input (exit 3).
    pub(crate) fn input(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            exit: EXIT_INPUT,
        }
    }

    /// The mesh failed us (exit 4).
    pub(crate) fn mesh(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            exit: EXIT_MESH,
        }
    }

    /// A call answered a non-ok status (exit 1).
    pub(crate) fn status(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            exit: EXIT_STATUS,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Writes `text` to stdout. A reader that went away (`meshctl members | head -1`) is not an
/// error worth a panic: the rest of the output is dropped.
pub(crate) fn emit(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Prints `value` as pretty JSON on stdout.
pub(crate) fn print_json(value: &serde_json::Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|error| Failure::mesh(format!("cannot print JSON: {error}")))?;
    emit(&format!("{text}\n"));
    Ok(())
}

/// `print!` that survives a closed stdout (see [`emit`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::failure::emit(&format!($($arg)*))
    };
}

/// `println!` that survives a closed stdout (see [`emit`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::failure::emit(&format!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};
