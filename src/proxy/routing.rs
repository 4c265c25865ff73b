//! Which model a request names: a KServe v2 path (`/v2/models/{name}/...`), the `model`
//! field of an OpenAI JSON body, or nothing, as a [`Named`]; and which requests are routed
//! where (`[routing] openai_paths`, `models_path`). Its `[routing]` config section lives in
//! [`config`].
//!
//! Reads the request only: it must not read the gate, a model's state or the policy, and
//! allocates nothing for requests that name no model.

pub mod config;

use pingora::http::RequestHeader;

use self::config::Routing;

/// The model a request names, as far as routing could read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    Nothing,
    Model(String),
    BodyInvalid,
    BodyTooLarge,
    /// A body larger than can be read before the decision (its declared length), on a
    /// single-model sidecar: the request is decided as naming that model, and the body is
    /// checked when whole.
    Held(usize),
}

/// The model a request names in its path (KServe / Open Inference Protocol v2:
/// `/v2/models/{name}[/versions/{v}]/...`).
#[inline]
pub fn requested_model(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/models/")?;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then_some(name)
}

/// The model a JSON request body names in its top-level `model` field. The body must be a
/// JSON object; `model`, when present, a string (a duplicated `model` is refused, so
/// provgate and the model server cannot read different names from one body).
pub fn model_in_body(body: &[u8]) -> Named {
    #[derive(serde::Deserialize)]
    struct ModelField<'a> {
        #[serde(borrow, default)]
        model: Option<std::borrow::Cow<'a, str>>,
    }
    // serde would also read a struct from a JSON array: insist on an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Named::BodyInvalid;
    }
    match serde_json::from_slice::<ModelField<'_>>(body) {
        Ok(ModelField { model: Some(m) }) => Named::Model(m.into_owned()),
        Ok(ModelField { model: None }) => Named::Nothing,
        Err(_) => Named::BodyInvalid,
    }
}

/// Is this request's body where it names its model (POST to a configured OpenAI path)?
/// Comparisons only: nothing is allocated for requests that are not.
#[inline]
pub fn body_names_model(routing: &Routing, req: &RequestHeader) -> bool {
    req.method == http::Method::POST && routing.openai_paths.iter().any(|p| p == req.uri.path())
}

/// Is this the OpenAI model list, whose answer is filtered per caller?
#[inline]
pub fn is_listing(routing: &Routing, req: &RequestHeader) -> bool {
    req.method == http::Method::GET
        && routing
            .models_path
            .as_deref()
            .is_some_and(|p| p == req.uri.path())
}

#[cfg(test)]
mod tests;
