//! `hookrelay listen` as a merchant's receiver, and as the fault proof's (`scripts/faults.sh`):
//! one JSON line per delivery with the time it was read, and nothing it answered 2xx missing
//! from its output when it is stopped mid-request.

use chrono::{DateTime, Utc};
use hookrelay::delivery::signing::{standard_signature, Secret};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Starts `hookrelay listen --json` on any free port; returns it and its address.
fn start_listen() -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
        .args([
            "listen",
            "--listen",
            "127.0.0.1:0",
            "--secret",
            SECRET,
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("hookrelay runs");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    // Kept open and read to its end, as a terminal would: a closed stderr is not what is tested.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    (child, addr)
}

/// The head of a signed Standard Webhooks POST of `body` (or signed with garbage).
fn request_head(id: &str, body: &[u8], signed: bool) -> String {
    let now = Utc::now().timestamp();
    let signature = if signed {
        standard_signature(&Secret::parse(SECRET).unwrap(), id, now, body)
    } else {
        "v1,bm90IGEgc2lnbmF0dXJl".to_owned()
    };
    format!(
        "POST /hook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nwebhook-id: {id}\r\nwebhook-timestamp: {now}\r\n\
         webhook-signature: {signature}\r\nconnection: close\r\n\r\n",
        body.len()
    )
}

/// The status line's code of an HTTP/1.1 answer read to its end.
fn status_of(stream: &mut TcpStream) -> u16 {
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

/// Sends SIGTERM and waits (at most 20 s) for the exit; returns its status and stdout.
fn stop(mut child: Child) -> (ExitStatus, String) {
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("hookrelay listen still running 20 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (exit, reader.join().unwrap().unwrap())
}

#[test]
fn listen_json_prints_each_delivery_with_its_id_verdict_and_time() {
    let (child, addr) = start_listen();
    let before = Utc::now();

    let mut answers = Vec::new();
    for (id, signed) in [("evt_good", true), ("evt_forged", false)] {
        let body = format!(r#"{{"id":"{id}"}}"#);
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .write_all((request_head(id, body.as_bytes(), signed) + &body).as_bytes())
            .unwrap();
        answers.push(status_of(&mut stream));
    }
    let (exit, out) = stop(child);

    assert_eq!(answers, [204, 401]);
    assert!(exit.success(), "{exit}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["webhook_id"], "evt_good");
    assert_eq!(lines[0]["verified"], true);
    assert_eq!(lines[0]["path"], "/hook");
    assert_eq!(lines[1]["webhook_id"], "evt_forged");
    assert_eq!(lines[1]["verified"], false);
    assert!(lines[1]["problem"].as_str().unwrap().contains("signature"));
    for line in &lines {
        let at: DateTime<Utc> = line["received_at"].as_str().unwrap().parse().unwrap();
        assert!(before <= at && at <= Utc::now(), "{line}");
    }
}

#[test]
fn a_delivery_answered_while_listen_stops_is_still_printed() {
    let (child, addr) = start_listen();
    let body = br#"{"id":"evt_slow"}"#;
    let mut stream = TcpStream::connect(&addr).unwrap();
    // The head now, the body only after the signal: the request is in flight when it stops.
    stream
        .write_all(request_head("evt_slow", body, true).as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let stopping = std::thread::spawn(move || stop(child));
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(body).unwrap();
    let status = status_of(&mut stream);
    let (exit, out) = stopping.join().unwrap();

    assert_eq!(status, 204, "a request read before the stop is answered");
    assert!(exit.success(), "{exit}");
    let printed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed.len(), 1, "what was answered 2xx is printed: {out}");
    assert_eq!(printed[0]["webhook_id"], "evt_slow");
}
