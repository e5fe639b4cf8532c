//! Connections to Redis: one multiplexed connection (standalone, or the master Sentinel names)
//! or a cluster connection, made lazily and made again after a connection error.
//!
//! Why not the crate's `ConnectionManager`: it reconnects to one fixed address, and after a
//! Sentinel failover the master is elsewhere. Here a failed connection is dropped and the next
//! request connects again through the same path that found it (asking the sentinels again).
//! A connect that failed makes requests fail fast for a short while (`cool_down`) instead of
//! queueing each one behind another connect timeout.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{
    SentinelClient, SentinelClientBuilder, SentinelNodeConnectionInfo, SentinelServerType,
};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    Pipeline, RedisConnectionInfo, RedisError, RedisFuture, RedisResult, TlsCertificates, TlsMode,
    Value,
};

use super::config::{RedisConfig, Topology};

/// One usable connection; cheap to clone (both kinds are handles to a shared driver task).
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum Source {
    Standalone(Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    Cluster(redis::cluster::ClusterClient),
}

/// Makes connections and keeps the current one.
pub struct Connector {
    source: Source,
    /// The current connection and its generation. The async lock is held across a connect
    /// (bounded by `connect_budget`), so a burst of requests makes one connect, not one each.
    current: tokio::sync::Mutex<Option<(u64, Conn)>>,
    /// When the last connect failed: requests fail fast until `cool_down` has passed.
    failed_at: Mutex<Option<Instant>>,
    next_generation: std::sync::atomic::AtomicU64,
    connection_config: AsyncConnectionConfig,
    connect_budget: Duration,
    cool_down: Duration,
}

/// Why no connection could be had.
pub enum ConnectError {
    Redis(RedisError),
    TimedOut,
    /// A connect failed moments ago; not tried again yet.
    CoolingDown,
}

impl Connector {
    pub fn new(config: &RedisConfig) -> RedisResult<Connector> {
        let settings = |info: RedisConnectionInfo| {
            let info = match &config.username {
                Some(u) => info.set_username(u),
                None => info,
            };
            match &config.password {
                Some(p) => info.set_password(p),
                None => info,
            }
        };
        // `ca_file`: every rediss:// connection trusts these CAs instead of the system roots.
        let certs = config.ca_file.as_ref().map(|ca| TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.pem.clone()),
        });
        let with_ca = |info: ConnectionInfo| -> RedisResult<ConnectionInfo> {
            match (&certs, info.addr()) {
                (Some(certs), ConnectionAddr::TcpTls { .. }) => {
                    Ok(Client::build_with_tls(info, certs.clone())?
                        .get_connection_info()
                        .clone())
                }
                _ => Ok(info),
            }
        };
        // `WAIT` may take `wait_timeout` before it answers: the reply bound must allow it.
        let reply_timeout = config.response_timeout
            + if config.wait_replicas > 0 {
                config.wait_timeout
            } else {
                Duration::ZERO
            };
        let source = match &config.topology {
            Topology::Standalone(url) => {
                let info = with_ca(url.as_str().into_connection_info()?)?;
                let redis = settings(info.redis_settings().clone());
                Source::Standalone(Client::open(info.set_redis_settings(redis))?)
            }
            Topology::Cluster(nodes) => {
                let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(reply_timeout)
                    // Our own loop retries (bounded); the cluster driver retries redirects
                    // and a topology refresh, also bounded.
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(200);
                if let Some(u) = &config.username {
                    builder = builder.username(u);
                }
                if let Some(p) = &config.password {
                    builder = builder.password(p);
                }
                if let Some(certs) = &certs {
                    builder = builder.certs(certs.clone());
                }
                Source::Cluster(builder.build()?)
            }
            Topology::Sentinel {
                sentinels,
                master,
                master_tls,
            } => {
                let sentinels = sentinels
                    .iter()
                    .map(|url| with_ca(url.as_str().into_connection_info()?))
                    .collect::<RedisResult<Vec<_>>>()?;
                let client = match (&certs, *master_tls) {
                    // Only the builder hands the CA to the master's connections; it gives every
                    // sentinel one AUTH (the config checked that the sentinel URLs agree on it).
                    (Some(certs), true) => {
                        let auth = sentinels[0].redis_settings().clone();
                        let mut builder = SentinelClientBuilder::new(
                            sentinels.iter().map(|s| s.addr().clone()),
                            master,
                            SentinelServerType::Master,
                        )?
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_redis_certificates(certs.clone());
                        if let Some(u) = &config.username {
                            builder = builder.set_client_to_redis_username(u);
                        }
                        if let Some(p) = &config.password {
                            builder = builder.set_client_to_redis_password(p);
                        }
                        if let Some(u) = auth.username() {
                            builder = builder.set_client_to_sentinel_username(u);
                        }
                        if let Some(p) = auth.password() {
                            builder = builder.set_client_to_sentinel_password(p);
                        }
                        builder.build()?
                    }
                    _ => {
                        let mut node = SentinelNodeConnectionInfo::default()
                            .set_redis_connection_info(settings(RedisConnectionInfo::default()));
                        if *master_tls {
                            node = node.set_tls_mode(TlsMode::Secure);
                        }
                        SentinelClient::build(
                            sentinels,
                            master,
                            Some(node),
                            SentinelServerType::Master,
                        )?
                    }
                };
                Source::Sentinel(tokio::sync::Mutex::new(client))
            }
        };
        Ok(Connector {
            source,
            current: tokio::sync::Mutex::new(None),
            failed_at: Mutex::new(None),
            next_generation: std::sync::atomic::AtomicU64::new(1),
            connection_config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                .set_response_timeout(Some(reply_timeout)),
            // Sentinel: ask a sentinel, then connect; cluster: a seed, then the masters.
            connect_budget: config.connect_timeout * 2 + config.response_timeout * 2,
            cool_down: config.connect_timeout.min(Duration::from_millis(250)),
        })
    }

    fn lock_failed(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.failed_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current connection, connecting first if there is none.
    pub async fn get(&self) -> Result<(u64, Conn), ConnectError> {
        let mut current = self.current.lock().await;
        if let Some((generation, conn)) = &*current {
            return Ok((*generation, conn.clone()));
        }
        if self
            .lock_failed()
            .is_some_and(|at| at.elapsed() < self.cool_down)
        {
            return Err(ConnectError::CoolingDown);
        }
        let made = tokio::time::timeout(self.connect_budget, self.connect()).await;
        let conn = match made {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                *self.lock_failed() = Some(Instant::now());
                return Err(ConnectError::Redis(e));
            }
            Err(_) => {
                *self.lock_failed() = Some(Instant::now());
                return Err(ConnectError::TimedOut);
            }
        };
        let was_down = self.lock_failed().take().is_some();
        let generation = self
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if was_down || generation > 1 {
            tracing::info!("redis session store: connected again");
        }
        *current = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Drops connection `generation` (after an error on it) so the next request reconnects.
    pub async fn reset(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
        }
    }

    async fn connect(&self) -> RedisResult<Conn> {
        match &self.source {
            Source::Standalone(client) => client
                .get_multiplexed_async_connection_with_config(&self.connection_config)
                .await
                .map(Conn::Single),
            Source::Sentinel(sentinel) => {
                let client = sentinel.lock().await.async_get_client().await?;
                client
                    .get_multiplexed_async_connection_with_config(&self.connection_config)
                    .await
                    .map(Conn::Single)
            }
            Source::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        }
    }
}
