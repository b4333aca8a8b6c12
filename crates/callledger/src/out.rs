//! Printing the command's results to stdout, where a reader that stops reading is not an error.
//!
//! `println!` panics when stdout is closed (`callledger stats | head -3`); what is printed here
//! is written and flushed, and a broken pipe ends the printing quietly.

use std::fmt::Display;
use std::io::Write;

/// Writes `text` and a newline to stdout; a closed stdout is not an error.
pub fn line(text: impl Display) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Err(error) if reader_gone(&error) => Ok(()),
        written => written,
    }
}

/// Whether a write to stdout failed because its reader stopped reading: the end of the
/// output, not an error.
pub fn reader_gone(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::BrokenPipe
}
