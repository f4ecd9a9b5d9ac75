//! The signal that asks a service to stop.

/// Completes on Ctrl-C or, on Unix, SIGTERM (what `docker stop` and
/// Kubernetes send), so the caller can drain work in flight before exiting.
///
/// A signal that cannot be listened for is logged and then never fires,
/// rather than stopping the service at once: the other one still works.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested; finishing work in flight");
}

#[cfg(all(test, unix))]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn sigterm_completes_the_signal() {
        let stop = signal();
        tokio::pin!(stop);
        // Poll once so the listeners are in place before SIGTERM is sent
        // (otherwise the default action would end the test process).
        tokio::select! {
            biased;
            () = &mut stop => panic!("completed before any signal"),
            () = std::future::ready(()) => {}
        }
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        // A bound on a failure, not a synchronisation: the signal is awaited.
        tokio::time::timeout(Duration::from_secs(30), stop).await.expect("SIGTERM completes the signal");
    }
}
