use std::time::Duration;

use super::*;
use crate::registry::config::{Layout, RegistryAuth};

fn registry(source: RegistrySource) -> RegistryConfig {
    RegistryConfig {
        source,
        refresh_interval: Duration::from_secs(5),
        max_stale: Duration::from_secs(300),
        min_refresh: Duration::from_secs(1),
        max_refresh: Duration::from_secs(20),
    }
}

fn remote(kind: RemoteKind) -> RemoteRegistry {
    RemoteRegistry {
        kind,
        url: "http://127.0.0.1:1".into(),
        auth: RegistryAuth::None,
        ca_pem: None,
        timeout: Duration::from_secs(1),
        allow_plaintext: true,
        layout: Layout::Path,
        watch: None,
    }
}

fn signed() -> Signed {
    Signed {
        record: "h.p.s".into(),
        digest: format!("sha256:{}", "ab".repeat(32)).parse().unwrap(),
        jti: "r1".into(),
        model: "m".into(),
        version_id: "v1".into(),
        iss: "alice@example.org".into(),
        kid: "k1".into(),
    }
}

#[test]
fn the_destination_is_the_configurations_registry() {
    let dir = registry(RegistrySource::Dir("/srv/registry".into()));
    let d = Destination::of(&dir, None, "staging").unwrap();
    assert_eq!(d.label(), "dir");
    assert_eq!(
        d.default_audit_log(),
        Some(PathBuf::from("/srv/registry.promotions.jsonl"))
    );
    let mlflow = registry(RegistrySource::Remote(remote(RemoteKind::Mlflow)));
    assert!(matches!(
        Destination::of(&mlflow, None, "staging"),
        Err(PromoteError::NoMlflowVersion)
    ));
    let d = Destination::of(&mlflow, Some("3"), "staging").unwrap();
    assert!(matches!(&d, Destination::Mlflow { version, alias, .. }
        if version == "3" && alias == "staging"));
    assert_eq!(d.default_audit_log(), None);
    let http = registry(RegistrySource::Remote(remote(RemoteKind::Http)));
    assert_eq!(Destination::of(&http, None, "x").unwrap().label(), "http");
}

#[test]
fn a_directory_promotion_writes_the_record_file_by_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Destination::Dir(dir.path().to_path_buf());
    let to = publish(&dest, &signed()).unwrap();
    assert_eq!(PathBuf::from(&to), dir.path().join("r1.jws"));
    assert_eq!(std::fs::read_to_string(&to).unwrap(), "h.p.s\n");
    // A co-signed form of the same record replaces it.
    let mut cosigned = signed();
    cosigned.record = "{\"payload\":\"p\",\"signatures\":[]}".into();
    publish(&dest, &cosigned).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    assert!(std::fs::read_to_string(&to).unwrap().starts_with('{'));
}

#[test]
fn the_audit_record_names_who_what_where_and_the_outcome() {
    let dest = Destination::Dir("/srv/registry".into());
    let refused = Outcome::Refused(vec!["quorum (record r1): no security".into()]);
    let Marker::Promotion(p) = refused.audit(&signed(), "production", &dest) else {
        panic!("not a promotion record");
    };
    assert_eq!(
        (
            p.env.as_str(),
            p.outcome.as_str(),
            p.iss.as_str(),
            p.kid.as_str()
        ),
        ("production", "refused", "alice@example.org", "k1")
    );
    assert_eq!(
        (
            p.model.as_str(),
            p.version_id.as_str(),
            p.record_id.as_str()
        ),
        ("m", "v1", "r1")
    );
    assert_eq!(p.digest, signed().digest.to_string());
    assert_eq!(p.failed, ["quorum (record r1): no security"]);
    assert_eq!(p.published_to, None);
    let Marker::Promotion(p) =
        Outcome::Published("/srv/registry/r1.jws".into()).audit(&signed(), "production", &dest)
    else {
        panic!("not a promotion record");
    };
    assert_eq!(p.outcome, "published");
    assert_eq!(p.published_to.as_deref(), Some("/srv/registry/r1.jws"));
    assert!(p.failed.is_empty());
}

// === the gate's reading of a check report ===

fn step(rule: crate::policy::trace::Rule, record: Option<&str>, outcome: &'static str) -> Step {
    Step {
        rule,
        record: record.map(str::to_string),
        index: record.map(|_| 0),
        about: String::new(),
        outcome,
        reason: (outcome == "fail").then_some("approval_invalid"),
        why: if outcome == "fail" {
            "record is valid longer than its tier allows".into()
        } else {
            String::new()
        },
    }
}

fn record_report(id: &str, usable: bool, steps: Vec<Step>) -> check::RecordReport {
    check::RecordReport {
        id: id.into(),
        version: "v1".into(),
        tier: "default".into(),
        iat: 0,
        exp: 0,
        signers: vec!["k1".into()],
        callers: vec![],
        usable,
        steps,
    }
}

fn report(records: Vec<check::RecordReport>, callers: Vec<check::CallerReport>) -> Report {
    Report {
        config: "production.toml".into(),
        environment: "production".into(),
        model: "m".into(),
        digest: signed().digest.to_string(),
        signer: None,
        workload: "w".into(),
        tier: "default".into(),
        now: 0,
        serve: true,
        steps: vec![step(crate::policy::trace::Rule::Artefact, None, "pass")],
        records,
        invalid: vec![],
        exceptions: vec![],
        callers,
        base: None,
    }
}

#[test]
fn another_usable_record_does_not_carry_a_failing_promotion() {
    use crate::policy::trace::Rule;
    let ours = record_report(
        "r1",
        false,
        vec![
            step(Rule::Expiry, Some("r1"), "pass"),
            step(Rule::Lifetime, Some("r1"), "fail"),
        ],
    );
    let other = record_report("old", true, vec![step(Rule::Lifetime, Some("old"), "pass")]);
    let allowed_by_other = check::CallerReport {
        iss: "https://issuer".into(),
        sub: "client".into(),
        decision: "allow",
        reason: None,
        detail: None,
        record: Some("old".into()),
        exceptions: vec![],
    };
    // The check says the deployment serves the digest (through `old`): the promotion of
    // `r1` still fails, on its lifetime and on the caller `r1` does not allow.
    let r = report(vec![ours, other], vec![allowed_by_other]);
    assert!(r.serve);
    assert_eq!(
        failures(&r, "r1"),
        [
            "lifetime (record r1): approval_invalid: record is valid longer than its tier allows",
            "callers (caller https://issuer#client): allowed by record old, not r1",
        ]
    );
    assert!(failures(&r, "old").is_empty());
    assert_eq!(
        failures(&r, "r9")[0],
        "records: record r9 is not among the digest's records"
    );
}

#[test]
fn an_adapter_is_not_promoted_over_a_base_that_would_not_be_served() {
    use crate::policy::trace::Rule;
    let ours = record_report("r1", true, vec![step(Rule::Lifetime, Some("r1"), "pass")]);
    let mut r = report(vec![ours], vec![]);
    assert!(failures(&r, "r1").is_empty());
    let mut base = report(vec![], vec![]);
    base.model = "base-model".into();
    base.serve = false;
    r.base = Some(Box::new(base));
    assert_eq!(
        failures(&r, "r1"),
        [format!(
            "base: the adapter's base model base-model ({}) would not be served",
            signed().digest
        )]
    );
}
