//! The MLflow model registry as a record source.
//!
//! A model version carries its approval in three tags:
//! - `provgate.artefact_digest`: the OMS digest the version was approved for;
//! - `provgate.approval`: the signed record (compact JWS);
//! - `provgate.revoked`: `true` once the approval is withdrawn;
//! - `provgate.exception` (or `provgate.exception.NAME`, several): signed exceptions.
//!
//! provgate finds the versions for a digest with `model-versions/search` and a tag filter
//! (MLflow needs backticks around a dotted tag key). A deleted version is no longer found,
//! and a version without the record tag carries no approval: either way the digest is no
//! longer approved. [`publish`] writes the tags, for `provgate approve --publish-mlflow` and
//! `provgate promote`, which also sets the environment's alias ([`set_alias`]).

use super::config::{RegistryAuth, RemoteRegistry};
use super::source::{
    accepted, authorize, body, snippet, Ask, Failed, Fetched, FetchedRecord, Reply, Source,
};
use crate::digest::Digest;
use crate::kit::http::{send, FetchError};

pub const TAG_DIGEST: &str = "provgate.artefact_digest";
pub const TAG_APPROVAL: &str = "provgate.approval";
pub const TAG_REVOKED: &str = "provgate.revoked";
/// An exception for the version (`typ: exception+jwt`); several as `provgate.exception.NAME`.
pub const TAG_EXCEPTION: &str = "provgate.exception";

/// Versions asked for per page, and pages followed per digest.
const PAGE_SIZE: u32 = 200;
const MAX_PAGES: usize = 10;

/// An MLflow tracking server's model registry.
pub struct Mlflow {
    client: reqwest::Client,
    base: String,
    auth: RegistryAuth,
}

impl Mlflow {
    pub fn new(client: reqwest::Client, config: &RemoteRegistry) -> Mlflow {
        Mlflow {
            client,
            base: config.url.clone(),
            auth: config.auth.clone(),
        }
    }

    async fn search_page(
        &self,
        digest: &Digest,
        page_token: Option<&str>,
    ) -> Result<SearchPage, FetchError> {
        let url = format!("{}/api/2.0/mlflow/model-versions/search", self.base);
        // The digest is parsed, so it is `sha256:` and hex: nothing to escape in the filter.
        let filter = format!("tags.`{TAG_DIGEST}` = '{digest}'");
        let page_size = PAGE_SIZE.to_string();
        let mut query = vec![("filter", filter.as_str()), ("max_results", &page_size)];
        if let Some(token) = page_token {
            query.push(("page_token", token));
        }
        let request = authorize(self.client.get(&url).query(&query), &self.auth)?;
        let resp = send(request, &url).await?;
        let status = resp.status();
        let bytes = body(resp).await?;
        if !status.is_success() {
            return Err(FetchError::Refused {
                url,
                status,
                body: snippet(&bytes),
            });
        }
        parse_page(&bytes).map_err(|e| FetchError::answer(&url, format!("unexpected answer: {e}")))
    }
}

impl Source for Mlflow {
    fn label(&self) -> &'static str {
        "mlflow"
    }

    async fn fetch(&self, digest: &Digest, _ask: Ask<'_>) -> Result<Reply, Failed> {
        let mut records = Vec::new();
        let mut page_token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self.search_page(digest, page_token.as_deref()).await?;
            records.extend(page.model_versions.iter().flat_map(records_of));
            page_token = page.next_page_token.filter(|t| !t.is_empty());
            if page_token.is_none() {
                break;
            }
        }
        if page_token.is_some() {
            return Err(FetchError::answer(
                &self.base,
                format!(
                    "more than {} model versions carry {digest}",
                    PAGE_SIZE as usize * MAX_PAGES
                ),
            )
            .into());
        }
        // The search's order is the server's; make equal answers compare equal.
        records.sort_by(|a, b| a.origin.cmp(&b.origin));
        Ok(Reply::from(Fetched::Records {
            records,
            etag: None,
        }))
    }
}

/// One `model-versions/search` answer: the records its versions carry, and the next page's
/// token (`None` or empty: the last page). Public for the fuzz targets (`provgate::fuzzing`).
pub fn page_records(
    bytes: &[u8],
) -> Result<(Vec<FetchedRecord>, Option<String>), serde_json::Error> {
    let page = parse_page(bytes)?;
    let records = page.model_versions.iter().flat_map(records_of).collect();
    Ok((records, page.next_page_token))
}

fn parse_page(bytes: &[u8]) -> Result<SearchPage, serde_json::Error> {
    serde_json::from_slice(bytes)
}

#[derive(Debug, serde::Deserialize)]
struct SearchPage {
    #[serde(default)]
    model_versions: Vec<ModelVersion>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct ModelVersion {
    name: String,
    version: String,
    #[serde(default)]
    tags: Vec<Tag>,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct Tag {
    key: String,
    #[serde(default)]
    value: String,
}

impl ModelVersion {
    fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|t| t.key == key)
            .map(|t| t.value.as_str())
    }
}

/// The record a model version carries, if any, and its exceptions (tag
/// `provgate.exception`, or several as `provgate.exception.NAME`), passed on as fetched:
/// which is which is the verifier's (`typ`). A version's `provgate.revoked` covers both.
fn records_of(version: &ModelVersion) -> Vec<FetchedRecord> {
    let origin = format!("model version {}/{}", version.name, version.version);
    let revoked = revoked(version.tag(TAG_REVOKED));
    let mut out = Vec::new();
    match version.tag(TAG_APPROVAL).map(str::trim) {
        Some(jws) => out.push(FetchedRecord {
            jws: jws.to_string(),
            revoked,
            origin: origin.clone(),
        }),
        None => {
            tracing::debug!(%origin, "model version carries the digest tag but no approval record");
        }
    }
    for t in &version.tags {
        let is_exception = t.key == TAG_EXCEPTION
            || t.key
                .strip_prefix(TAG_EXCEPTION)
                .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1);
        if is_exception {
            out.push(FetchedRecord {
                jws: t.value.trim().to_string(),
                revoked,
                origin: format!("{origin} tag {}", t.key),
            });
        }
    }
    out
}

/// `provgate.revoked`: absent or `false` is in force; `true` is revoked; anything else is
/// read as revoked too (fail closed), with a warning.
fn revoked(value: Option<&str>) -> bool {
    match value.map(str::trim) {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) => {
            tracing::warn!(value = %v, "{TAG_REVOKED} is neither true nor false; read as revoked");
            true
        }
    }
}

/// Writes an approval record and its digest onto an existing model version, for
/// `provgate approve --publish-mlflow`. The record is written first, so a reader that finds
/// the digest tag finds the record with it.
pub async fn publish(
    client: &reqwest::Client,
    base: &str,
    auth: &RegistryAuth,
    model: &str,
    version: &str,
    digest: &Digest,
    jws: &str,
) -> Result<(), FetchError> {
    let base = base.trim_end_matches('/');
    let get = format!("{base}/api/2.0/mlflow/model-versions/get");
    let resp = authorize(
        client
            .get(&get)
            .query(&[("name", model), ("version", version)]),
        auth,
    )?;
    let resp = send(resp, &get).await?;
    let status = resp.status();
    let bytes = body(resp).await?;
    if !status.is_success() {
        return Err(FetchError::Refused {
            url: format!("{get} (model version {model}/{version})"),
            status,
            body: snippet(&bytes),
        });
    }
    let set = format!("{base}/api/2.0/mlflow/model-versions/set-tag");
    for (key, value) in [(TAG_APPROVAL, jws), (TAG_DIGEST, &digest.to_string())] {
        let payload = serde_json::json!({
            "name": model, "version": version, "key": key, "value": value,
        });
        let resp = send(authorize(client.post(&set).json(&payload), auth)?, &set).await?;
        accepted(resp, format!("{set} (setting {key})")).await?;
    }
    Ok(())
}

/// Points the registered model's `alias` at `version` (`POST
/// /api/2.0/mlflow/registered-models/alias`), for `provgate promote`: the environment's name
/// for the version it runs. MLflow moves an alias that pointed elsewhere.
pub async fn set_alias(
    client: &reqwest::Client,
    base: &str,
    auth: &RegistryAuth,
    model: &str,
    alias: &str,
    version: &str,
) -> Result<(), FetchError> {
    let url = format!(
        "{}/api/2.0/mlflow/registered-models/alias",
        base.trim_end_matches('/')
    );
    let payload = serde_json::json!({ "name": model, "alias": alias, "version": version });
    let resp = send(authorize(client.post(&url).json(&payload), auth)?, &url).await?;
    accepted(resp, format!("{url} (alias {alias})")).await
}

#[cfg(test)]
mod tests;
