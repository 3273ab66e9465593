//! Connections that send nothing (issue 20): the API and ops listeners close idle and half-sent
//! connections within seconds, bound how many are open, and answer a real request meanwhile.

use crate::api_harness::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous: the listeners' timeouts below are 1–2 s; a loaded machine may be slow to notice.
const CLOSED_WITHIN: Duration = Duration::from_secs(20);

/// Half a request head: the request line and one header, never the blank line that ends it.
const HALF_HEAD: &[u8] = b"GET /v1/whoami HTTP/1.1\r\nhost: localhost\r\n";

/// `idle` connections that send nothing and `half` that send half a request head.
async fn open(addr: SocketAddr, idle: usize, half: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(idle + half);
    for i in 0..idle + half {
        let mut stream = TcpStream::connect(addr).await.expect("connects");
        if i >= idle {
            // The server may already have closed it (the bound): a failed write is fine.
            let _ = stream.write_all(HALF_HEAD).await;
        }
        streams.push(stream);
    }
    streams
}

/// True when the server closed the connection within `within` (EOF or reset) without answering.
async fn closed_by_server(mut stream: TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// How many of `streams` the server has not closed within `within`.
async fn still_open(streams: Vec<TcpStream>, within: Duration) -> usize {
    let waits = streams.into_iter().map(|s| closed_by_server(s, within));
    futures_util::future::join_all(waits)
        .await
        .into_iter()
        .filter(|closed| !closed)
        .count()
}

/// One whole response (head and a `content-length` body) read off a kept-alive connection.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if got.len() >= end + 4 + length {
                return text;
            }
        }
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed mid-response: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

fn tight_limits(listener: &str) -> Vec<(String, &'static str)> {
    let key = |k: &str| format!("HOOKRELAY__{listener}__{k}");
    vec![
        (key("MAX_CONNECTIONS"), "100"),
        (key("HEADER_READ_TIMEOUT"), "2s"),
        (key("IDLE_TIMEOUT"), "1s"),
    ]
}

async fn api_with_tight_limits() -> Api {
    let mut limits = tight_limits("API");
    limits.extend(tight_limits("OPS"));
    let extra: Vec<(&str, &str)> = limits.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    api_alone(&extra).await
}

#[tokio::test]
async fn idle_and_half_sent_api_connections_are_closed_while_a_real_request_is_answered() {
    let api = api_with_tight_limits().await;
    let addr: SocketAddr = api.base.trim_start_matches("http://").parse().unwrap();

    // Three times the bound: the oldest make way for the newest, the rest time out.
    let streams = open(addr, 150, 150).await;
    let (status, body) = api.get("/v1/whoami", ADMIN).await;

    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(still_open(streams, CLOSED_WITHIN).await, 0);
    api.cleanup().await;
}

#[tokio::test]
async fn idle_and_half_sent_ops_connections_are_closed_while_readyz_is_answered() {
    let api = api_with_tight_limits().await;
    let ops = api.ops_addr();

    let streams = open(ops, 150, 150).await;
    let ready = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{ops}/readyz"))
        .send()
        .await
        .expect("the ops port answers");

    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    assert_eq!(still_open(streams, CLOSED_WITHIN).await, 0);
    api.cleanup().await;
}

#[tokio::test]
async fn a_request_head_trickled_byte_by_byte_is_cut_off_at_the_header_read_timeout() {
    // The idle timeout alone would never close it: a byte arrives every 200 ms.
    let api = api_alone(&[
        ("HOOKRELAY__API__HEADER_READ_TIMEOUT", "2s"),
        ("HOOKRELAY__API__IDLE_TIMEOUT", "1m"),
    ])
    .await;
    let addr: SocketAddr = api.base.trim_start_matches("http://").parse().unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();

    let mut sent = 0;
    let trickle = async {
        for byte in HALF_HEAD.iter().cycle().take(200) {
            if stream.write_all(&[*byte]).await.is_err() {
                return true;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    };

    assert!(trickle.await, "the server still read after {sent} bytes");
    assert!(sent < 150, "cut off only after {sent} bytes (about 30 s)");
    api.cleanup().await;
}

#[tokio::test]
async fn a_kept_alive_connection_serves_several_requests_before_it_idles_out() {
    let api = api_alone(&[("HOOKRELAY__API__IDLE_TIMEOUT", "1s")]).await;
    let addr: SocketAddr = api.base.trim_start_matches("http://").parse().unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/whoami HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {ADMIN}\r\n\r\n"
    );

    for _ in 0..3 {
        stream.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }

    assert!(closed_by_server(stream, CLOSED_WITHIN).await);
    api.cleanup().await;
}
