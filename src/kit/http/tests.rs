use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves one canned HTTP answer on 127.0.0.1, for each connection.
async fn serve(answer: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });
    format!("http://{addr}/x")
}

fn options() -> ClientOptions<'static> {
    ClientOptions {
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
        ca_pem: None,
        user_agent: true,
        transport: Transport {
            allow_plaintext: true,
            same_origin_redirects: false,
        },
    }
}

#[tokio::test]
async fn a_body_within_the_bound_is_read_and_one_past_it_refused() {
    let url = serve("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello").await;
    let c = client(&options()).unwrap();
    let resp = send(c.get(&url), &url).await.unwrap();
    assert_eq!(&body(resp, 5, "answer").await.unwrap()[..], b"hello");
    let resp = send(c.get(&url), &url).await.unwrap();
    let e = body(resp, 4, "answer").await.unwrap_err();
    assert!(matches!(e, FetchError::TooLarge { limit: 4, .. }), "{e:?}");
    assert_eq!(e.to_string(), format!("{url}: answer larger than 4 bytes"));
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error_naming_the_url() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/x", listener.local_addr().unwrap());
    drop(listener);
    let e = send(client(&options()).unwrap().get(&url), &url)
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Transport { .. }), "{e:?}");
    assert!(e.to_string().starts_with(&url));
}

#[test]
fn a_bad_ca_bundle_is_a_ca_error() {
    let o = ClientOptions {
        ca_pem: Some(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"),
        ..options()
    };
    assert!(matches!(client(&o), Err(FetchError::Ca(_))));
}

/// Serves a chunked answer that never ends, for each connection.
async fn serve_endless() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
                while conn.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    format!("http://{addr}/x")
}

#[tokio::test]
async fn an_endless_chunked_body_is_cut_off_at_the_cap() {
    let url = serve_endless().await;
    let c = client(&options()).unwrap();
    let resp = send(c.get(&url), &url).await.unwrap();
    let e = body(resp, 1 << 20, "answer").await.unwrap_err();
    assert!(
        matches!(e, FetchError::TooLarge { limit, .. } if limit == 1 << 20),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_content_length_over_the_cap_is_refused_before_reading() {
    // The body promised is never sent: reading it would hang until the timeout.
    let url = serve("HTTP/1.1 200 OK\r\ncontent-length: 999999999\r\n\r\nabc").await;
    let c = client(&options()).unwrap();
    let resp = send(c.get(&url), &url).await.unwrap();
    let started = std::time::Instant::now();
    let e = body(resp, 1 << 20, "answer").await.unwrap_err();
    assert!(matches!(e, FetchError::TooLarge { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn plaintext_is_refused_unless_allowed() {
    let url = serve("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
    assert!(matches!(
        Transport::HTTPS.check(&url),
        Err(FetchError::Plaintext { .. })
    ));
    assert!(Transport::HTTPS.check("https://example.org/keys").is_ok());
    let https_only = client(&ClientOptions {
        transport: Transport::HTTPS,
        ..options()
    })
    .unwrap();
    assert!(send(https_only.get(&url), &url).await.is_err());
    let plaintext = client(&options()).unwrap();
    assert!(send(plaintext.get(&url), &url).await.is_ok());
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_refused_for_key_material() {
    let target = serve("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
    let answer: &'static str = Box::leak(
        format!("HTTP/1.1 302 Found\r\nlocation: {target}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .into_boxed_str(),
    );
    let url = serve(answer).await;
    let keys = client(&ClientOptions {
        transport: Transport {
            allow_plaintext: true,
            same_origin_redirects: true,
        },
        ..options()
    })
    .unwrap();
    let e = send(keys.get(&url), &url).await.unwrap_err();
    assert!(format!("{e:?}").contains("origin"), "{e:?}");
    // A registry client may follow it (it stays on an allowed scheme).
    let registry = client(&options()).unwrap();
    let resp = send(registry.get(&url), &url).await.unwrap();
    assert_eq!(resp.status(), 200);
}
