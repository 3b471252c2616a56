//! mioraft: a Raft consensus library.
//!
//! The heart is [`consensus::Consensus`], a networking-free Raft state machine: it takes events
//! (messages, proposals, timeouts) and returns [`consensus::Actions`]. Durable state goes through
//! a [`PersistentLog`] (in memory: [`MemLog`]); committed commands go to the application's
//! [`StateMachine`]. Because the core has no I/O, clock or threads, whole clusters run in one
//! thread under the deterministic simulator in [`sim`].
//!
//! # A three-server cluster in the simulator
//! ```
//! use mioraft::sim::{SimConfig, Simulation};
//!
//! let mut simulation = Simulation::new(SimConfig::quiet(3), 42);
//! let leader = simulation.run_until_leader()?;
//! let index = simulation.propose_and_wait(leader, b"put greeting hello")?;
//! simulation.run_until_applied_everywhere(index)?;
//! let node = simulation.node(leader).expect("running");
//! assert_eq!(node.state_machine().get("greeting"), Some("hello"));
//! # Ok::<(), mioraft::sim::SimFailure>(())
//! ```
//!
//! # Your own state machine
//! Implement [`StateMachine`]: `apply` must be deterministic, because every server applies the
//! same commands in the same order and must reach the same state.
//!
//! # Your own storage
//! Implement [`PersistentLog`] and run the shared suite against it with
//! [`persistent_log_conformance!`].

#![deny(missing_docs)]

pub mod consensus;
pub mod error;
pub mod log;
pub mod sim;
pub mod state_machine;
pub mod types;

pub use consensus::{Consensus, Role};
pub use error::{ConfigError, Error, LogError, Result};
pub use log::{Entry, EntryKind, MemLog, PersistentLog};
pub use state_machine::{KvStateMachine, NullStateMachine, StateMachine};
pub use types::{LogIndex, ServerId, Term};
