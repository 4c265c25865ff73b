//! `provgate audit query` and `audit summary`: stream a log (a file, or a directory of
//! segments) and select request records and summaries by time range, decision, reason,
//! model, version, caller and request ID. One line in memory at a time.
//!
//! Owns the filter and the counting; it never checks the chain (that is `verify`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::Value;

use super::read::for_each_line_in;
use super::segments;

/// What to select; every given field must match.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// RFC 3339 UTC, milliseconds (as records hold them); inclusive.
    pub since: Option<String>,
    /// Exclusive.
    pub until: Option<String>,
    pub decision: Option<String>,
    pub reason: Option<String>,
    pub model: Option<String>,
    pub version: Option<String>,
    /// A caller's `sub`, or its `iss`.
    pub caller: Option<String>,
    pub request_id: Option<String>,
}

/// Formats a time as records do, for comparing with their `time` fields.
pub fn record_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

/// The fields a filter and a summary look at, borrowed from the line (no tree built).
#[derive(Deserialize, Default)]
pub struct View<'a> {
    #[serde(borrow, default)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub first: Option<Cow<'a, str>>,
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(borrow, default)]
    pub decision: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub version_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub request_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub caller_sub: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub caller_iss: Option<Cow<'a, str>>,
}

impl Filter {
    /// Whether a record matches; `Some(count)` (1 for a request, the summary's count for a
    /// summary) when it does. Segment, checkpoint and pruning records never match.
    pub fn matches(&self, v: &View<'_>) -> Option<u64> {
        let (time, count) = match v.kind.as_deref() {
            None => (v.time.as_deref()?, 1),
            Some("summary") => (v.first.as_deref()?, v.count?),
            Some(_) => return None,
        };
        let eq = |want: &Option<String>, got: &Option<Cow<'_, str>>| {
            want.as_deref().is_none_or(|w| got.as_deref() == Some(w))
        };
        let ok = self.since.as_deref().is_none_or(|s| time >= s)
            && self.until.as_deref().is_none_or(|u| time < u)
            && eq(&self.decision, &v.decision)
            && eq(&self.reason, &v.reason)
            && eq(&self.model, &v.model)
            && eq(&self.version, &v.version_id)
            && eq(&self.request_id, &v.request_id)
            && self.caller.as_deref().is_none_or(|c| {
                v.caller_sub.as_deref() == Some(c) || v.caller_iss.as_deref() == Some(c)
            });
        ok.then_some(count)
    }
}

/// The segments of `path` (a file with its rotated segments, a lone segment, or a directory
/// of logs), oldest first ([`segments::list`]: a log that rotates or is pruned while it is
/// read loses nothing and fails nothing).
pub fn segments_of(path: &Path) -> std::io::Result<Vec<segments::Segment>> {
    if path.is_dir() {
        let mut out = Vec::new();
        for log in segments::logs_in(path)? {
            out.extend(segments::list(&log)?);
        }
        return Ok(out);
    }
    let rotated = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.len() >= 6 && e.bytes().all(|b| b.is_ascii_digit()));
    if rotated {
        Ok(vec![segments::Segment::at(path.to_path_buf())])
    } else {
        segments::list(path)
    }
}

/// Calls `f(view, raw line, count)` for each matching record, streaming.
pub fn scan(
    path: &Path,
    filter: &Filter,
    mut f: impl FnMut(&View<'_>, &[u8], u64),
) -> std::io::Result<()> {
    for segment in segments_of(path)? {
        let Some(file) = segment.open()? else {
            continue;
        };
        for_each_line_in(file, |_, bytes| {
            if let Ok(v) = serde_json::from_slice::<View<'_>>(bytes) {
                if let Some(count) = filter.matches(&v) {
                    f(&v, bytes, count);
                }
            }
            true
        })?;
    }
    Ok(())
}

/// Parses a matched line into a tree (for the table and the export).
pub fn tree(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

/// One row of the query table.
pub fn table_row(v: &Value, count: u64) -> String {
    let s = |n: &str| field(v, n).unwrap_or("-").to_string();
    let time = field(v, "time")
        .or_else(|| field(v, "first"))
        .unwrap_or("-");
    let mut path = s("path");
    if path.len() > 60 {
        let mut end = 57;
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        path.truncate(end);
        path.push_str("...");
    }
    format!(
        "{time:<24} {:<11} {:<22} {:<20} {:<10} {:<40} {:>6} {:<24} {path}",
        s("decision"),
        s("reason"),
        s("model"),
        s("version_id"),
        s("caller_sub"),
        count,
        s("request_id"),
    )
}

pub const TABLE_HEADER: &str = "TIME                     DECISION    REASON                 MODEL                VERSION    CALLER                                    COUNT REQUEST_ID               PATH";

/// Distinct values kept per dimension; the rest are counted under `(other)`.
const MAX_DISTINCT: usize = 10_000;

/// Counts by reason, model, version and caller.
#[derive(Debug, Default)]
pub struct Summary {
    pub total: u64,
    pub by_decision: HashMap<String, u64>,
    pub by_reason: HashMap<String, u64>,
    pub by_model: HashMap<String, u64>,
    pub by_version: HashMap<String, u64>,
    pub by_caller: HashMap<String, u64>,
}

impl Summary {
    pub fn add(&mut self, v: &View<'_>, count: u64) {
        fn bump(map: &mut HashMap<String, u64>, key: Option<&str>, n: u64) {
            let key = key.unwrap_or("-");
            if map.len() >= MAX_DISTINCT && !map.contains_key(key) {
                *map.entry("(other)".into()).or_default() += n;
            } else {
                *map.entry(key.to_string()).or_default() += n;
            }
        }
        self.total += count;
        bump(&mut self.by_decision, v.decision.as_deref(), count);
        bump(&mut self.by_reason, v.reason.as_deref(), count);
        bump(&mut self.by_model, v.model.as_deref(), count);
        bump(&mut self.by_version, v.version_id.as_deref(), count);
        bump(&mut self.by_caller, v.caller_sub.as_deref(), count);
    }

    /// The summary as text, each dimension by count, largest first.
    pub fn render(&self) -> String {
        let mut out = format!("records: {}\n", self.total);
        for (name, map) in [
            ("decision", &self.by_decision),
            ("reason", &self.by_reason),
            ("model", &self.by_model),
            ("version", &self.by_version),
            ("caller", &self.by_caller),
        ] {
            out.push_str(&format!("\nby {name}:\n"));
            let mut rows: Vec<_> = map.iter().collect();
            rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (k, n) in rows {
                out.push_str(&format!("  {n:>10}  {k}\n"));
            }
        }
        out
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "records": self.total,
            "decision": self.by_decision,
            "reason": self.by_reason,
            "model": self.by_model,
            "version": self.by_version,
            "caller": self.by_caller,
        })
    }
}
