//! Operations: the watchdog that keeps a topology running (one supervision
//! loop over two backends: OS processes for `shortlink up --ha`, Docker
//! containers for compose), its control API, the `up --ha` topology, and
//! database backups with restore.

pub mod backend;
pub mod backup;
pub mod control;
pub mod docker;
pub mod ha;
pub mod process;
pub mod spec;
pub mod supervisor;

pub use backend::{Backend, Health, Observed, Signal, Status};
pub use spec::{Check, ComponentSpec};
pub use supervisor::{Supervisor, SupervisorConfig};
