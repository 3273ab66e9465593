//! What hookrelay sets on the TCP sockets to the broker and to Redis so that a quiet network is
//! noticed, and the one way to cut a broker connection that cannot be closed politely.
//!
//! - **Keepalive and user timeout.** Idle for one heartbeat, the kernel starts probing every
//!   third of it and gives up after three unanswered probes; data left unacknowledged for two
//!   heartbeats ends the connection too (`TCP_USER_TIMEOUT`), instead of the minutes of
//!   retransmission backoff the kernel would otherwise wait before it reports anything. The
//!   AMQP heartbeat notices the same on a link that still answers TCP (a proxy that stopped
//!   forwarding); these cover Redis, which has no heartbeat, and a half-open socket.
//! - **[`Severer`].** lapin writes nothing on a connection the broker blocked (memory or disk
//!   alarm), not even `channel.close`, and sends what it holds once the broker unblocks it. A
//!   publish that is abandoned must not reach the broker later, so its connection is shut down at
//!   the socket: lapin sees the connection fail and drops the frames it still held.

use std::io;
use std::sync::Arc;
use std::time::Duration;

/// The keepalive of a connection whose heartbeat (or, for Redis, liveness bound) is
/// `heartbeat`: probing starts after one heartbeat of silence, three probes a third apart.
pub fn keepalive(heartbeat: Duration) -> socket2::TcpKeepalive {
    let interval = (heartbeat / 3).max(Duration::from_secs(1));
    socket2::TcpKeepalive::new()
        .with_time(heartbeat.max(Duration::from_secs(1)))
        .with_interval(interval)
        .with_retries(3)
}

/// Sets keepalive and `TCP_USER_TIMEOUT` (two heartbeats) on `tcp`, and returns what can
/// shut it down later.
pub fn tune(tcp: &tokio::net::TcpStream, heartbeat: Duration) -> io::Result<Severer> {
    let socket = socket2::SockRef::from(tcp);
    socket.set_tcp_keepalive(&keepalive(heartbeat))?;
    socket.set_tcp_user_timeout(Some(heartbeat.saturating_mul(2)))?;
    // A duplicate descriptor of the same socket: shutting it down ends the connection for the
    // owner too, and it is closed on drop without touching the owner's descriptor.
    Ok(Severer(Arc::new(socket.try_clone()?)))
}

/// Cuts a broker connection at its socket (see the module's opening comment).
#[derive(Clone, Debug)]
pub struct Severer(Arc<socket2::Socket>);

impl Severer {
    /// Shuts the socket down both ways; the connection's reader then sees it end. Lingering is
    /// turned off first, so that closing it later resets it rather than flushing what is left.
    pub fn sever(&self) {
        let _ = self.0.set_linger(Some(Duration::ZERO));
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_severed_socket_ends_for_its_owner() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move { listener.accept().await.unwrap().0 });
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _server = accept.await.unwrap();
        let severer = tune(&client, Duration::from_secs(10)).unwrap();

        severer.sever();

        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("a severed socket does not hang");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    #[test]
    fn keepalive_probes_start_after_one_heartbeat() {
        // socket2 has no getters on TcpKeepalive; its Debug shows the values set.
        let text = format!("{:?}", keepalive(Duration::from_secs(9)));
        assert!(text.contains("9s") && text.contains("3s"), "{text}");
    }
}
