//! Streaming, bounded reading of audit segments: one line at a time, never more than
//! [`MAX_LINE_BYTES`] held, so a multi-GB set or a 10 MB garbage line costs flat memory.
//!
//! Owns only the line splitting; what a line means is the verifier's and the query's.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use super::record::MAX_LINE_BYTES;

/// One line as read.
pub enum RawLine<'a> {
    /// A line's bytes, without its newline. `complete` is false for a last line with no
    /// newline (cut short).
    Line { bytes: &'a [u8], complete: bool },
    /// A line longer than [`MAX_LINE_BYTES`], skipped; its length.
    TooLong(u64),
}

/// Calls `f(line_number, line)` for each line of `path` until it returns false.
pub fn for_each_raw(path: &Path, f: impl FnMut(u64, RawLine<'_>) -> bool) -> std::io::Result<()> {
    for_each_raw_in(File::open(path)?, f)
}

/// [`for_each_raw`] over a file already open (a [`super::segments::Segment`]'s).
pub fn for_each_raw_in(
    file: File,
    mut f: impl FnMut(u64, RawLine<'_>) -> bool,
) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut n = 0u64;
    let mut skipped: Option<u64> = None;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            // End of file: a last line without its newline.
            if let Some(len) = skipped {
                n += 1;
                f(n, RawLine::TooLong(len));
            } else if !buf.is_empty() {
                n += 1;
                f(
                    n,
                    RawLine::Line {
                        bytes: &buf,
                        complete: false,
                    },
                );
            }
            return Ok(());
        }
        let (take, newline) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        match &mut skipped {
            Some(len) => *len += take as u64,
            None if buf.len() + take > MAX_LINE_BYTES => {
                skipped = Some((buf.len() + take) as u64);
                buf.clear();
            }
            // `take` is at most `chunk.len()` (a position in it, or its length).
            None => buf.extend_from_slice(chunk.get(..take).unwrap_or(chunk)),
        }
        reader.consume(take + usize::from(newline));
        if newline {
            n += 1;
            let go = match skipped.take() {
                Some(len) => f(n, RawLine::TooLong(len)),
                None => f(
                    n,
                    RawLine::Line {
                        bytes: &buf,
                        complete: true,
                    },
                ),
            };
            buf.clear();
            if !go {
                return Ok(());
            }
        }
    }
}

/// Calls `f(line_number, bytes)` for each whole, bounded line; skips the rest.
pub fn for_each_line(path: &Path, f: impl FnMut(u64, &[u8]) -> bool) -> std::io::Result<()> {
    for_each_line_in(File::open(path)?, f)
}

/// [`for_each_line`] over a file already open.
pub fn for_each_line_in(file: File, mut f: impl FnMut(u64, &[u8]) -> bool) -> std::io::Result<()> {
    for_each_raw_in(file, |n, l| match l {
        RawLine::Line {
            bytes,
            complete: true,
        } => f(n, bytes),
        _ => true,
    })
}
