//! [`LocalCluster`]: a whole cluster of in-process servers on 127.0.0.1, for tests, benchmarks
//! and experiments. Every listener is bound (port 0) before any server starts, so each server
//! knows every other's address without racing for ports. Servers started later to join
//! ([`LocalCluster::spawn_joining`]) learn the others from the configuration once added.

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
    /// The running servers, in the order they started.
    servers: Vec<ServerHandle>,
    /// Each server's id, at the same position as its handle.
    ids: Vec<ServerId>,
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
            let (address, listener) = bind_local()?;
            listeners.push((ServerId(listeners.len() as u64 + 1), address, listener));
        }
        let addresses: HashMap<ServerId, SocketAddr> = listeners
            .iter()
            .map(|&(id, address, _)| (id, address))
            .collect();
        let mut servers = Vec::new();
        let mut ids = Vec::new();
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
            ids.push(id);
        }
        Ok(LocalCluster { servers, ids })
    }

    /// Starts server `id` on a free port of 127.0.0.1 to join this cluster
    /// ([`ServerBuilder::join`]): it stays passive until a leader adds it (with
    /// [`Client::add_server`](crate::Client::add_server) at the address returned). The
    /// builder goes through `configure` first.
    ///
    /// # Errors
    /// A bind or configuration error, naming the address or setting.
    ///
    /// # Examples
    /// ```
    /// use mioraft::server::LocalCluster;
    /// use mioraft::{Client, KvStateMachine, MemLog, Role, ServerId};
    /// use std::time::Duration;
    ///
    /// let mut cluster = LocalCluster::spawn(1, |_| MemLog::new(), |_| KvStateMachine::new(), |b| b)?;
    /// cluster.wait_for_leader(Duration::from_secs(10))?;
    /// let address = cluster.spawn_joining(ServerId(2), MemLog::new(), KvStateMachine::new(), |b| b)?;
    /// let mut client = Client::new(cluster.addresses()).with_timeout(Duration::from_secs(10));
    /// client.add_server(ServerId(2), address)?;
    /// assert_eq!(cluster.server(ServerId(2)).unwrap().metrics().membership.voters().len(), 2);
    /// cluster.shutdown()?;
    /// # Ok::<(), mioraft::Error>(())
    /// ```
    pub fn spawn_joining<L, M>(
        &mut self,
        id: ServerId,
        log: L,
        state_machine: M,
        configure: impl FnOnce(ServerBuilder<L, M>) -> ServerBuilder<L, M>,
    ) -> Result<SocketAddr>
    where
        L: PersistentLog + Send + 'static,
        M: StateMachine,
    {
        let (address, listener) = bind_local()?;
        let builder = Server::new(id, address, log, state_machine)
            .with_listener(listener)
            .join();
        let handle = configure(builder).spawn()?;
        self.servers.push(handle);
        self.ids.push(id);
        Ok(address)
    }

    /// The running server `id`, if there is one.
    pub fn server(&self, id: ServerId) -> Option<&ServerHandle> {
        let position = self.ids.iter().position(|&running| running == id)?;
        self.servers.get(position)
    }

    /// The ids of the running servers, in the order they started.
    pub fn ids(&self) -> &[ServerId] {
        &self.ids
    }

    /// Stops server `id` and takes it out of the cluster's list (its address stays unused).
    ///
    /// # Errors
    /// The error the server stopped with; [`Error::ServerStopped`] if no server `id` runs.
    pub fn stop(&mut self, id: ServerId) -> Result<()> {
        let Some(position) = self.ids.iter().position(|&running| running == id) else {
            return Err(Error::ServerStopped(format!("{id} is not running")));
        };
        self.ids.remove(position);
        self.servers.remove(position).shutdown()
    }

    /// Every running server's client address, in the order they started (server 1 first).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(ServerHandle::local_addr).collect()
    }

    /// The running servers, in the order they started (server 1 first).
    pub fn servers(&self) -> &[ServerHandle] {
        &self.servers
    }

    /// The servers themselves, in the order they started (server 1 first), to stop or restart
    /// one at a time.
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

/// A listener on a free port of 127.0.0.1, and its address.
fn bind_local() -> Result<(SocketAddr, TcpListener)> {
    let io = |source| Error::Io {
        address: "127.0.0.1:0".to_owned(),
        source,
    };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let address = listener.local_addr().map_err(io)?;
    Ok((address, listener))
}
