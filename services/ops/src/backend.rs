//! The two things the supervision loop needs from whatever runs the
//! components: what each looks like now, and ways to act on it.

use async_trait::async_trait;

/// What a component is doing, as its backend sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Running,
    /// Stopped (SIGSTOP / docker pause).
    Paused,
    /// Not running; the exit status in words ("exited with status 1",
    /// "killed by SIGKILL").
    Exited(String),
    /// Created or restarting, not yet running (docker).
    Starting,
}

/// Liveness as the backend's checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Passing.
    Healthy,
    /// Failed the configured number of times in a row.
    Unhealthy,
    /// Not known yet (starting, no check).
    Unknown,
}

/// One component as observed.
#[derive(Clone, Debug)]
pub struct Observed {
    pub name: String,
    pub kind: String,
    pub status: Status,
    pub health: Health,
    pub pid: Option<u32>,
    pub container_id: Option<String>,
    /// Why the last check failed, for the event's `reason`.
    pub health_detail: String,
}

/// A signal to deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGKILL / docker kill.
    Kill,
    /// SIGTERM, then SIGKILL after the grace period / docker stop.
    Stop,
    /// SIGSTOP / docker pause.
    Pause,
    /// SIGCONT / docker unpause.
    Resume,
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// "process" or "docker".
    fn name(&self) -> &'static str;
    /// Every component and its state now.
    async fn observe(&self) -> anyhow::Result<Vec<Observed>>;
    /// Starts a component that is not running.
    async fn start(&self, name: &str) -> anyhow::Result<()>;
    /// Delivers a signal. `Stop` returns once the component has exited
    /// (or was killed after the grace period).
    async fn signal(&self, name: &str, signal: Signal) -> anyhow::Result<()>;
}
