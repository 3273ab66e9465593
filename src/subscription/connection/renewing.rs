//! A connection that is replaced when an error says it leads to the wrong place. The redis
//! crate's sentinel client resolves the master only once, and its cluster client does not notice
//! that a dead master was replaced; holding either in a [`Renewing`] is how hookrelay follows a
//! failover (see the parent module).

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::SentinelClient;
use redis::{AsyncConnectionConfig, Client, Cmd, ErrorKind, RedisError, RedisFuture};
use redis::{ServerErrorKind, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A connection that is replaced when an error says it leads to the wrong place: the sentinel
/// mode's master connection and the cluster mode's cluster connection. Cheap to clone.
pub struct Renewing<S: Source>(Arc<RenewingShared<S>>);

impl<S: Source> Clone for Renewing<S> {
    fn clone(&self) -> Self {
        Renewing(self.0.clone())
    }
}

struct RenewingShared<S: Source> {
    // A tokio Mutex: held while a new connection is opened, so that concurrent commands that
    // find none wait for one opening instead of each opening their own.
    source: tokio::sync::Mutex<S>,
    // A std Mutex: held only to clone or replace the handle, never across an await.
    current: Mutex<Option<(u64, S::Conn)>>,
    generation: AtomicU64,
    /// False from a loss to the next answer: one log line per outage, not one per command.
    healthy: AtomicBool,
    timeout: Duration,
    db: i64,
}

/// Opens the connections of a [`Renewing`] and says which errors make one unusable.
pub trait Source: Send + 'static {
    type Conn: ConnectionLike + Clone + Send + Sync + 'static;
    /// For the log line of a replacement.
    const WHAT: &'static str;
    fn open(&mut self) -> BoxFuture<'_, Result<Self::Conn, RedisError>>;
    fn is_lost(e: &RedisError) -> bool;
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl<S: Source> Renewing<S> {
    pub(super) fn new(source: S, timeout: Duration, db: i64) -> Self {
        Renewing(Arc::new(RenewingShared {
            source: tokio::sync::Mutex::new(source),
            current: Mutex::new(None),
            generation: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            timeout,
            db,
        }))
    }

    /// The current connection, opening one if there is none.
    pub(super) async fn connection(&self) -> Result<(u64, S::Conn), RedisError> {
        if let Some(current) = self.0.current.lock().unwrap().clone() {
            return Ok(current);
        }
        let mut source = self.0.source.lock().await;
        if let Some(current) = self.0.current.lock().unwrap().clone() {
            return Ok(current);
        }
        let conn = tokio::time::timeout(self.0.timeout, source.open())
            .await
            .map_err(|_| timed_out(S::WHAT))??;
        let generation = self.0.generation.fetch_add(1, Ordering::AcqRel) + 1;
        *self.0.current.lock().unwrap() = Some((generation, conn.clone()));
        tracing::debug!(generation, "{} opened", S::WHAT);
        Ok((generation, conn))
    }

    /// After an error that makes connection `generation` unusable, forgets it so that the next
    /// command opens a new one.
    fn settle<T>(&self, generation: u64, result: &Result<T, RedisError>) {
        let e = match result {
            Ok(_) => {
                if !self.0.healthy.swap(true, Ordering::AcqRel) {
                    tracing::info!("{} answers again", S::WHAT);
                }
                return;
            }
            Err(e) if S::is_lost(e) => e,
            Err(_) => return,
        };
        self.forget(generation, e);
    }

    /// Forgets connection `generation` (if it is still the current one): the next command
    /// opens a new one.
    fn forget(&self, generation: u64, e: &dyn std::fmt::Display) {
        let mut current = self.0.current.lock().unwrap();
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
            if self.0.healthy.swap(false, Ordering::AcqRel) {
                tracing::warn!(error = %e, "{} lost; opening new ones until it answers", S::WHAT);
            } else {
                tracing::debug!(error = %e, "{} still lost", S::WHAT);
            }
        }
    }
}

/// A command sent on connection `generation` and not yet answered. Dropped unanswered — its
/// caller's timeout (the store's, as long as the client's own response timeout) gave up on it —
/// it counts as a timeout, which makes the connection lost like any other: otherwise a cluster
/// connection that keeps asking a dead master would be kept for as long as every command
/// outlives its caller's patience, and a failover never followed.
struct Unanswered<'a, S: Source> {
    renewing: &'a Renewing<S>,
    generation: u64,
}

impl<S: Source> Unanswered<'_, S> {
    /// The command got its answer (or its error, which `settle` judges): nothing to forget.
    fn answered(self) {
        std::mem::forget(self);
    }
}

impl<S: Source> Drop for Unanswered<'_, S> {
    fn drop(&mut self) {
        self.renewing.forget(
            self.generation,
            &"a command got no answer before its caller gave up on it",
        );
    }
}

impl<S: Source> ConnectionLike for Renewing<S> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut conn) = self.connection().await?;
            let unanswered = Unanswered {
                renewing: &*self,
                generation,
            };
            let result = conn.req_packed_command(cmd).await;
            unanswered.answered();
            self.settle(generation, &result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut conn) = self.connection().await?;
            let unanswered = Unanswered {
                renewing: &*self,
                generation,
            };
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            unanswered.answered();
            self.settle(generation, &result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.0.db
    }
}

/// The master the sentinels name (see the module comment).
pub struct MasterOfSentinels {
    pub(super) client: SentinelClient,
    pub(super) config: AsyncConnectionConfig,
}

impl Source for MasterOfSentinels {
    type Conn = MultiplexedConnection;
    const WHAT: &'static str = "the connection to the Redis master the sentinels name";

    fn open(&mut self) -> BoxFuture<'_, Result<Self::Conn, RedisError>> {
        // Asks the sentinels, then checks that the node named considers itself the master.
        Box::pin(self.client.get_async_connection_with_config(&self.config))
    }

    /// The connection broke, or the node was demoted to a replica (READONLY) while we stayed
    /// connected.
    fn is_lost(e: &RedisError) -> bool {
        connection_broken(e) || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
    }
}

impl Renewing<MasterOfSentinels> {
    /// A client for the current master (pub/sub connects on its own).
    pub(super) async fn master_client(&self) -> Result<Client, RedisError> {
        let mut source = self.0.source.lock().await;
        tokio::time::timeout(self.0.timeout, source.client.async_get_client())
            .await
            .map_err(|_| timed_out("resolving the master through the sentinels"))?
    }
}

/// A Redis Cluster, reached through the seed nodes.
pub struct Cluster {
    pub(super) client: redis::cluster::ClusterClient,
}

impl Source for Cluster {
    type Conn = super::redirect::Redirecting;
    const WHAT: &'static str = "the Redis Cluster connection";

    fn open(&mut self) -> BoxFuture<'_, Result<Self::Conn, RedisError>> {
        Box::pin(async {
            let conn = self.client.get_async_connection().await?;
            Ok(super::redirect::Redirecting(conn))
        })
    }

    /// The cluster client refreshes its slot map on MOVED, but not when the master of a slot
    /// stops answering: it then keeps retrying the dead address, also after the failover
    /// (measured with scripts/redis-nodes.sh: lookups failed for over a minute). A new
    /// connection reads the slot map afresh from the seeds. A transaction that a node refused
    /// (EXECABORT, e.g. MOVED inside MULTI) is the same sign of a changed topology. A slot
    /// being migrated (ASK, TRYAGAIN) is not: the connection is right, the command is retried
    /// (reopening the whole cluster connection for each one cost about 150 reconnects per
    /// migrated slot, issue 26).
    fn is_lost(e: &RedisError) -> bool {
        connection_broken(e)
            || matches!(
                e.kind(),
                ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::Server(ServerErrorKind::Moved)
                    | ErrorKind::Server(ServerErrorKind::ClusterDown)
                    | ErrorKind::Server(ServerErrorKind::ExecAbort)
                    | ErrorKind::Server(ServerErrorKind::MasterDown)
            )
    }
}

fn connection_broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

pub type SentinelConn = Renewing<MasterOfSentinels>;
pub type ClusterConn = Renewing<Cluster>;

fn timed_out(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        what.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(kind: ServerErrorKind, detail: &'static str) -> RedisError {
        RedisError::from((ErrorKind::Server(kind), "reply", detail.to_owned()))
    }

    #[test]
    fn a_migrating_slot_does_not_reopen_the_cluster_connection() {
        for kind in [ServerErrorKind::Ask, ServerErrorKind::TryAgain] {
            assert!(
                !Cluster::is_lost(&server_error(kind, "3999 127.0.0.1:7002")),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_changed_topology_or_a_dead_node_reopens_it() {
        for kind in [
            ServerErrorKind::Moved,
            ServerErrorKind::ClusterDown,
            ServerErrorKind::MasterDown,
            ServerErrorKind::ExecAbort,
        ] {
            assert!(
                Cluster::is_lost(&server_error(kind, "3999 127.0.0.1:7002")),
                "{kind:?}"
            );
        }
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(Cluster::is_lost(&RedisError::from(reset)));
    }
}
