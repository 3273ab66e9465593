//! A minimal AMQP 0-9-1 publisher over a plain TCP socket, for publishing what no client library
//! lets one build: short strings that are not UTF-8, field tables nested thousands of levels
//! deep. lapin (like pika) only sends valid `String`s and encodes nested values recursively, so
//! hostile properties are written here byte by byte.
//!
//! One connection per publish: protocol header, `Connection.StartOk` (PLAIN guest/guest),
//! `TuneOk`, `Open`, `Channel.Open`, `Confirm.Select`, then `Basic.Publish` with a content header
//! frame whose property flags and property list are given as raw bytes, the body frame, and a wait
//! for the broker's `Basic.Ack`, so the caller knows the broker took the message as it is.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;

/// Property flag bits of the Basic class, in the order of AMQP 0-9-1 §4.2.6.1.
pub mod flag {
    pub const CONTENT_TYPE: u16 = 1 << 15;
    pub const HEADERS: u16 = 1 << 13;
    pub const DELIVERY_MODE: u16 = 1 << 12;
    pub const MESSAGE_ID: u16 = 1 << 7;
}

/// Basic properties as they go on the wire: the flags and the property list, raw.
#[derive(Clone, Debug, Default)]
pub struct RawProperties {
    pub flags: u16,
    pub list: Vec<u8>,
}

impl RawProperties {
    /// Properties in flag order; each part is the already-encoded value of its flag.
    pub fn new(parts: &[(u16, Vec<u8>)]) -> RawProperties {
        let mut sorted = parts.to_vec();
        sorted.sort_by_key(|(f, _)| std::cmp::Reverse(*f));
        RawProperties {
            flags: sorted.iter().fold(0, |acc, (f, _)| acc | f),
            list: sorted.into_iter().flat_map(|(_, v)| v).collect(),
        }
    }
}

/// A short string: a length byte and any bytes (not checked: that is the point).
pub fn short_str(bytes: &[u8]) -> Vec<u8> {
    let len = u8::try_from(bytes.len()).expect("a short string holds at most 255 bytes");
    let mut out = vec![len];
    out.extend_from_slice(bytes);
    out
}

/// A long string: a 32-bit length and the bytes.
pub fn long_str(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A field table from already-encoded entries (`key` short string, type octet, value).
pub fn table(entries: &[Vec<u8>]) -> Vec<u8> {
    long_str(&entries.concat())
}

/// One table entry: `key` as raw bytes, `kind` the field type octet, `value` encoded.
pub fn entry(key: &[u8], kind: u8, value: &[u8]) -> Vec<u8> {
    let mut out = short_str(key);
    out.push(kind);
    out.extend_from_slice(value);
    out
}

/// A headers table `{"a": {"a": … {} …}}` with `levels` tables, built from the inside out (no
/// recursion).
pub fn tables_nested(levels: usize) -> Vec<u8> {
    let mut inner = table(&[]);
    for _ in 1..levels {
        inner = table(&[entry(b"a", b'F', &inner)]);
    }
    inner
}

/// A headers table `{"a": [[[…[]…]]]}` with `levels` arrays.
pub fn arrays_nested(levels: usize) -> Vec<u8> {
    let mut inner = long_str(&[]);
    for _ in 1..levels {
        let mut item = vec![b'A'];
        item.extend_from_slice(&inner);
        inner = long_str(&item);
    }
    table(&[entry(b"a", b'A', &inner)])
}

/// Why a raw publish did not go through.
#[derive(Debug, thiserror::Error)]
pub enum RawPublishError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker closed with {code} {text}")]
    Closed { code: u16, text: String },
    #[error("the broker nacked the message")]
    Nacked,
    #[error("unexpected method {0}.{1}")]
    Unexpected(u16, u16),
}

/// Publishes one message to `exchange` with `routing_key`, `props` and `body` on the broker at
/// `addr` (guest/guest, vhost `/`), and waits for its confirm.
pub async fn publish(
    addr: &str,
    exchange: &str,
    routing_key: &[u8],
    props: &RawProperties,
    body: &[u8],
) -> Result<(), RawPublishError> {
    let mut conn = Conn {
        stream: TcpStream::connect(addr).await?,
    };
    conn.handshake().await?;
    conn.method(1, 20, 10, &short_str(b"")).await?; // Channel.Open
    conn.expect(20, 11).await?;
    conn.method(1, 85, 10, &[0]).await?; // Confirm.Select, nowait = false
    conn.expect(85, 11).await?;
    let mut publish = 0u16.to_be_bytes().to_vec();
    publish.extend(short_str(exchange.as_bytes()));
    publish.extend(short_str(routing_key));
    publish.push(0); // mandatory = immediate = false
    conn.method(1, 60, 40, &publish).await?;
    let mut header = Vec::new();
    header.extend(60u16.to_be_bytes());
    header.extend(0u16.to_be_bytes());
    header.extend((body.len() as u64).to_be_bytes());
    header.extend(props.flags.to_be_bytes());
    header.extend(&props.list);
    conn.frame(FRAME_HEADER, 1, &header).await?;
    if !body.is_empty() {
        conn.frame(FRAME_BODY, 1, body).await?;
    }
    match conn.next_method().await? {
        (60, 80, _) => {}
        (60, 120, _) => return Err(RawPublishError::Nacked),
        (c, m, _) => return Err(RawPublishError::Unexpected(c, m)),
    }
    conn.method(0, 10, 50, &close_args()).await?; // Connection.Close
    conn.expect(10, 51).await?;
    Ok(())
}

fn close_args() -> Vec<u8> {
    let mut args = 200u16.to_be_bytes().to_vec();
    args.extend(short_str(b"bye"));
    args.extend([0, 0, 0, 0]);
    args
}

struct Conn {
    stream: TcpStream,
}

impl Conn {
    async fn handshake(&mut self) -> Result<(), RawPublishError> {
        self.stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
        self.expect(10, 10).await?; // Connection.Start
        let mut start_ok = table(&[]);
        start_ok.extend(short_str(b"PLAIN"));
        start_ok.extend(long_str(b"\0guest\0guest"));
        start_ok.extend(short_str(b"en_US"));
        self.method(0, 10, 11, &start_ok).await?;
        let tune = self.expect(10, 30).await?;
        // TuneOk: the broker's channel_max and frame_max, no heartbeats (the publish is short).
        let mut tune_ok = tune[..6].to_vec();
        tune_ok.extend([0, 0]);
        self.method(0, 10, 31, &tune_ok).await?;
        let mut open = short_str(b"/");
        open.extend(short_str(b""));
        open.push(0);
        self.method(0, 10, 40, &open).await?;
        self.expect(10, 41).await?;
        Ok(())
    }

    async fn frame(&mut self, kind: u8, channel: u16, payload: &[u8]) -> std::io::Result<()> {
        let mut out = vec![kind];
        out.extend(channel.to_be_bytes());
        out.extend((payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.push(FRAME_END);
        self.stream.write_all(&out).await
    }

    async fn method(
        &mut self,
        channel: u16,
        class: u16,
        id: u16,
        args: &[u8],
    ) -> std::io::Result<()> {
        let mut payload = class.to_be_bytes().to_vec();
        payload.extend(id.to_be_bytes());
        payload.extend_from_slice(args);
        self.frame(FRAME_METHOD, channel, &payload).await
    }

    /// The next method frame (heartbeats skipped) as (class, method, arguments); a close from
    /// the broker is an error that says why.
    async fn next_method(&mut self) -> Result<(u16, u16, Vec<u8>), RawPublishError> {
        loop {
            let mut head = [0u8; 7];
            self.stream.read_exact(&mut head).await?;
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let mut payload = vec![0u8; size + 1];
            self.stream.read_exact(&mut payload).await?;
            payload.pop(); // frame end
            if head[0] == FRAME_HEARTBEAT {
                continue;
            }
            let class = u16::from_be_bytes([payload[0], payload[1]]);
            let id = u16::from_be_bytes([payload[2], payload[3]]);
            let args = payload[4..].to_vec();
            if (class, id) == (10, 50) || (class, id) == (20, 40) {
                let code = u16::from_be_bytes([args[0], args[1]]);
                let len = args[2] as usize;
                let text = String::from_utf8_lossy(&args[3..3 + len]).into_owned();
                return Err(RawPublishError::Closed { code, text });
            }
            return Ok((class, id, args));
        }
    }

    async fn expect(&mut self, class: u16, id: u16) -> Result<Vec<u8>, RawPublishError> {
        match self.next_method().await? {
            (c, m, args) if (c, m) == (class, id) => Ok(args),
            (c, m, _) => Err(RawPublishError::Unexpected(c, m)),
        }
    }
}
