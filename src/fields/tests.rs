use super::*;

#[test]
fn each_error_carries_its_key_path_and_all_are_kept() {
    let mut e = Errors::new();
    assert_eq!(
        e.socket_addr("listen.address", "localhost"),
        SocketAddr::from(([127, 0, 0, 1], 0))
    );
    assert_eq!(
        e.duration("registry.timeout", "soon"),
        Duration::from_secs(1)
    );
    assert_eq!(
        e.duration("registry.timeout", "250ms"),
        Duration::from_millis(250)
    );
    e.nonempty("artefact.model", " ");
    e.more_than_zero("upstream.probe.interval", Duration::ZERO);
    let m = e.into_messages();
    assert_eq!(m.len(), 4, "{m:?}");
    assert_eq!(
        m[0],
        "listen.address: \"localhost\" is not an IP:port socket address"
    );
    assert!(
        m[1].starts_with("registry.timeout: \"soon\" is not a duration (")
            && m[1].ends_with("); write e.g. \"5s\" or \"250ms\""),
        "{}",
        m[1]
    );
    assert_eq!(m[2], "artefact.model: must not be empty");
    assert_eq!(m[3], "upstream.probe.interval: must be more than zero");
}

#[test]
fn a_choice_names_every_word_it_accepts() {
    let mut e = Errors::new();
    let options = [("http1", 1), ("h2c", 2), ("https", 3)];
    assert_eq!(e.choice("upstream.protocol", "h2c", &options), Some(2));
    assert!(e.is_empty());
    assert_eq!(e.choice("upstream.protocol", "h3", &options), None);
    assert_eq!(
        e.into_messages(),
        vec!["upstream.protocol: \"h3\" is not one of \"http1\", \"h2c\", \"https\""]
    );
}

#[test]
fn missing_files_are_reported_with_their_path() {
    let mut e = Errors::new();
    assert!(e
        .read_file("registry.ca_file", "/nonexistent/ca.pem")
        .is_none());
    e.existing_path("listen.tls_cert", "/nonexistent/cert.pem");
    let dir = tempfile::tempdir().unwrap();
    e.readable_file("registry.token_file", &dir.path().display().to_string());
    let m = e.into_messages();
    assert_eq!(m.len(), 3, "a directory is not a readable file: {m:?}");
    assert!(
        m[0].starts_with("registry.ca_file: /nonexistent/ca.pem: "),
        "{}",
        m[0]
    );
    assert!(
        m[1].starts_with("listen.tls_cert: /nonexistent/cert.pem: "),
        "{}",
        m[1]
    );
}

#[test]
fn byte_sizes_parse_with_binary_units() {
    assert_eq!(parse_bytes("1048576"), Some(1 << 20));
    assert_eq!(parse_bytes("64KiB"), Some(64 << 10));
    assert_eq!(parse_bytes("256MiB"), Some(256 << 20));
    assert_eq!(parse_bytes("2G"), Some(2 << 30));
    assert_eq!(parse_bytes("5 MB"), None);
    assert_eq!(parse_bytes("MiB"), None);
    let mut e = Errors::new();
    assert_eq!(e.bytes("k", "lots"), 1 << 20);
    assert_eq!(e.into_messages().len(), 1);
}
