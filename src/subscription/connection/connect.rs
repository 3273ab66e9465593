//! Connecting in each `redis.mode`: TLS settings, the single server, the cluster's seeds, the
//! sentinels' master, each within the lookup timeout and with messages that name the target.

use super::*;

/// The system's trust roots and no client certificate.
pub(super) fn system_roots() -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: None,
    }
}

/// `[redis.tls]` read from disk; an unreadable file names its key.
pub(super) fn certificates(tls: &RedisTls) -> Result<TlsCertificates, ConnectError> {
    let read = |key: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| ConnectError::File {
            key,
            path: path.to_owned(),
            source,
        })
    };
    let root_cert = match &tls.ca_file {
        Some(path) => Some(read("redis.tls.ca_file", path)?),
        None => None,
    };
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read("redis.tls.cert_file", cert)?,
            client_key: read("redis.tls.key_file", key)?,
        }),
        // The configuration accepts both or neither.
        _ => None,
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// A client for `url`: with the certificates for `rediss://` (TLS, verified), plain otherwise.
/// Its sockets get TCP keepalive and a user timeout (see [`crate::broker::socket`]): Redis has
/// no heartbeat, and a partition would otherwise go unnoticed until the kernel gives up.
pub(super) fn client_for(url: &str, certs: &TlsCertificates) -> Result<Client, RedisError> {
    let info = url.into_connection_info()?;
    let info = info
        .clone()
        .set_tcp_settings(tcp_settings(info.tcp_settings()));
    if url.starts_with("rediss:") {
        Client::build_with_tls(info, certs.clone())
    } else {
        Client::open(info)
    }
}

/// Keepalive probing after 10 s of silence, and unacknowledged data for 20 s ends the
/// connection: the broker's default heartbeat, so that both notice a partition alike.
pub(super) fn tcp_settings(given: &redis::io::tcp::TcpSettings) -> redis::io::tcp::TcpSettings {
    let quiet = crate::broker::connect::DEFAULT_HEARTBEAT;
    given
        .clone()
        .set_keepalive(crate::broker::socket::keepalive(quiet))
        .set_user_timeout(quiet * 2)
}

/// `scheme://host:port` of a URL, without credentials, for messages (also the store marker's).
pub(crate) fn target_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "unix" => format!("unix:{}", u.path()),
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or("?"),
            u.port().unwrap_or(6379)
        ),
        Err(_) => "an unparsable URL".to_owned(),
    }
}

pub(super) fn redis_error(target: &str, error: RedisError) -> ConnectError {
    // rustls names the problem ("invalid peer certificate: UnknownIssuer") but not the setting.
    let text = error.to_string();
    let hint = if text.contains("CertificateRequired") {
        " (the server requires a client certificate: set redis.tls.cert_file and key_file)"
    } else if text.contains("certificate") {
        " (the server's TLS certificate does not verify against redis.tls.ca_file, or against \
         the system's trust roots when that is empty)"
    } else {
        ""
    };
    ConnectError::Redis {
        target: target.to_owned(),
        error,
        hint,
    }
}

pub(super) async fn timed<T>(
    target: &str,
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, ConnectError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r.map_err(|e| redis_error(target, e)),
        Err(_) => Err(ConnectError::Timeout {
            target: target.to_owned(),
            timeout,
        }),
    }
}

pub(super) async fn connect_single(
    url: &str,
    certs: TlsCertificates,
    timeout: Duration,
) -> Result<RedisConn, ConnectError> {
    let target = target_of(url);
    let client = client_for(url, &certs).map_err(|e| redis_error(&target, e))?;
    // One plain connection first: the ConnectionManager retries a failed connect with backoff,
    // which would turn a certificate error into a timeout; this one says what went wrong.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut probe = timed(
        &target,
        timeout,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await?;
    timed(
        &target,
        timeout,
        redis::cmd("PING").query_async::<()>(&mut probe),
    )
    .await?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let conn = timed(
        &target,
        timeout,
        ConnectionManager::new_with_config(client.clone(), config),
    )
    .await?;
    Ok(RedisConn::Single {
        conn,
        client: Arc::new(client),
    })
}

pub(super) async fn connect_cluster(
    urls: &[String],
    certs: TlsCertificates,
    timeout: Duration,
) -> Result<RedisConn, ConnectError> {
    let target = format!(
        "the cluster of {}",
        urls.iter()
            .map(|u| target_of(u))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let tls = urls.iter().all(|u| u.starts_with("rediss:"));
    // No retries in the client: `Redirecting` follows ASK, MOVED and TRYAGAIN per command
    // (see redirect.rs), and the callers retry the rest, as in the other modes.
    let mut builder = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(0);
    if tls {
        builder = builder.tls(TlsMode::Secure).certs(certs.clone());
    }
    let client = builder.build().map_err(|e| redis_error(&target, e))?;
    let conn = ClusterConn::new(Cluster { client }, timeout, 0);
    timed(&target, timeout, conn.connection()).await?;
    let seeds = urls
        .iter()
        .map(|u| client_for(u, &certs))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| redis_error(&target, e))?;
    Ok(RedisConn::Cluster {
        conn,
        seeds: seeds.into(),
    })
}

pub(super) async fn connect_sentinel(
    settings: &RedisSettings,
    certs: TlsCertificates,
) -> Result<RedisConn, ConnectError> {
    let timeout = settings.lookup_timeout;
    let target = sentinel_target(settings);
    let fail = |e| redis_error(&target, e);
    let (builder, db) = sentinel_builder(settings, certs).map_err(fail)?;
    let client = builder.build().map_err(fail)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let conn = SentinelConn::new(MasterOfSentinels { client, config }, timeout, db);
    timed(&target, timeout, conn.connection()).await?;
    Ok(RedisConn::Sentinel(conn))
}

/// How errors name a Sentinel set-up: the master's name and every sentinel.
pub(super) fn sentinel_target(settings: &RedisSettings) -> String {
    let sentinels: Vec<String> = settings.urls.iter().map(|u| target_of(u)).collect();
    format!(
        "master {:?} of the sentinels {}",
        settings.sentinel_master,
        sentinels.join(", ")
    )
}

/// The client for the master the sentinels name: credentials and database from redis.url, the
/// sentinels' credentials from the first of redis.urls, TLS where the URLs say rediss. With it,
/// the master's database.
pub(super) fn sentinel_builder(
    settings: &RedisSettings,
    certs: TlsCertificates,
) -> Result<(SentinelClientBuilder, i64), RedisError> {
    let sentinels = settings
        .urls
        .iter()
        .map(|u| u.as_str().into_connection_info().map(|i| i.addr().clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let sentinel_tls = settings.urls.iter().all(|u| u.starts_with("rediss:"));
    // The master: TLS when redis.url or the sentinels say rediss (never plain text because one
    // of them was left at its default); credentials and database from redis.url.
    let master_tls = sentinel_tls || settings.url.starts_with("rediss:");
    let master = settings.url.as_str().into_connection_info()?;
    let first_sentinel = settings.urls[0].as_str().into_connection_info()?;
    let mut builder = SentinelClientBuilder::new(
        sentinels,
        &settings.sentinel_master,
        SentinelServerType::Master,
    )?
    .set_client_to_redis_db(master.redis_settings().db());
    if let Some(user) = master.redis_settings().username() {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = master.redis_settings().password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(user) = first_sentinel.redis_settings().username() {
        builder = builder.set_client_to_sentinel_username(user);
    }
    if let Some(password) = first_sentinel.redis_settings().password() {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if master_tls {
        builder = builder
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_redis_certificates(certs.clone());
    }
    if sentinel_tls {
        builder = builder
            .set_client_to_sentinel_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_certificates(certs);
    }
    Ok((builder, master.redis_settings().db()))
}
