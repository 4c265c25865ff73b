//! The `[upstream.probe]` table: which question the probe asks the model server and how
//! often, its file struct, defaults, validation, and the validated [`Probe`] with its
//! [`ProbeKind`]. Data only: the probing itself is [`crate::probe`]'s, which imports this
//! file; this file must import nothing from the probe (nor from the top-level `config`).

use std::time::Duration;

use crate::fields::Errors;

// === File struct ===

pub use crate::upstream::ProbeFile;

// === Validated config ===

/// What the probe asks the model server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    KserveV2,
    OpenAi,
    Ollama,
}

impl ProbeKind {
    pub fn parse(s: &str) -> Option<ProbeKind> {
        match s {
            "kserve_v2" => Some(ProbeKind::KserveV2),
            "openai" => Some(ProbeKind::OpenAi),
            "ollama" => Some(ProbeKind::Ollama),
            _ => None,
        }
    }

    /// The configuration word, also the metric label.
    pub const fn label(self) -> &'static str {
        match self {
            ProbeKind::KserveV2 => "kserve_v2",
            ProbeKind::OpenAi => "openai",
            ProbeKind::Ollama => "ollama",
        }
    }
}

/// The upstream probe.
#[derive(Debug, Clone)]
pub struct Probe {
    pub kind: ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
}

impl ProbeFile {
    /// Checks `[upstream.probe]`; every problem goes to `errors`.
    pub fn validate(&self, errors: &mut Errors) -> Probe {
        let interval = errors.duration("upstream.probe.interval", &self.interval);
        let timeout = errors.duration("upstream.probe.timeout", &self.timeout);
        let kind = ProbeKind::parse(&self.kind).unwrap_or_else(|| {
            errors.push(
                "upstream.probe.kind",
                format_args!(
                    "{:?} is not one of \"kserve_v2\", \"openai\", \"ollama\"",
                    self.kind
                ),
            );
            ProbeKind::OpenAi
        });
        if interval.is_zero() || timeout.is_zero() {
            errors.push(
                "upstream.probe",
                "interval and timeout must be more than zero",
            );
        }
        Probe {
            kind,
            interval,
            timeout,
        }
    }
}
