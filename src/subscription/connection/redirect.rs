//! Following a Redis Cluster slot migration one command at a time (issue 26).
//!
//! The redis crate's cluster client follows ASK by sending `ASKING` and then the command as two
//! separate requests on the node's multiplexed connection: under load another request slips in
//! between, takes the one-command `ASKING` flag, and the command is answered MOVED back to the
//! source, which answers ASK again; each MOVED also rebuilds the slot map (hundreds of rebuilds
//! and 2 s timeouts per migrated slot, measured with scripts/redis-nodes.sh). It also re-sends a
//! whole pipeline when one command in it is answered ASK, which created keys on the importing
//! node that the source still held (BUSYKEY: the slot's move fails).
//!
//! So the client is built without retries of its own (it still rebuilds its slot map on MOVED),
//! and [`Redirecting`] does what the cluster spec says instead:
//! - ASK: `ASKING` and the command as one two-command pipeline to the node named, written in one
//!   piece, so nothing can come between them;
//! - TRYAGAIN (a multi-key command whose keys are split between the two nodes for a moment),
//!   MOVED (the slot map was stale, and is being rebuilt) and CLUSTERDOWN (which the client
//!   used to wait out too): the command again after a short backoff, bounded by [`REDIRECTS`];
//! - a pipeline of several commands is never re-sent: some of it may have run. hookrelay's
//!   pipelines are single commands (see `attempts`); the error goes to the caller otherwise.

use backon::{BackoffBuilder, ExponentialBuilder};
use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{Cmd, ErrorKind, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value};
use std::time::Duration;

/// Redirects and retries one command may take before its error goes to the caller.
const REDIRECTS: usize = 12;

/// A cluster connection that follows ASK, MOVED and TRYAGAIN per command (module comment).
#[derive(Clone)]
pub struct Redirecting(pub(super) ClusterConnection);

impl Redirecting {
    /// The cluster client itself, for commands routed to a given node.
    pub(super) fn inner(&mut self) -> &mut ClusterConnection {
        &mut self.0
    }

    async fn command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let mut delays = backoff();
        let mut redirects = 0;
        loop {
            let result = match self.0.req_packed_command(cmd).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::Ask) => {
                    self.asking(&e, cmd).await
                }
                other => other,
            };
            match result {
                Err(e) if redirects < REDIRECTS && Redirect::of(&e).is_some() => {
                    redirects += 1;
                    if let Some(Redirect::Wait) = Redirect::of(&e) {
                        tokio::time::sleep(delays.next().unwrap_or(MAX_DELAY)).await;
                    }
                }
                other => return other,
            }
        }
    }

    /// `ASKING` and `cmd` to the node an ASK error names, in one pipeline.
    async fn asking(&mut self, ask: &RedisError, cmd: &Cmd) -> RedisResult<Value> {
        let Some((host, port)) = ask.redirect_node().and_then(|(a, _)| host_port(a)) else {
            return Err(ask.clone());
        };
        let mut pipe = redis::pipe();
        pipe.add_command(redis::cmd("ASKING"))
            .add_command(cmd.clone());
        let route = SingleNodeRoutingInfo::ByAddress { host, port };
        let mut replies = self.0.route_pipeline(pipe, 1, 1, route).await?;
        match replies.pop() {
            Some(Value::ServerError(e)) => Err(e.into()),
            Some(value) => Ok(value),
            None => Err(RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "no reply to a command sent after ASKING",
            ))),
        }
    }
}

/// How a command that met a migrating or moved slot is sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Redirect {
    /// ASK again: at once, to the node it names.
    Now,
    /// TRYAGAIN (while the rest of the keys move), MOVED (while the client rebuilds its slot
    /// map) or CLUSTERDOWN (a cluster just formed, or between a failover's steps): after a
    /// short pause.
    Wait,
}

impl Redirect {
    fn of(e: &RedisError) -> Option<Redirect> {
        match e.kind() {
            ErrorKind::Server(ServerErrorKind::Ask) => Some(Redirect::Now),
            ErrorKind::Server(
                ServerErrorKind::Moved | ServerErrorKind::TryAgain | ServerErrorKind::ClusterDown,
            ) => Some(Redirect::Wait),
            _ => None,
        }
    }
}

const MAX_DELAY: Duration = Duration::from_millis(50);

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(2))
        .with_max_delay(MAX_DELAY)
        .with_max_times(REDIRECTS)
        .with_jitter()
        .build()
}

/// `host:port` of a redirect (IPv6 hosts keep their colons).
fn host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

impl ConnectionLike for Redirecting {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            // A one-command pipeline is that command; anything larger goes as it is.
            let single = pipeline.len() == 1 && !pipeline.is_transaction() && offset == 0;
            match pipeline.cmd_iter().next() {
                Some(cmd) if single && count == 1 => Ok(vec![self.command(cmd).await?]),
                _ => self.0.req_packed_commands(pipeline, offset, count).await,
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(kind: ServerErrorKind) -> RedisError {
        RedisError::from((
            ErrorKind::Server(kind),
            "reply",
            "0 127.0.0.1:7002".to_owned(),
        ))
    }

    #[test]
    fn ask_is_followed_at_once_and_moved_tryagain_and_clusterdown_after_a_pause() {
        assert_eq!(
            Redirect::of(&server_error(ServerErrorKind::Ask)),
            Some(Redirect::Now)
        );
        assert_eq!(
            Redirect::of(&server_error(ServerErrorKind::Moved)),
            Some(Redirect::Wait)
        );
        assert_eq!(
            Redirect::of(&server_error(ServerErrorKind::TryAgain)),
            Some(Redirect::Wait)
        );
        assert_eq!(
            Redirect::of(&server_error(ServerErrorKind::ClusterDown)),
            Some(Redirect::Wait)
        );
        assert_eq!(
            Redirect::of(&server_error(ServerErrorKind::CrossSlot)),
            None
        );
    }

    #[test]
    fn a_redirect_address_splits_at_its_last_colon() {
        assert_eq!(
            host_port("127.0.0.1:7002"),
            Some(("127.0.0.1".into(), 7002))
        );
        assert_eq!(host_port("::1:7002"), Some(("::1".into(), 7002)));
        assert_eq!(host_port("nohost"), None);
        assert_eq!(host_port("h:notaport"), None);
    }
}
