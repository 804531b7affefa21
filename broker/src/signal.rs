//! One function for SIGINT and SIGTERM.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGINT or SIGTERM; exits at once on the
/// second, for an operator who does not want to wait for the drain.
pub async fn on_signal(token: CancellationToken) {
    wait().await;
    tracing::info!("signal received, shutting down (send another to exit at once)");
    token.cancel();
    wait().await;
    tracing::warn!("second signal, exiting now");
    std::process::exit(130);
}

#[cfg(unix)]
async fn wait() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the broker can still be stopped by kill.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait() {
    let _ = tokio::signal::ctrl_c().await;
}
