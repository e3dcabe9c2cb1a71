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
