//! What the process backend runs: one `ComponentSpec` per child.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How the watchdog checks that a running child is alive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Check {
    /// `GET http://<addr><path>` answers 2xx.
    Http { addr: SocketAddr, path: String },
    /// `grpc.health.v1.Health/Check` for the service `""` answers SERVING.
    Grpc { addr: SocketAddr },
    /// Only whether the process runs.
    None,
}

/// One supervised child process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ComponentSpec {
    /// Unique name: `edge-1`, `links-2`, `analytics`.
    pub name: String,
    /// What it is: edge, links, admin, consumer, dashboard, backup.
    pub kind: String,
    /// The program; the running `shortlink` binary when absent.
    #[serde(default)]
    pub program: Option<PathBuf>,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment added to the watchdog's own.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The liveness check.
    #[serde(default = "no_check")]
    pub check: Check,
    /// Where Prometheus scrapes it, and under which job (file_sd).
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    #[serde(default)]
    pub job: Option<String>,
    /// Stop order at shutdown: lower stops first (edges 0: they drain
    /// before what they call stops).
    #[serde(default)]
    pub stop_order: u8,
}

fn no_check() -> Check {
    Check::None
}
