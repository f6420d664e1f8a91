//! The process's stop signal: the first SIGTERM or SIGINT stops the controller, releases the
//! Lease and drains the webhook ([`on_signal`]).

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::info;

/// A receiver that turns `true` on the first SIGTERM or SIGINT (a spawned task listens).
pub fn on_signal() -> watch::Receiver<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    stop_rx
}

/// Resolves once `stop` is `true`.
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
