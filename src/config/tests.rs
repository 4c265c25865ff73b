use super::*;
use crate::keys::{jwks_document, KeyKind, SigningKey};

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
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.upstream.protocol, UpstreamProtocol::Http1);
    assert!(!c.upstream.forward_token, "tokens are stripped by default");
    assert_eq!(c.issuers.len(), 1);
    match &c.issuers[0].keys {
        KeySource::File(keys) => assert_eq!(keys.keys.len(), 1),
        other => panic!("a jwks_file issuer loaded as {other:?}"),
    }
    assert_eq!(
        c.tiers["customer-facing"].required_evidence,
        vec!["security-test", "red-team"]
    );
    assert_eq!(c.poll_interval, Duration::from_secs(1));
}

#[test]
fn the_shipped_example_config_validates() {
    // Run from the crate root, as `provgate run -c config/provgate.toml` is.
    let c = load(Path::new("config/provgate.toml")).unwrap();
    assert!(c.enforce);
    assert!(c.listen.ip().is_loopback() && c.admin.ip().is_loopback());
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
    match &c.issuers[0].keys {
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
        c.issuers[0].profile,
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
    assert_eq!(with("").unwrap().serialization, Serialization::Files);
    assert_eq!(
        with("serialization = \"shards\"").unwrap().serialization,
        Serialization::Shards {
            shard_size: 1_000_000_000
        }
    );
    assert_eq!(
        with("serialization = \"shards\"\nshard_size = 4096")
            .unwrap()
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
