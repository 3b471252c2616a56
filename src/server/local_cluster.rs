//! [`LocalCluster`]: a whole cluster of in-process servers on 127.0.0.1, for tests, benchmarks
//! and experiments. Every listener is bound (port 0) before any server starts, so each server
//! knows every other's address without racing for ports.

use super::{Server, ServerBuilder, ServerHandle};
use crate::consensus::Role;
use crate::error::{Error, Result};
use crate::log::PersistentLog;
use crate::state_machine::StateMachine;
use crate::types::ServerId;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// Servers `1..=size` running on their own threads on 127.0.0.1.
///
/// # Examples
/// ```
/// use mioraft::server::LocalCluster;
/// use mioraft::{Client, KvStateMachine, MemLog};
/// use std::time::Duration;
///
/// let cluster = LocalCluster::spawn(3, |_| MemLog::new(), |_| KvStateMachine::new(), |b| b)?;
/// cluster.wait_for_leader(Duration::from_secs(10))?;
/// let mut client = Client::new(cluster.addresses());
/// client.propose(b"put k v")?;
/// assert_eq!(client.query(b"get k")?, b"v");
/// cluster.shutdown()?;
/// # Ok::<(), mioraft::Error>(())
/// ```
#[derive(Debug)]
pub struct LocalCluster {
    servers: Vec<ServerHandle>,
}

impl LocalCluster {
    /// Starts `size` servers, server `id` with `make_log(id)` and `make_state_machine(id)`, each
    /// builder passed through `configure` (timeouts, limits) before it starts.
    ///
    /// # Errors
    /// A bind or configuration error, naming the address or setting.
    pub fn spawn<L, M>(
        size: u64,
        make_log: impl Fn(ServerId) -> L,
        make_state_machine: impl Fn(ServerId) -> M,
        configure: impl Fn(ServerBuilder<L, M>) -> ServerBuilder<L, M>,
    ) -> Result<LocalCluster>
    where
        L: PersistentLog + Send + 'static,
        M: StateMachine,
    {
        let mut listeners = Vec::new();
        for _ in 0..size {
            let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Io {
                address: "127.0.0.1:0".to_owned(),
                source,
            })?;
            let address = listener.local_addr().map_err(|source| Error::Io {
                address: "127.0.0.1:0".to_owned(),
                source,
            })?;
            listeners.push((ServerId(listeners.len() as u64 + 1), address, listener));
        }
        let addresses: HashMap<ServerId, SocketAddr> = listeners
            .iter()
            .map(|&(id, address, _)| (id, address))
            .collect();
        let mut servers = Vec::new();
        for (id, address, listener) in listeners {
            let peers = addresses
                .iter()
                .filter(|&(&peer, _)| peer != id)
                .map(|(&peer, &address)| (peer, address))
                .collect();
            let builder = Server::new(id, address, make_log(id), make_state_machine(id))
                .with_listener(listener)
                .with_peers(peers);
            servers.push(configure(builder).spawn()?);
        }
        Ok(LocalCluster { servers })
    }

    /// Every server's client address, server 1 first.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(ServerHandle::local_addr).collect()
    }

    /// The running servers, server 1 first.
    pub fn servers(&self) -> &[ServerHandle] {
        &self.servers
    }

    /// The servers themselves, server 1 first, to stop or restart one at a time.
    pub fn into_servers(self) -> Vec<ServerHandle> {
        self.servers
    }

    /// Waits until some server reports itself leader, and returns it.
    ///
    /// # Errors
    /// [`Error::Timeout`] with every server's role and term if none leads within `timeout`.
    pub fn wait_for_leader(&self, timeout: Duration) -> Result<ServerId> {
        let deadline = Instant::now() + timeout;
        loop {
            let metrics: Vec<_> = self.servers.iter().map(ServerHandle::metrics).collect();
            if let Some(leader) = metrics.iter().find(|m| m.role == Role::Leader) {
                return Ok(leader.id);
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = metrics
                    .iter()
                    .map(|m| format!("{} {:?} t{}", m.id, m.role, m.current_term))
                    .collect();
                return Err(Error::Timeout {
                    timeout,
                    last_problem: format!("no leader; servers: {}", seen.join(", ")),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops every server.
    ///
    /// # Errors
    /// The first server error met; every server is stopped regardless.
    pub fn shutdown(self) -> Result<()> {
        let mut first_error = None;
        for server in self.servers {
            if let Err(error) = server.shutdown() {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
