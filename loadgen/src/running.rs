//! A load running in the background ([`Running`]): told to stop starting new work, then
//! waited for until what is in flight has ended. The HTTP load and the e2e suite's gRPC load
//! both run this way.

use std::future::Future;

use tokio::sync::watch;

/// A background load whose result is `T` (its summary).
#[derive(Debug)]
pub struct Running<T> {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<T>,
}

impl<T: Default + Send + 'static> Running<T> {
    /// Starts `load`, which stops starting new work once its receiver turns `true`.
    pub fn spawn<F>(load: impl FnOnce(watch::Receiver<bool>) -> F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (stop, rx) = watch::channel(false);
        Self {
            stop,
            task: tokio::spawn(load(rx)),
        }
    }

    /// Stops starting new work; what is in flight still completes.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops and waits for everything in flight (the default result if the load panicked).
    pub async fn finish(self) -> T {
        self.stop();
        self.task.await.unwrap_or_default()
    }
}

/// Runs `load` to its own end (its duration or count), never told to stop.
pub async fn to_the_end<T, F>(load: impl FnOnce(watch::Receiver<bool>) -> F) -> T
where
    F: Future<Output = T>,
{
    let (_stop, rx) = watch::channel(false);
    load(rx).await
}
