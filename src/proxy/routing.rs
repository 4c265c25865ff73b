//! Which door a request goes through and which model it names: the door table compiled
//! from the `[upstream] api` profiles ([`profiles`]; its `[routing]` section lives in
//! [`config`]) matched on the canonical path, and the model a body names in the JSON fields
//! its door lists, as a [`Named`].
//!
//! Reads the request only: it must not read the gate, a model's state or the policy, and
//! allocates nothing for requests that name no model.

pub mod config;
pub mod profiles;

use std::borrow::Cow;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use self::profiles::Field;

/// The model a request names, as far as routing could read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    Nothing,
    Model(String),
    /// Several names in one body (an Ollama copy's source and destination, a TGI model
    /// and adapter): each is checked.
    Models(Vec<String>),
    BodyInvalid,
    BodyTooLarge,
    /// A body larger than can be read before the decision (its declared length), on a
    /// single-model sidecar: the request is decided as naming that model, and the body is
    /// checked when whole.
    Held(usize),
}

/// The model a request that names none is for, given whether each configured model is a
/// base (not an adapter): the only model, else the only base model, if there is exactly
/// one (an adapter is never the server's default). The gate and `explain` both ask this.
#[inline]
pub fn default_model(is_base: impl ExactSizeIterator<Item = bool>) -> Option<usize> {
    if is_base.len() == 1 {
        return Some(0);
    }
    let mut bases = is_base.enumerate().filter(|(_, b)| *b).map(|(i, _)| i);
    match (bases.next(), bases.next()) {
        (Some(i), None) => Some(i),
        _ => None,
    }
}

/// The model a JSON request body names in its top-level `model` field (the OpenAI API).
pub fn model_in_body(body: &[u8]) -> Named {
    names_in_body(body, &[Field::Model])
}

/// The models a JSON request body names in `fields`. The body must be a JSON object; each
/// field, when present, a string or null (a duplicated field is refused, so provgate and
/// the model server cannot read different names from one body). An empty name, `null`, and
/// TGI's `"tgi"` name nothing (the server's default model).
pub fn names_in_body(body: &[u8], fields: &[Field]) -> Named {
    // serde would also read a struct from a JSON array: insist on an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Named::BodyInvalid;
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = match (Wanted { fields }).deserialize(&mut de).and_then(|f| {
        de.end()?;
        Ok(f)
    }) {
        Ok(f) => f,
        Err(_) => return Named::BodyInvalid,
    };
    let mut names = found.into_iter().flatten().filter(|n| !n.is_empty());
    match (names.next(), names.next()) {
        (None, _) => Named::Nothing,
        (Some(one), None) => Named::Model(one.into_owned()),
        (Some(a), Some(b)) => {
            let mut all = vec![a.into_owned(), b.into_owned()];
            all.extend(names.map(Cow::into_owned));
            Named::Models(all)
        }
    }
}

/// Reads the wanted fields of a JSON object; everything else is skipped unread.
struct Wanted<'f> {
    fields: &'f [Field],
}

/// At most one value per field kind (seven kinds).
type Found<'de> = [Option<Cow<'de, str>>; 7];

impl<'de> DeserializeSeed<'de> for Wanted<'_> {
    type Value = Found<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Wanted<'_> {
    type Value = Found<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found: Found<'de> = Default::default();
        let mut seen = 0u8;
        while let Some(key) = map.next_key_seed(KeyIn(self.fields))? {
            let Some(field) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let slot = field as usize;
            if seen & (1 << slot) != 0 {
                return Err(serde::de::Error::custom("duplicate field"));
            }
            seen |= 1 << slot;
            let cell = found
                .get_mut(slot)
                .ok_or_else(|| serde::de::Error::custom("unknown field"))?;
            *cell = match field {
                Field::AdapterId => map.next_value_seed(AdapterId)?,
                Field::TgiModel => map.next_value_seed(Name)?.filter(|m| m != "tgi"),
                _ => map.next_value_seed(Name)?,
            };
        }
        Ok(found)
    }
}

/// An object key: which of the wanted fields it is, compared without allocating.
struct KeyIn<'f>(&'f [Field]);

impl<'de> DeserializeSeed<'de> for KeyIn<'_> {
    type Value = Option<Field>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIn<'_> {
    type Value = Option<Field>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().copied().find(|f| f.key() == v))
    }
}

/// An object key: is it this one? Compared without allocating.
struct KeyIs(&'static str);

impl<'de> DeserializeSeed<'de> for KeyIs {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v == self.0)
    }
}

/// A name: a string (borrowed from the body when it has no escapes) or null.
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string or null")
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_owned())))
    }
}

/// TGI's `parameters` object: its `adapter_id`, if any.
struct AdapterId;

impl<'de> DeserializeSeed<'de> for AdapterId {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for AdapterId {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a parameters object")
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut id = None;
        let mut seen = false;
        while let Some(is_id) = map.next_key_seed(KeyIs("adapter_id"))? {
            if !is_id {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if seen {
                return Err(serde::de::Error::custom("duplicate adapter_id"));
            }
            seen = true;
            id = map.next_value_seed(Name)?;
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests;
