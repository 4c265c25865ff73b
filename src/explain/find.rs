//! Finding one request's audit record: streamed from a log (the active file with its rotated
//! segments, a lone segment, or a directory of logs, walked as `audit query` walks them), or
//! read from one JSON line given whole. Reads only; the chain is `audit verify`'s business.
//!
//! Owns [`Recorded`], the fields of a request record a replay reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ExplainError;
use crate::audit::query::{segments_of, View};
use crate::audit::read::for_each_line_in;
use crate::audit::ExceptionRef;

/// One request record, as written (owned; unknown fields ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub request_id: String,
    pub time: String,
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_sub: Option<String>,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub record_signers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_signer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exceptions: Vec<ExceptionRef>,
    /// Fields the writer cut to their bound (a replay from a cut field may differ).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cut: BTreeMap<String, usize>,
}

impl Recorded {
    /// Whether the request was refused (or, in dry-run, would have been).
    pub fn denied(&self) -> bool {
        self.decision != "allow"
    }
}

/// Where a record was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// The segment file holding it.
    pub segment: PathBuf,
    /// Its position among the segments walked, oldest first (1-based), and how many there
    /// are.
    pub segment_index: usize,
    pub segments: usize,
    /// Its line in that segment (1-based).
    pub line: u64,
}

/// Reads one record given as JSON text (`--record FILE|-`).
pub fn parse(text: &str) -> Result<Recorded, ExplainError> {
    let line = text.trim();
    let recorded: Recorded =
        serde_json::from_str(line).map_err(|e| ExplainError::Record(e.to_string()))?;
    Ok(recorded)
}

/// Finds the request record with this ID in the log at `log`, oldest segment first.
pub fn find(log: &Path, request_id: &str) -> Result<(Recorded, Location), ExplainError> {
    let files = segments_of(log).map_err(|source| ExplainError::Io {
        path: log.display().to_string(),
        source,
    })?;
    let segments = files.len();
    // A cheap pre-filter on the raw line, when the ID is written as is (no JSON escapes).
    let plain = !request_id.is_empty()
        && request_id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    let needle = request_id.as_bytes();
    for (i, segment) in files.into_iter().enumerate() {
        let path = segment.path.clone();
        let opened = segment.open().map_err(|source| ExplainError::Io {
            path: path.display().to_string(),
            source,
        })?;
        // Pruned since the log was listed: its records are gone.
        let Some(file) = opened else {
            continue;
        };
        let mut hit: Option<(u64, Result<Recorded, String>)> = None;
        for_each_line_in(file, |n, bytes| {
            if plain && !bytes.windows(needle.len()).any(|w| w == needle) {
                return true;
            }
            let Ok(v) = serde_json::from_slice::<View<'_>>(bytes) else {
                return true;
            };
            if v.kind.is_some() || v.request_id.as_deref() != Some(request_id) {
                return true;
            }
            hit = Some((
                n,
                serde_json::from_slice::<Recorded>(bytes).map_err(|e| e.to_string()),
            ));
            false
        })
        .map_err(|source| ExplainError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if let Some((line, parsed)) = hit {
            let recorded = parsed.map_err(ExplainError::Record)?;
            return Ok((
                recorded,
                Location {
                    segment: path,
                    segment_index: i + 1,
                    segments,
                    line,
                },
            ));
        }
    }
    Err(ExplainError::NotFound {
        request_id: request_id.to_string(),
        log: log.display().to_string(),
        segments,
    })
}
