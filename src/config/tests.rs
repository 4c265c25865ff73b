use super::*;
use crate::identity::config::KeySource;
use crate::keys::{jwks_document, KeyKind, SigningKey};
use crate::registry::config::{RegistryAuth, RegistrySource, RemoteKind};
use crate::upstream::UpstreamProtocol;
use std::time::Duration;

fn write_keys(dir: &Path) -> (String, String) {
    let (a, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let (i, _) = SigningKey::generate(KeyKind::Es256).unwrap();
    let approvers = dir.join("approvers.jwks.json");
    let issuer = dir.join("issuer.jwks.json");
    std::fs::write(&approvers, jwks_document(&[a.public_jwk])).unwrap();
    std::fs::write(&issuer, jwks_document(&[i.public_jwk])).unwrap();
    (
        approvers.display().to_string(),
        issuer.display().to_string(),
    )
}

fn good(dir: &Path) -> String {
    let (approvers, issuer) = write_keys(dir);
    format!(
        r#"
[listen]
address = "127.0.0.1:8080"
[admin]
address = "127.0.0.1:9090"
[upstream]
address = "127.0.0.1:8000"
[mode]
enforce = true
[workload]
identity = "spiffe://example.org/ns/prod/sa/model-serving"
[artefact]
model = "m"
path = "/models/m"
[registry]
kind = "dir"
path = "{dir}"
[trust]
approver_keys = "{approvers}"
[[callers.issuers]]
issuer = "https://issuer.example.org"
jwks_file = "{issuer}"
audiences = ["provgate"]
[tiers.customer-facing]
required_evidence = ["security-test", "red-team"]
[audit]
path = "audit.jsonl"
log_allowed = false
"#,
        dir = dir.display()
    )
}

#[test]
fn the_documented_shape_validates_with_safe_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let c = FileConfig::parse(&good(dir.path()))
        .unwrap()
        .validate()
        .unwrap();
    assert!(c.enforce);
    assert_eq!(c.listen.address.to_string(), "127.0.0.1:8080");
    assert_eq!(c.upstream.protocol, UpstreamProtocol::Http1);
    assert!(!c.upstream.forward_token, "tokens are stripped by default");
    assert_eq!(c.callers.issuers.len(), 1);
    match &c.callers.issuers[0].keys {
        KeySource::File(keys) => assert_eq!(keys.keys.len(), 1),
        other => panic!("a jwks_file issuer loaded as {other:?}"),
    }
    assert_eq!(
        c.tiers["customer-facing"].required_evidence,
        vec!["security-test", "red-team"]
    );
    assert_eq!(c.models.len(), 1);
    assert_eq!(c.models[0].model, "m");
    assert_eq!(c.models[0].poll_interval, Duration::from_secs(1));
    assert!(c.probe.is_none(), "no probe unless configured");
    assert_eq!(c.routing.max_body_bytes, 64 * 1024);
    assert_eq!(c.routing.max_held_body_bytes, 8 << 20);
    assert_eq!(c.routing.max_held_total_bytes, 64 << 20);
    assert_eq!(c.routing.models_path.as_deref(), Some("/v1/models"));
    assert!(c
        .routing
        .openai_paths
        .contains(&"/v1/chat/completions".to_string()));
}

#[test]
fn the_shipped_example_config_validates() {
    // Run from the crate root, as `provgate run -c config/provgate.toml` is.
    let c = load(Path::new("config/provgate.toml")).unwrap();
    assert!(c.enforce);
    assert!(c.listen.address.ip().is_loopback() && c.admin.ip().is_loopback());
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let text = good(dir.path()).replace("enforce = true", "enforce = true\nenforcing = 1");
    let err = FileConfig::parse(&text).unwrap_err().to_string();
    assert!(err.contains("enforcing"), "{err}");
}

#[test]
fn every_error_is_reported_at_once_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = good(dir.path())
        .replace("127.0.0.1:8080", "localhost")
        .replace("127.0.0.1:8000", "nowhere:port")
        .replace("kind = \"dir\"", "kind = \"s3\"")
        .replace(
            "audiences = [\"provgate\"]",
            "audiences = []\nalgorithms = [\"HS256\", \"none\"]",
        )
        .replace(
            "path = \"/models/m\"",
            "path = \"/models/m\"\npoll_interval = \"soon\"",
        );
    let err = FileConfig::parse(&text).unwrap().validate().unwrap_err();
    let all = err.0.join("\n");
    for needle in [
        "listen.address",
        "upstream.address",
        "registry.kind",
        "callers.issuers[0].audiences",
        "callers.issuers[0].algorithms: \"HS256\"",
        "callers.issuers[0].algorithms: \"none\"",
        "artefact.poll_interval",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn missing_key_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = good(dir.path()).replace("approvers.jwks.json", "absent.json");
    let err = FileConfig::parse(&text).unwrap().validate().unwrap_err();
    assert!(
        err.0.iter().any(|e| e.starts_with("trust.approver_keys")),
        "{err}"
    );
}

#[test]
fn required_sections_are_named_when_missing() {
    let err = FileConfig::parse("[listen]\naddress = \"127.0.0.1:1\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing field"), "{err}");
}

#[test]
fn an_issuer_names_exactly_one_key_source() {
    let dir = tempfile::tempdir().unwrap();
    let base = good(dir.path());
    let both = base.replace(
        "audiences = [\"provgate\"]",
        "jwks_url = \"https://issuer.example.org/keys\"\naudiences = [\"provgate\"]",
    );
    let err = FileConfig::parse(&both).unwrap().validate().unwrap_err();
    assert!(err.0.iter().any(|e| e.contains("exactly one of")), "{err}");

    let issuer_jwks = format!(
        "jwks_file = \"{}\"",
        dir.path().join("issuer.jwks.json").display()
    );
    let remote = base.replace(
        &issuer_jwks,
        "discovery_url = \"https://issuer.example.org/.well-known/openid-configuration\"\nrefresh_min = \"5s\"\nmax_stale = \"2m\"",
    );
    let c = FileConfig::parse(&remote).unwrap().validate().unwrap();
    match &c.callers.issuers[0].keys {
        KeySource::Remote(r) => {
            assert!(r.discovery);
            assert_eq!(r.refresh_min, Duration::from_secs(5));
            assert_eq!(r.max_stale, Duration::from_secs(120));
            assert_eq!(r.refetch_interval, Duration::from_secs(10));
        }
        other => panic!("{other:?}"),
    }
    let bad = remote.replace("https://issuer.example.org/.well-known", "ftp://x");
    let err = FileConfig::parse(&bad).unwrap().validate().unwrap_err();
    assert!(err.0.iter().any(|e| e.contains("discovery_url")), "{err}");

    // Plaintext keys only when asked for, per issuer.
    let plain = remote.replace("https://issuer.example.org", "http://127.0.0.1:9");
    let err = FileConfig::parse(&plain).unwrap().validate().unwrap_err();
    assert!(
        err.0
            .iter()
            .any(|e| e.contains("discovery_url") && e.contains("plaintext HTTP")),
        "{err}"
    );
    let allowed = plain.replace(
        "max_stale = \"2m\"",
        "max_stale = \"2m\"\nallow_plaintext = true",
    );
    let c = FileConfig::parse(&allowed).unwrap().validate().unwrap();
    match &c.callers.issuers[0].keys {
        KeySource::Remote(r) => assert!(r.allow_plaintext),
        other => panic!("{other:?}"),
    }
}

#[test]
fn token_profiles_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let base = good(dir.path());
    let with = |lines: &str| {
        base.replace(
            "audiences = [\"provgate\"]",
            &format!("audiences = [\"provgate\"]\n{lines}"),
        )
    };
    let c = FileConfig::parse(&with(
        "profile = \"spiffe\"\ntrust_domain = \"example.org\"",
    ))
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(
        c.callers.issuers[0].profile,
        crate::identity::Profile::Spiffe {
            trust_domain: "example.org".into()
        }
    );
    for (lines, needle) in [
        ("profile = \"spiffe\"", "trust_domain"),
        (
            "profile = \"kubernetes\"\ntrust_domain = \"x\"",
            "only for profile",
        ),
        ("profile = \"saml\"", "profile"),
    ] {
        let err = FileConfig::parse(&with(lines))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.0.iter().any(|e| e.contains(needle)), "{lines}: {err}");
    }
}

#[test]
fn several_models_each_get_their_own_section() {
    let dir = tempfile::tempdir().unwrap();
    let one = good(dir.path());
    let start = one.find("[artefact]").unwrap();
    let end = one[start..]
        .find("\n[")
        .map_or(one.len(), |e| start + e + 1);
    let without = format!("{}{}", &one[..start], &one[end..]);
    let two = format!(
        "{without}\n[[artefacts]]\nmodel = \"a\"\npath = \"/models/a\"\n\n[[artefacts]]\nmodel = \"b\"\npath = \"/models/b\"\npoll_interval = \"2s\"\n\n[upstream.probe]\nkind = \"kserve_v2\"\ninterval = \"250ms\"\n"
    );
    let c = FileConfig::parse(&two).unwrap().validate().unwrap();
    let names: Vec<_> = c.models.iter().map(|m| m.model.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(c.models[1].poll_interval, Duration::from_secs(2));
    let probe = c.probe.unwrap();
    assert_eq!(probe.kind, crate::probe::ProbeKind::KserveV2);
    assert_eq!(probe.interval, Duration::from_millis(250));
    assert_eq!(probe.timeout, Duration::from_secs(2));

    let both = format!("{one}\n[[artefacts]]\nmodel = \"a\"\npath = \"/models/a\"\n");
    let err = FileConfig::parse(&both).unwrap().validate().unwrap_err();
    assert!(
        err.0
            .iter()
            .any(|e| e.starts_with("artefact: give exactly one")),
        "{err}"
    );
    let neither = FileConfig::parse(&without).unwrap().validate().unwrap_err();
    assert!(
        neither
            .0
            .iter()
            .any(|e| e.starts_with("artefact: give exactly one")),
        "{neither}"
    );

    let twice = two.replace("model = \"b\"", "model = \"a\"");
    let err = FileConfig::parse(&twice).unwrap().validate().unwrap_err();
    assert!(
        err.0.iter().any(|e| e.starts_with("artefacts[1].model")),
        "{err}"
    );

    let bad = two
        .replace("kind = \"kserve_v2\"", "kind = \"triton\"")
        .replace("poll_interval = \"2s\"", "poll_interval = \"0s\"")
        + "\n[routing]\nmax_body_bytes = 1000000\nmax_held_body_bytes = 1000000000\nmax_held_total_bytes = 1\n";
    let err = FileConfig::parse(&bad).unwrap().validate().unwrap_err();
    let all = err.0.join("\n");
    for needle in [
        "upstream.probe.kind",
        "artefacts[1].poll_interval",
        "routing.max_body_bytes",
        "routing.max_held_body_bytes",
        "routing.max_held_total_bytes",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn remote_registries_validate_their_own_keys() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret").unwrap();
    let dir_section = format!("kind = \"dir\"\npath = \"{}\"", dir.path().display());
    let with_registry = |body: &str| good(dir.path()).replace(&dir_section, body);

    let ok = format!(
        "kind = \"mlflow\"\nurl = \"http://127.0.0.1:5000/\"\nallow_plaintext = true\ntoken_file = \"{}\"\nrefresh_interval = \"2s\"",
        token.display()
    );
    let c = FileConfig::parse(&with_registry(&ok))
        .unwrap()
        .validate()
        .unwrap();
    match &c.registry.source {
        RegistrySource::Remote(r) => {
            assert_eq!(r.kind, RemoteKind::Mlflow);
            assert_eq!(r.url, "http://127.0.0.1:5000", "trailing slash dropped");
            assert_eq!(r.auth, RegistryAuth::BearerFile(token.clone()));
            assert_eq!(r.timeout, Duration::from_secs(5));
        }
        other => panic!("expected a remote registry, got {other:?}"),
    }
    assert_eq!(c.registry.refresh_interval, Duration::from_secs(2));
    // The pace's bounds by default: 1 s, and 4 x refresh_interval within max_stale / 2.
    assert_eq!(c.registry.min_refresh, Duration::from_secs(1));
    assert_eq!(c.registry.max_refresh, Duration::from_secs(8));

    let path = "kind = \"http\"\nurl = \"http://127.0.0.1:1\"\nallow_plaintext = true\nlayout = \"path\"\nwatch = \"30s\"";
    let c = FileConfig::parse(&with_registry(path))
        .unwrap()
        .validate()
        .unwrap();
    match &c.registry.source {
        RegistrySource::Remote(r) => {
            assert_eq!(r.layout, crate::registry::config::Layout::Path);
            assert_eq!(r.watch, Some(Duration::from_secs(30)));
        }
        other => panic!("expected a remote registry, got {other:?}"),
    }
    // The path layout watches by default (60 s); "0s" polls; the query layout never watches.
    for (extra, layout, watch) in [
        ("layout = \"path\"", "path", Some(Duration::from_secs(60))),
        ("layout = \"path\"\nwatch = \"0s\"", "path", None),
        ("", "query", None),
        ("layout = \"query\"\nwatch = \"0s\"", "query", None),
    ] {
        let body = format!(
            "kind = \"http\"\nurl = \"http://127.0.0.1:1\"\nallow_plaintext = true\n{extra}"
        );
        let c = FileConfig::parse(&with_registry(&body))
            .unwrap()
            .validate()
            .unwrap();
        match &c.registry.source {
            RegistrySource::Remote(r) => {
                assert_eq!(r.watch, watch, "{layout}: {extra}");
            }
            other => panic!("expected a remote registry, got {other:?}"),
        }
    }

    // The old name of refresh_interval still reads.
    let dir_alias = format!("{dir_section}\nrescan_interval = \"3s\"");
    let c = FileConfig::parse(&with_registry(&dir_alias))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(c.registry.refresh_interval, Duration::from_secs(3));

    for (body, needle) in [
        ("kind = \"http\"", "registry.url: required"),
        (
            "kind = \"http\"\nurl = \"http://registry.example.org\"",
            "registry.url: \"http://registry.example.org\" is plaintext HTTP",
        ),
        ("kind = \"http\"\nurl = \"ftp://x\"", "registry.url"),
        (
            "kind = \"http\"\nurl = \"http://x/?a=b\"\nallow_plaintext = true",
            "without a query",
        ),
        ("kind = \"http\"\nurl = \"not a url\"", "registry.url"),
        (
            "kind = \"http\"\nurl = \"http://x\"\npath = \"/tmp\"",
            "registry.path: not used",
        ),
        (
            "kind = \"http\"\nurl = \"http://x\"\ntoken_file = \"/nonexistent/t\"",
            "registry.token_file",
        ),
        (
            "kind = \"http\"\nurl = \"http://x\"\ntoken_file = \"/t\"\nbasic_auth_file = \"/b\"",
            "at most one of token_file, basic_auth_file",
        ),
        ("kind = \"dir\"", "registry.path: required"),
        (
            "kind = \"dir\"\npath = \"/tmp\"\nurl = \"http://x\"",
            "registry.url: not used",
        ),
        (
            "kind = \"http\"\nurl = \"http://x\"\ntimeout = \"0s\"",
            "registry.timeout",
        ),
        (
            "kind = \"http\"\nurl = \"http://x\"\nrefresh_interval = \"10s\"\nmax_stale = \"5s\"",
            "registry.max_stale",
        ),
        (
            "kind = \"http\"\nurl = \"http://x\"\nallow_plaintext = true\nlayout = \"flat\"",
            "registry.layout: \"flat\" is not one of",
        ),
        (
            "kind = \"mlflow\"\nurl = \"http://x\"\nallow_plaintext = true\nlayout = \"path\"",
            "registry.layout: \"path\" is for kind \"http\"",
        ),
        (
            "kind = \"http\"\nurl = \"http://x\"\nallow_plaintext = true\nwatch = \"30s\"",
            "registry.watch: needs layout = \"path\"",
        ),
        (
            "kind = \"dir\"\npath = \"/tmp\"\nwatch = \"30s\"",
            "registry.watch: not used",
        ),
        (
            "kind = \"http\"\nurl = \"http://x\"\nallow_plaintext = true\nmin_refresh = \"10s\"",
            "registry.min_refresh: must be at most registry.refresh_interval",
        ),
        (
            "kind = \"http\"\nurl = \"http://x\"\nallow_plaintext = true\nmax_refresh = \"10m\"",
            "registry.max_refresh: must be between",
        ),
    ] {
        let err = FileConfig::parse(&with_registry(body))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            err.0.iter().any(|e| e.contains(needle)),
            "{body:?}: missing {needle:?} in {err}"
        );
    }
}

#[test]
fn the_served_serialization_defaults_to_files_and_shards_take_a_size() {
    use crate::artefact::Serialization;
    let dir = tempfile::tempdir().unwrap();
    let with = |lines: &str| {
        FileConfig::parse(&good(dir.path()).replace(
            "path = \"/models/m\"\n",
            &format!("path = \"/models/m\"\n{lines}\n"),
        ))
        .unwrap()
        .validate()
    };
    assert_eq!(
        with("").unwrap().models[0].serialization,
        Serialization::Files
    );
    assert_eq!(
        with("serialization = \"shards\"").unwrap().models[0].serialization,
        Serialization::Shards {
            shard_size: 1_000_000_000
        }
    );
    assert_eq!(
        with("serialization = \"shards\"\nshard_size = 4096")
            .unwrap()
            .models[0]
            .serialization,
        Serialization::Shards { shard_size: 4096 }
    );
    for (lines, error) in [
        ("serialization = \"blocks\"", "artefact.serialization"),
        ("shard_size = 4096", "artefact.shard_size"),
        (
            "serialization = \"shards\"\nshard_size = 0",
            "artefact.shard_size",
        ),
    ] {
        let e = with(lines).unwrap_err().to_string();
        assert!(e.contains(error), "{lines}: {e}");
    }
}

#[test]
fn each_section_reports_its_errors_in_file_order_with_the_messages_users_know() {
    // The messages are the interface `provgate run -t` shows; this pins them word for word
    // (sections report in file order, each section's problems together).
    let dir = tempfile::tempdir().unwrap();
    let text = good(dir.path())
        .replace(
            "address = \"127.0.0.1:8080\"",
            "address = \"localhost\"\ncaller_auth = \"magic\"",
        )
        .replace(
            "address = \"127.0.0.1:8000\"",
            "address = \"127.0.0.1:8000\"\nprotocol = \"h3\"",
        )
        .replace(
            "path = \"/models/m\"",
            "path = \" \"\npoll_interval = \"0s\"\nshard_size = 4",
        )
        .replace("kind = \"dir\"", "kind = \"s3\"\nrefresh_interval = \"0s\"")
        .replace(
            "audiences = [\"provgate\"]",
            "audiences = []\nprofile = \"spiffe\"",
        )
        + "[log]\nformat = \"xml\"\n[upstream.probe]\nkind = \"triton\"\ninterval = \"0s\"\n";
    let err = FileConfig::parse(&text).unwrap().validate().unwrap_err();
    assert_eq!(
        err.0,
        vec![
            "listen.address: \"localhost\" is not an IP:port socket address",
            "listen.caller_auth: \"magic\" is not one of \"token\", \"certificate\", \"token_or_certificate\", \"token_and_certificate\"",
            "upstream.protocol: \"h3\" is not one of \"http1\", \"h2c\", \"https\"",
            "upstream.probe.kind: \"triton\" is not one of \"kserve_v2\", \"openai\", \"ollama\"",
            "upstream.probe: interval and timeout must be more than zero",
            "artefact.poll_interval: must be more than zero",
            "artefact.path: must not be empty",
            "artefact.shard_size: only used with serialization = \"shards\"",
            "registry.refresh_interval: must be more than zero",
            "registry.kind: \"s3\" is not one of \"dir\", \"mlflow\", \"http\"",
            "callers.issuers[0].audiences: at least one audience is needed",
            "callers.issuers[0].trust_domain: profile \"spiffe\" needs a trust domain such as \"example.org\"",
            "log.format: \"xml\" is not \"text\" or \"json\"",
        ]
    );
}

/// A second `[[callers.issuers]]` block (same key file as the first).
fn second_issuer(dir: &Path, extra: &str) -> String {
    let text = good(dir);
    let issuer_file = dir.join("issuer.jwks.json");
    text.replace(
        "[tiers.customer-facing]",
        &format!(
            "[[callers.issuers]]\nissuer = \"https://b.example.org\"\njwks_file = \"{}\"\naudiences = [\"provgate\"]\n{extra}\n[tiers.customer-facing]",
            issuer_file.display()
        ),
    )
}

fn qualification_errors(text: &str) -> Vec<String> {
    match FileConfig::parse(text).unwrap().validate() {
        Ok(_) => vec![],
        Err(e) => {
            e.0.into_iter()
                .filter(|l| l.contains(".qualified"))
                .collect()
        }
    }
}

#[test]
fn issuers_that_could_assert_the_same_callers_must_be_qualified() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Two OIDC issuers: either could mint the other's caller names.
    let both = qualification_errors(&second_issuer(d, ""));
    assert_eq!(both.len(), 1, "{both:?}");
    assert!(
        both[0].starts_with("callers.issuers[1].qualified"),
        "{both:?}"
    );
    // Qualifying either one is enough.
    assert!(qualification_errors(&second_issuer(d, "qualified = true")).is_empty());
    let first_qualified = second_issuer(d, "").replacen(
        "audiences = [\"provgate\"]",
        "audiences = [\"provgate\"]\nqualified = true",
        1,
    );
    assert!(qualification_errors(&first_qualified).is_empty());
    // Two Kubernetes clusters share namespace and account names.
    let k8s = second_issuer(d, "profile = \"kubernetes\"").replacen(
        "audiences = [\"provgate\"]",
        "audiences = [\"provgate\"]\nprofile = \"kubernetes\"",
        1,
    );
    assert_eq!(qualification_errors(&k8s).len(), 1);
    // SPIFFE issuers of distinct trust domains, and SPIFFE beside Kubernetes, are disjoint.
    let spiffe = |td: &str| format!("profile = \"spiffe\"\ntrust_domain = \"{td}\"");
    let two_domains = second_issuer(d, &spiffe("b.org")).replacen(
        "audiences = [\"provgate\"]",
        &format!("audiences = [\"provgate\"]\n{}", spiffe("a.org")),
        1,
    );
    assert!(qualification_errors(&two_domains).is_empty());
    let same_domain = second_issuer(d, &spiffe("a.org")).replacen(
        "audiences = [\"provgate\"]",
        &format!("audiences = [\"provgate\"]\n{}", spiffe("A.org")),
        1,
    );
    assert_eq!(qualification_errors(&same_domain).len(), 1);
    let mixed = second_issuer(d, &spiffe("b.org")).replacen(
        "audiences = [\"provgate\"]",
        "audiences = [\"provgate\"]\nprofile = \"kubernetes\"",
        1,
    );
    assert!(qualification_errors(&mixed).is_empty());
}

fn config_errors(text: &str) -> Vec<String> {
    match FileConfig::parse(text).unwrap().validate() {
        Ok(_) => vec![],
        Err(e) => e.0,
    }
}

/// The `kid` of the approver key `good()` wrote.
fn approver_kid(dir: &Path) -> String {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("approvers.jwks.json")).unwrap())
            .unwrap();
    doc["keys"][0]["kid"].as_str().unwrap().to_string()
}

#[test]
fn tiers_and_approvers_must_be_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = good(d);
    let kid = approver_kid(d);
    // The deployment's tier must be configured; `default` always is.
    let with_tier = |t: &str| {
        text.replace(
            "identity = \"spiffe://example.org/ns/prod/sa/model-serving\"",
            &format!(
                "identity = \"spiffe://example.org/ns/prod/sa/model-serving\"\ntier = \"{t}\""
            ),
        )
    };
    let c = FileConfig::parse(&with_tier("customer-facing"))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(c.tier, "customer-facing");
    assert_eq!(c.tier_rule.required_evidence.len(), 2);
    let c = FileConfig::parse(&text).unwrap().validate().unwrap();
    assert_eq!(c.tier, "default");
    assert!(c.tiers.contains_key("default"));
    // Without [[trust.approvers]], each key approves everything, with no role.
    assert_eq!(c.approver_scopes[&kid].models, ["*"]);
    let errs = config_errors(&with_tier("Customer-Facing"));
    assert!(
        errs.iter().any(|e| e.starts_with("workload.tier")),
        "{errs:?}"
    );
    // Names differing only in case are ambiguous.
    let errs = config_errors(&format!("{text}\n[tiers.Customer-Facing]\n"));
    assert!(errs.iter().any(|e| e.contains("only in case")), "{errs:?}");
    // A quorum nobody can meet.
    let quorum = text.replace(
        "required_evidence = [\"security-test\", \"red-team\"]",
        "required_evidence = [\"security-test\", \"red-team\"]\nquorum = [\"owner\", \"security\"]",
    );
    let errs = config_errors(&quorum);
    assert_eq!(
        errs.iter()
            .filter(|e| e.starts_with("tiers.customer-facing.quorum"))
            .count(),
        2,
        "{errs:?}"
    );
    // Approvers holding the roles make it valid; an unknown kid or a kid of two approvers is not.
    let approvers = |owner_keys: &str, sec_keys: &str| {
        format!(
            "{quorum}\n[[trust.approvers]]\nname = \"owners\"\nkeys = [{owner_keys}]\nroles = [\"owner\"]\n\
             [[trust.approvers]]\nname = \"security\"\nkeys = [{sec_keys}]\nroles = [\"security\"]\ntiers = [\"customer-*\"]\n"
        )
    };
    let ok = approvers(&format!("\"{kid}\""), "\"other-kid\"");
    let errs = config_errors(&ok);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("trust.approvers[1].keys") && e.contains("other-kid")),
        "{errs:?}"
    );
    // An approver of both roles makes the quorum satisfiable on paper (the decision still
    // wants two distinct approvers); tiers.NAME.max_lifetime and workloads are checked too.
    let both = quorum.clone()
        + &format!(
            "\n[[trust.approvers]]\nname = \"owners\"\nkeys = [\"{kid}\"]\nroles = [\"owner\", \"security\"]\n"
        );
    assert_eq!(config_errors(&both), Vec::<String>::new());
    let bad_tier = format!(
        "{text}\n[tiers.sandbox]\nmax_lifetime = \"0s\"\nworkloads = [\"spiffe://example.org/ns/sandbox/*\"]\n"
    );
    let errs = config_errors(&bad_tier);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("tiers.sandbox.max_lifetime")),
        "{errs:?}"
    );
    let errs = config_errors(&bad_tier.replace(
        "identity = \"spiffe://example.org/ns/prod/sa/model-serving\"",
        "identity = \"spiffe://example.org/ns/prod/sa/model-serving\"\ntier = \"sandbox\"",
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("workload.tier") && e.contains("may not run")),
        "{errs:?}"
    );
    let errs = config_errors(&approvers(&format!("\"{kid}\""), &format!("\"{kid}\"")));
    assert!(
        errs.iter().any(|e| e.contains("belongs to two approvers")),
        "{errs:?}"
    );
}

#[test]
fn api_profiles_and_adapters_validate() {
    use crate::proxy::routing::profiles::Api;
    let dir = tempfile::tempdir().unwrap();
    let one = good(dir.path());
    let c = FileConfig::parse(&one).unwrap().validate().unwrap();
    assert_eq!(
        c.upstream.api,
        [Api::Openai, Api::KserveV2],
        "a config from before profiles keeps the APIs it was read with"
    );
    let with_api = one.replace(
        "address = \"127.0.0.1:8000\"",
        "address = \"127.0.0.1:8000\"\napi = [\"vllm\", \"kserve_v2\"]",
    );
    let c = FileConfig::parse(&with_api).unwrap().validate().unwrap();
    assert_eq!(c.upstream.api, [Api::Vllm, Api::KserveV2]);
    assert!(c
        .routing
        .doors
        .iter()
        .any(|d| d.path == "/v1/load_lora_adapter"));

    let bad_api = one.replace(
        "address = \"127.0.0.1:8000\"",
        "address = \"127.0.0.1:8000\"\napi = [\"vllm\", \"sagemaker\"]",
    );
    let err = FileConfig::parse(&bad_api).unwrap().validate().unwrap_err();
    assert!(
        err.0
            .iter()
            .any(|e| e.starts_with("upstream.api: \"sagemaker\"")),
        "{err}"
    );
    let empty_api = one.replace(
        "address = \"127.0.0.1:8000\"",
        "address = \"127.0.0.1:8000\"\napi = []",
    );
    let err = FileConfig::parse(&empty_api)
        .unwrap()
        .validate()
        .unwrap_err();
    assert!(
        err.0.iter().any(|e| e.starts_with("upstream.api:")),
        "{err}"
    );

    let start = one.find("[artefact]").unwrap();
    let end = one[start..]
        .find("\n[")
        .map_or(one.len(), |e| start + e + 1);
    let without = format!("{}{}", &one[..start], &one[end..]);
    let adapters = format!(
        "{without}\n[[artefacts]]\nmodel = \"base\"\npath = \"/models/base\"\n\n[[artefacts]]\nmodel = \"lora\"\npath = \"/models/lora\"\nkind = \"adapter\"\nbase = \"base\"\n"
    );
    let c = FileConfig::parse(&adapters).unwrap().validate().unwrap();
    assert_eq!(c.models[0].base, None);
    assert_eq!(c.models[1].base.as_deref(), Some("base"));
    for (bad, key) in [
        ("kind = \"adapter\"\nbase = \"nope\"", "artefacts[1].base"),
        ("kind = \"adapter\"", "artefacts[1].base"),
        ("base = \"base\"", "artefacts[1].base"),
        ("kind = \"lora\"", "artefacts[1].kind"),
        ("kind = \"adapter\"\nbase = \"lora\"", "artefacts[1].base"),
    ] {
        let text = format!(
            "{without}\n[[artefacts]]\nmodel = \"base\"\npath = \"/models/base\"\n\n[[artefacts]]\nmodel = \"lora\"\npath = \"/models/lora\"\n{bad}\n"
        );
        let err = FileConfig::parse(&text).unwrap().validate().unwrap_err();
        assert!(err.0.iter().any(|e| e.starts_with(key)), "{bad}: {err}");
    }
}

/// Writes a self-signed CA certificate (PEM) into `dir`; returns its path.
fn ca_pem(dir: &Path) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let path = dir.join("ca.pem");
    std::fs::write(&path, p.self_signed(&key).unwrap().pem()).unwrap();
    path.display().to_string()
}

#[test]
fn signers_and_approvers_take_one_identity_form_each() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = good(d);
    let ca = ca_pem(d);
    let signer = |body: &str| format!("{text}\n[[artefact.signers]]\nname = \"ci\"\n{body}\n");

    let c = FileConfig::parse(&signer(&format!(
        "ca_bundle = \"{ca}\"\nidentity = \"spiffe://example.org/ci\""
    )))
    .unwrap()
    .validate()
    .unwrap();
    assert!(matches!(
        c.models[0].signers[0].trust,
        crate::oms::SignerTrust::Certificate(_)
    ));

    let pub_key = d.join("signer.pub");
    std::fs::write(&pub_key, "not a key").unwrap();
    for (body, field) in [
        // Two forms at once, or half of one.
        (
            format!(
                "public_key = \"{}\"\nca_bundle = \"{ca}\"",
                pub_key.display()
            ),
            "artefact.signers[0].public_key",
        ),
        (
            format!("ca_bundle = \"{ca}\""),
            "artefact.signers[0].public_key",
        ),
        (
            "identity = \"spiffe://example.org/ci\"".to_string(),
            "artefact.signers[0].public_key",
        ),
        (
            format!("ca_bundle = \"{ca}\"\nidentity = \"ci\""),
            "artefact.signers[0].identity",
        ),
        (
            format!(
                "ca_bundle = \"{}\"\nidentity = \"email:ci@example.org\"",
                pub_key.display()
            ),
            "artefact.signers[0].ca_bundle",
        ),
    ] {
        let errs = config_errors(&signer(&body));
        assert!(
            errs.iter().any(|e| e.starts_with(field)),
            "{body}: {errs:?}"
        );
    }

    // A certificate-bound approver is bound as x509:IDENTITY, with its roles.
    let approver = |body: &str| {
        format!("{text}\n[[trust.approvers]]\nname = \"release\"\nroles = [\"owner\"]\n{body}\n")
    };
    let c = FileConfig::parse(&approver(&format!(
        "ca_bundle = \"{ca}\"\nidentity = \"spiffe://example.org/release\""
    )))
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(
        c.approver_scopes["x509:spiffe://example.org/release"].roles,
        ["owner"]
    );
    assert_eq!(c.approvers.certificates.len(), 1);
    for (body, field) in [
        (
            format!("ca_bundle = \"{ca}\""),
            "trust.approvers[0].ca_bundle",
        ),
        ("".to_string(), "trust.approvers[0].keys"),
        (
            format!("ca_bundle = \"{ca}\"\nidentity = \"release\""),
            "trust.approvers[0].identity",
        ),
        (
            "ca_bundle = \"/nonexistent/ca.pem\"\nidentity = \"dns:release.example.org\"".into(),
            "trust.approvers[0].ca_bundle",
        ),
    ] {
        let errs = config_errors(&approver(&body));
        assert!(
            errs.iter().any(|e| e.starts_with(field)),
            "{body}: {errs:?}"
        );
    }
}

#[test]
fn a_sigstore_signer_names_a_trusted_root_an_issuer_and_one_subject_form() {
    let dir = tempfile::tempdir().unwrap();
    let root = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/sigstore/trusted_root.json"
    );
    let with = |lines: &str| {
        let text = good(dir.path()).replace(
            "path = \"/models/m\"\n",
            &format!("path = \"/models/m\"\n[[artefact.signers]]\nname = \"ci\"\n{lines}\n"),
        );
        FileConfig::parse(&text).unwrap().validate()
    };
    let issuer = "issuer = \"https://token.actions.githubusercontent.com\"";
    for subject in [
        "subject = \"https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main\"",
        "subject_pattern = 'https://github\\.com/org/repo/\\.github/workflows/release\\.yml@refs/tags/v.*'",
    ] {
        let c = with(&format!("sigstore_trusted_root = \"{root}\"\n{issuer}\n{subject}"))
            .unwrap_or_else(|e| panic!("{subject}: {e}"));
        let signer = &c.models[0].signers[0];
        assert_eq!(signer.name, "ci");
        assert!(matches!(
            signer.trust,
            crate::oms::SignerTrust::Sigstore { .. }
        ));
    }
    for (lines, field) in [
        (format!("sigstore_trusted_root = \"{root}\"\nsubject = \"x\""), "signers[0].issuer"),
        (format!("sigstore_trusted_root = \"{root}\"\n{issuer}"), "signers[0].subject"),
        (
            format!("sigstore_trusted_root = \"{root}\"\n{issuer}\nsubject = \"x\"\nsubject_pattern = \"x\""),
            "signers[0].subject",
        ),
        (
            format!("sigstore_trusted_root = \"{root}\"\n{issuer}\nsubject_pattern = \"(\""),
            "signers[0].subject_pattern",
        ),
        (
            format!("sigstore_trusted_root = \"{root}\"\n{issuer}\nsubject = \"x\"\npublic_key = \"k.pem\""),
            "signers[0].sigstore_trusted_root",
        ),
        (
            format!("sigstore_trusted_root = \"/nonexistent/root.json\"\n{issuer}\nsubject = \"x\""),
            "signers[0].sigstore_trusted_root",
        ),
        (format!("{issuer}\nsubject = \"x\""), "signers[0].sigstore_trusted_root"),
    ] {
        let e = with(&lines).unwrap_err().to_string();
        assert!(e.contains(field), "{lines}: {e}");
    }
}

#[test]
fn exceptions_are_off_unless_a_tier_allows_them() {
    let dir = tempfile::tempdir().unwrap();
    let text = good(dir.path());
    let c = FileConfig::parse(&text).unwrap().validate().unwrap();
    assert!(!c.tiers["customer-facing"].exceptions);
    assert!(!c.tiers["default"].exceptions);
    // Allowed: the lifetime defaults to seven days.
    let allowed = text.replace(
        "required_evidence = [\"security-test\", \"red-team\"]",
        "required_evidence = [\"security-test\", \"red-team\"]\nexceptions = true",
    );
    let c = FileConfig::parse(&allowed).unwrap().validate().unwrap();
    let rule = &c.tiers["customer-facing"];
    assert!(rule.exceptions);
    assert_eq!(rule.max_exception_lifetime, 7 * 86_400);
    let c = FileConfig::parse(&allowed.replace(
        "exceptions = true",
        "exceptions = true\nmax_exception_lifetime = \"36h\"",
    ))
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(c.tiers["customer-facing"].max_exception_lifetime, 36 * 3600);
    // A lifetime or roles without exceptions is inconsistent; so is a zero lifetime, and
    // exception roles no approver holds.
    for (bad, field) in [
        (
            "max_exception_lifetime = \"1d\"",
            "tiers.customer-facing.exceptions",
        ),
        (
            "exception_roles = [\"security\"]",
            "tiers.customer-facing.exceptions",
        ),
        (
            "exceptions = true\nmax_exception_lifetime = \"0s\"",
            "tiers.customer-facing.max_exception_lifetime",
        ),
        (
            "exceptions = true\nexception_roles = [\"security\"]",
            "tiers.customer-facing.exception_roles",
        ),
    ] {
        let errs = config_errors(&text.replace(
            "required_evidence = [\"security-test\", \"red-team\"]",
            &format!("required_evidence = [\"security-test\", \"red-team\"]\n{bad}"),
        ));
        assert!(errs.iter().any(|e| e.starts_with(field)), "{bad}: {errs:?}");
    }
}
