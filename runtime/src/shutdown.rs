//! Graceful shutdown: one future that completes on SIGTERM or Ctrl-C, and a
//! cloneable signal that servers and background tasks wait on.
//!
//! The signal is a `tokio_util` `CancellationToken`: `child()` gives a
//! signal that fires with its parent (or on its own), and `drop_guard()`
//! ties firing to an owner's lifetime, so a background task started for an
//! object that is dropped without being run still stops.

use tokio_util::sync::CancellationToken;
pub use tokio_util::sync::DropGuard;

/// A cloneable shutdown signal. `trigger` fires it once; every clone's
/// `wait` then completes.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A signal that has not fired yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A signal that fires when this one does, and can also be fired on its
    /// own without firing this one.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
        }
    }

    /// Fires the signal.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// True once the signal has fired.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when the signal fires.
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }

    /// A guard that fires the signal when dropped.
    pub fn drop_guard(&self) -> DropGuard {
        self.token.clone().drop_guard()
    }

    /// Fires the signal on SIGTERM or SIGINT.
    pub fn trigger_on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            os_signal().await;
            tracing::info!("shutdown signal received; draining");
            this.trigger();
        });
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn os_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Under a supervisor (`shortlink up --ha` sets `SHORTLINK_SUPERVISOR_PID`
/// in each child's environment): when the supervisor dies, even by
/// SIGKILL, this process gets SIGTERM, stops gracefully like on any other
/// SIGTERM, and exits after 30 s at the latest. The children run in their
/// own process groups (so that a Ctrl-C reaches only the supervisor,
/// which stops them in order); this is what keeps a killed supervisor from
/// leaving orphans behind. Does nothing without the variable.
pub fn exit_with_supervisor() {
    let Some(supervisor) = std::env::var("SHORTLINK_SUPERVISOR_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("supervisor-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(500));
                if std::os::unix::process::parent_id() != supervisor {
                    break;
                }
            }
            // stderr is most likely a pipe to the dead supervisor: a failed
            // write must not end this thread (eprintln! would panic).
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("shortlink: the supervisor (pid {supervisor}) is gone; shutting down\n")
                    .as_bytes(),
            );
            let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGTERM);
            std::thread::sleep(std::time::Duration::from_secs(30));
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        eprintln!("shortlink: cannot watch the supervisor: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_trigger() {
        let s = Shutdown::new();
        let c = s.clone();
        let waiter = tokio::spawn(async move { c.wait().await });
        assert!(!s.is_triggered());
        s.trigger();
        waiter.await.unwrap();
        assert!(s.is_triggered());
    }

    #[tokio::test]
    async fn a_child_fires_with_its_parent_but_not_the_other_way() {
        let parent = Shutdown::new();
        let a = parent.child();
        let b = parent.child();
        a.trigger();
        assert!(a.is_triggered());
        assert!(!parent.is_triggered() && !b.is_triggered());
        parent.trigger();
        b.wait().await;
    }

    #[tokio::test]
    async fn dropping_the_guard_fires() {
        let s = Shutdown::new();
        let guard = s.drop_guard();
        assert!(!s.is_triggered());
        drop(guard);
        s.wait().await;
    }
}
