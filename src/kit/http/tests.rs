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
