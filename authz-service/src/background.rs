//! Background work off the Check's path: the session indexer, the SIEM exporters and the S3
//! archive run on a runtime of their own, one thread at a lower scheduling priority (nice
//! [`NICE`]). Their passes are CPU-heavy in bursts (formatting, compressing and encoding a
//! batch; indexing text): on the service's runtime such a pass holds a worker thread that
//! Checks are queued on until it yields. On its own thread the kernel preempts it instead,
//! and under contention runs the Checks first. Threads it starts (SQLite's connection
//! workers for the connections it opens) inherit the priority, so the work reads the audit
//! database through a pool of its own opened here ([`crate::audit::Store::background_pool`]),
//! never through connections a Check uses. The work takes at most one core; under a peak it
//! falls behind and catches up afterwards (nothing is lost: each keeps a durable cursor).

use std::future::Future;

/// The nice value of the background thread (0 is the service's; higher runs later).
pub const NICE: i32 = 10;

/// The background runtime's handle; the runtime stops when this is dropped.
pub struct Background {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Background {
    /// Starts the thread and its runtime.
    pub fn start() -> std::io::Result<Self> {
        let (ready, handle) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("gh-background".into())
            .spawn(move || {
                // Linux keeps a nice value per thread: this lowers this thread's (and its
                // children's) only. Where it cannot, the work still runs, at the usual priority.
                if let Err(error) = rustix::process::setpriority_process(None, NICE) {
                    tracing::warn!(%error, "Could not lower the background thread's priority.");
                }
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                let _ = ready.send(Ok(runtime.handle().clone()));
                // Until the service drops its handle; then the tasks are dropped with it.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let handle = handle
            .recv()
            .map_err(|_| std::io::Error::other("the background thread stopped at start"))??;
        Ok(Self { handle, _stop: stop })
    }

    /// Runs `task` on the background thread.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(task);
    }

    /// Runs `task` on the background thread and waits for its result (what it opens, its
    /// SQLite connection threads included, is born there).
    pub async fn run<T: Send + 'static>(&self, task: impl Future<Output = T> + Send + 'static) -> std::io::Result<T> {
        self.handle
            .spawn(task)
            .await
            .map_err(|e| std::io::Error::other(format!("a background task failed: {e}")))
    }
}
