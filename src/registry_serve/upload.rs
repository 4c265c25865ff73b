//! The reference registry's upload form (`provgate registry serve --upload-token-file`):
//! `PUT /approvals/sha256/<64 hex>` with `Authorization: Bearer <token>` and one record as the
//! body writes it into the directory, where the reload picks it up like any other file.
//!
//! Owns the bearer check (compared in constant time), the body's bounds and shape (one line, a
//! JWS whose claimed `artefact.digest` is the URL's) and the atomic write (a hidden temporary
//! file, then a rename). It does not verify signatures (the sidecars do, as for every file of
//! the directory) and never builds a path from anything but the record ID, which is checked.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;

/// The largest record body accepted, in bytes (the directory reader's bound for a record).
pub const MAX_UPLOAD: usize = 1 << 20;

/// Uploads are on: the directory written into and the SHA-256 of the bearer token.
#[derive(Clone)]
pub struct Upload {
    dir: PathBuf,
    token_hash: [u8; 32],
}

/// Why the upload token could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the upload token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the upload token file {path} is empty")]
    Empty { path: String },
}

impl Upload {
    /// Reads the token (surrounding white space trimmed) from `token_file`, once.
    pub fn new(dir: PathBuf, token_file: &Path) -> Result<Upload, TokenError> {
        let path = token_file.display().to_string();
        let text = std::fs::read_to_string(token_file).map_err(|source| TokenError::Read {
            path: path.clone(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty { path });
        }
        Ok(Upload {
            dir,
            token_hash: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Does the `Authorization` header carry the token? The hashes are compared, so the
    /// comparison takes the same time whatever the presented token's length and content.
    pub fn authorized(&self, authorization: Option<&http::HeaderValue>) -> bool {
        let Some(presented) = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        aws_lc_rs::constant_time::verify_slices_are_equal(&presented, &self.token_hash).is_ok()
    }

    /// Handles an authorized upload for `digest`: the status to answer and a short reason.
    pub async fn store(&self, digest: &Digest, body: Incoming) -> (StatusCode, &'static str) {
        let bytes: Bytes = match Limited::new(body, MAX_UPLOAD).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "record too large"),
        };
        let name = match check(&bytes, digest) {
            Ok(name) => name,
            Err(why) => return (StatusCode::UNPROCESSABLE_ENTITY, why),
        };
        let record = match std::str::from_utf8(&bytes) {
            Ok(text) => format!("{}\n", text.trim()),
            Err(_) => return (StatusCode::UNPROCESSABLE_ENTITY, "record is not UTF-8"),
        };
        let dir = self.dir.clone();
        let written = tokio::task::spawn_blocking(move || write_atomic(&dir, &name, &record)).await;
        match written {
            Ok(Ok(true)) => (StatusCode::NO_CONTENT, "replaced"),
            Ok(Ok(false)) => (StatusCode::CREATED, "created"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "upload not written");
                (StatusCode::INTERNAL_SERVER_ERROR, "not written")
            }
            Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "not written"),
        }
    }
}

/// The file name a record is stored under: `<jti>.jws` for an ID of at most 128 letters,
/// digits, `.`, `_` and `-` (not starting with `.`), else the ID's SHA-256 in hex. The same
/// for `provgate promote` into a directory, so a co-signed record replaces the file of its
/// earlier promotion (or upload).
pub fn record_file_name(jti: &str) -> String {
    let plain = !jti.is_empty()
        && jti.len() <= 128
        && !jti.starts_with('.')
        && jti
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if plain {
        format!("{jti}.jws")
    } else {
        format!("{}.jws", hex::encode(Sha256::digest(jti.as_bytes())))
    }
}

/// Checks an upload's shape: one line of UTF-8, a JWS whose payload names `digest` and a
/// record ID. Returns the file name to store it under.
pub fn check(bytes: &[u8], digest: &Digest) -> Result<String, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "record is not UTF-8")?;
    let line = text.trim();
    if line.is_empty() || line.contains('\n') {
        return Err("the body must be one record on one line");
    }
    match crate::approval::peek_claims(line) {
        Some((Some(d), Some(jti))) if d == *digest => Ok(record_file_name(&jti)),
        Some((Some(_), Some(_))) => Err("the record is for another digest than the URL's"),
        _ => Err("not a JWS naming an artefact digest and a record ID"),
    }
}

/// Writes `text` to `dir/name` through a hidden temporary file and a rename, so a reader
/// never sees half a record. Returns whether a file was replaced.
pub fn write_atomic(dir: &Path, name: &str, text: &str) -> std::io::Result<bool> {
    use std::io::Write;
    let target = dir.join(name);
    let replaced = target.exists();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| replaced)
}

#[cfg(test)]
mod tests;
