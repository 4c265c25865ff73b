//! The request target, made canonical once before anything is decided: percent-escapes of
//! characters that need none are decoded, dot segments and repeated slashes resolved, an
//! absolute-form target for this host brought to origin form. A target that would still
//! read differently to different servers (an encoded `/`, `\` or `%`, a control byte, a
//! byte outside ASCII, a dot segment climbing above the root, another authority) is refused
//! with a [`TargetInvalid`] naming why. What is decided is what is forwarded: `proxy` sends
//! the canonical target upstream; the query string is kept byte for byte.
//!
//! Pure functions on bytes: it must not read the gate, the routes or the policy. A target
//! with no `%`, no `//` and no `/.` is checked in one pass and allocates nothing.

use std::borrow::Cow;

/// Why a request target is refused. Each has a fixed phrase for the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetInvalid {
    #[error("request target is not in origin form")]
    NotOriginForm,
    #[error("absolute-form request target names another authority")]
    OtherAuthority,
    #[error("request target has an encoded slash")]
    EncodedSlash,
    #[error("request target has a backslash, raw or encoded")]
    Backslash,
    #[error("request target has an encoded percent sign")]
    EncodedPercent,
    #[error("request target has a control byte, raw or encoded")]
    Control,
    #[error("request target has a byte outside ASCII")]
    NonAscii,
    #[error("request target has a malformed percent escape")]
    BadEscape,
    #[error("request target has a character that must stay encoded")]
    Reserved,
    #[error("request target climbs above the root with dot segments")]
    ClimbsOut,
}

impl TargetInvalid {
    /// The audit log's detail phrase.
    pub fn detail(self) -> &'static str {
        match self {
            TargetInvalid::NotOriginForm => "request target is not in origin form",
            TargetInvalid::OtherAuthority => "absolute-form request target names another authority",
            TargetInvalid::EncodedSlash => "request target has an encoded slash",
            TargetInvalid::Backslash => "request target has a backslash, raw or encoded",
            TargetInvalid::EncodedPercent => "request target has an encoded percent sign",
            TargetInvalid::Control => "request target has a control byte, raw or encoded",
            TargetInvalid::NonAscii => "request target has a byte outside ASCII",
            TargetInvalid::BadEscape => "request target has a malformed percent escape",
            TargetInvalid::Reserved => "request target has a character that must stay encoded",
            TargetInvalid::ClimbsOut => "request target climbs above the root with dot segments",
        }
    }
}

/// A canonical request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical<'a> {
    /// The path: `/`-separated, no empty, `.` or `..` segment (but a trailing `/` is kept),
    /// no percent-escape, every byte an RFC 3986 `pchar` or `/`.
    pub path: Cow<'a, str>,
    /// The query string after `?`, byte for byte (without the `?`).
    pub query: Option<&'a str>,
    /// The target differs from what the client sent: the upstream must get this one.
    pub rewritten: bool,
}

impl Canonical<'_> {
    /// The target to forward: path, then `?query` when there is one.
    pub fn to_target(&self) -> String {
        match self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.to_string(),
        }
    }
}

/// RFC 3986 `pchar` minus `%`: what may stand in a path segment as it is.
#[inline]
const fn is_plain(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'-' | b'.' | b'_' | b'~'
        | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
        | b':' | b'@')
}

/// What a raw path byte asks of the first pass: nothing (a plain byte other than `.`), a
/// look at the byte before it (`/` after `/` is a repeated slash, `.` after `/` may start a
/// dot segment), the slow path (`%`), or refusal.
const PLAIN: u8 = 0;
const SLASH_OR_DOT: u8 = 1;
const PERCENT: u8 = 2;
const REFUSED: u8 = 3;
// Built at compile time: an index out of bounds would fail the build, not a request.
#[allow(clippy::indexing_slicing)]
const CLASS: [u8; 256] = {
    let mut t = [REFUSED; 256];
    let mut b = 0;
    while b < 256 {
        // `b` < 256: the cast is exact.
        let c = b as u8;
        t[b] = match c {
            b'/' | b'.' => SLASH_OR_DOT,
            b'%' => PERCENT,
            _ if is_plain(c) => PLAIN,
            _ => REFUSED,
        };
        b += 1;
    }
    t
};

/// Why a byte that is not plain is refused (raw or decoded).
#[inline]
fn refusal(b: u8, encoded: bool) -> TargetInvalid {
    match b {
        b'/' => TargetInvalid::EncodedSlash,
        b'\\' => TargetInvalid::Backslash,
        b'%' if encoded => TargetInvalid::EncodedPercent,
        0..=0x1f | 0x7f => TargetInvalid::Control,
        0x80..=0xff => TargetInvalid::NonAscii,
        _ => TargetInvalid::Reserved,
    }
}

/// The canonical form of a request target (`raw`: the bytes of the request line's target;
/// `host`: the request's `Host`, for an absolute-form target).
pub fn canonical<'a>(raw: &'a [u8], host: Option<&[u8]>) -> Result<Canonical<'a>, TargetInvalid> {
    let (raw, absolute) = match raw.first() {
        Some(b'/') => (raw, false),
        _ => (origin_of_absolute(raw, host)?, true),
    };
    let (path, query) = match raw.iter().position(|&b| b == b'?') {
        Some(i) => {
            let (path, rest) = raw.split_at(i);
            (path, rest.get(1..))
        }
        None => (raw, None),
    };
    let query = match query {
        Some(q) => {
            if let Some(&b) = q.iter().find(|&&b| b < 0x20 || b == 0x7f || b == b'#') {
                return Err(refusal(b, false));
            }
            Some(std::str::from_utf8(q).map_err(|_| TargetInvalid::NonAscii)?)
        }
        None => None,
    };
    // One pass, one table load a byte: is anything to be resolved or decoded?
    let mut slow = false;
    let mut prev = 0u8;
    for &b in path {
        // A `u8` indexes a 256-entry table.
        #[allow(clippy::indexing_slicing)]
        let class = CLASS[usize::from(b)];
        match class {
            PLAIN => {}
            SLASH_OR_DOT => slow |= prev == b'/',
            PERCENT => slow = true,
            _ => return Err(refusal(b, false)),
        }
        prev = b;
    }
    let path = if slow {
        let resolved = resolve(path)?;
        if resolved.as_bytes() == path {
            // Only plain bytes were seen (checked above, or decoded to plain): ASCII.
            Cow::Borrowed(std::str::from_utf8(path).map_err(|_| TargetInvalid::NonAscii)?)
        } else {
            Cow::Owned(resolved)
        }
    } else {
        Cow::Borrowed(std::str::from_utf8(path).map_err(|_| TargetInvalid::NonAscii)?)
    };
    let rewritten = absolute || matches!(path, Cow::Owned(_));
    Ok(Canonical {
        path,
        query,
        rewritten,
    })
}

/// The path and query of an absolute-form target (`http://host/path`) whose authority is
/// this request's `Host`.
fn origin_of_absolute<'a>(raw: &'a [u8], host: Option<&[u8]>) -> Result<&'a [u8], TargetInvalid> {
    let scheme = |s: &[u8]| {
        raw.split_at_checked(s.len())
            .filter(|(p, _)| p.eq_ignore_ascii_case(s))
            .map(|(_, rest)| rest)
    };
    let Some(rest) = scheme(b"http://").or_else(|| scheme(b"https://")) else {
        return Err(TargetInvalid::NotOriginForm);
    };
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let (authority, target) = rest.split_at(end);
    if !host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
        return Err(TargetInvalid::OtherAuthority);
    }
    match target.first() {
        Some(b'/') => Ok(target),
        // `http://host` and `http://host?q`: the root.
        _ => Ok(if target.is_empty() { b"/" } else { target }),
    }
    .and_then(|t| {
        if t.first() == Some(&b'?') {
            // An empty path with a query: refused rather than rebuilt.
            Err(TargetInvalid::NotOriginForm)
        } else {
            Ok(t)
        }
    })
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes and resolves a path that needs it (the slow path).
fn resolve(path: &[u8]) -> Result<String, TargetInvalid> {
    let mut segments: Vec<Vec<u8>> = Vec::new();
    let mut trailing = false;
    // The path starts with `/`: the first piece is empty.
    for raw in path.split(|&b| b == b'/').skip(1) {
        let mut seg = Vec::with_capacity(raw.len());
        let mut i = 0;
        while let Some(&b) = raw.get(i) {
            if b == b'%' {
                let (Some(h), Some(l)) = (
                    raw.get(i + 1).copied().and_then(hex),
                    raw.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(TargetInvalid::BadEscape);
                };
                let d = h << 4 | l;
                if !is_plain(d) {
                    return Err(refusal(d, true));
                }
                seg.push(d);
                i += 3;
            } else {
                seg.push(b);
                i += 1;
            }
        }
        trailing = false;
        match seg.as_slice() {
            b"" | b"." => trailing = true,
            b".." => {
                if segments.pop().is_none() {
                    return Err(TargetInvalid::ClimbsOut);
                }
                trailing = true;
            }
            _ => segments.push(seg),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        // Every byte is plain ASCII.
        out.push_str(std::str::from_utf8(s).map_err(|_| TargetInvalid::NonAscii)?);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
