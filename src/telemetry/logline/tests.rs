use super::*;
use std::sync::{Arc, Mutex};

#[test]
fn control_characters_are_escaped() {
    assert_eq!(escaped("a\nb\r\tc\u{1b}[31m"), "a\\nb\\r\\tc\\u{1b}[31m");
    assert_eq!(escaped("plain é"), "plain é");
}

/// A writer for the subscriber that keeps what it was given.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_field_with_a_newline_cannot_forge_a_log_line() {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .fmt_fields(EscapedFields)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let file = "evil.jws\n2026-01-01T00:00:00Z  INFO provgate: all good";
        tracing::warn!(file = %file, error = "bad\r\nline", "approval record rejected");
    });
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("file=evil.jws\\n2026"), "{text}");
    assert!(text.contains("error=bad\\r\\nline"), "{text}");
    assert!(text.contains("approval record rejected"), "{text}");
}
