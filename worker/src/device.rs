//! The one thread that owns the device: the worker's forward passes run on it, one shard after
//! another, so the device never has two callers and its context stays on one thread, while the host's
//! work (leasing, reading and tokenizing the next shard, Parquet encoding, commits, heartbeats) runs on
//! the async runtime and the blocking pool beside it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

/// A thread running the jobs it is handed, in order; it ends when this is dropped.
#[derive(Debug)]
pub struct DeviceThread {
    jobs: mpsc::Sender<Job>,
}

impl DeviceThread {
    /// Starts the thread (named `name`, as profilers and panics show it).
    pub fn start(name: &str) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the thread after the jobs before it and waits for its result without blocking the
    /// runtime. A panic in `f` comes back as an error naming it; the thread goes on with the next job.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
        });
        self.jobs
            .send(job)
            .map_err(|_| "the device thread has stopped".to_owned())?;
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(panic)) => Err(panic_message(&panic)),
            Err(_) => Err("the device thread dropped the job".to_owned()),
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned());
    format!("panicked: {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_on_one_thread_and_a_panic_is_an_error() {
        let t = DeviceThread::start("test-device").unwrap();
        let a = t.run(|| std::thread::current().id()).await.unwrap();
        let name = t
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("test-device"));
        assert_ne!(a, std::thread::current().id());
        let err = t.run(|| -> u32 { panic!("bad shard") }).await.unwrap_err();
        assert!(err.contains("bad shard"), "{err}");
        // The thread survives the panic and is the same thread.
        assert_eq!(t.run(|| std::thread::current().id()).await.unwrap(), a);
        // Submitted together, they run one after another in submission order.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let runs: Vec<_> = (0..4)
            .map(|i| {
                let log = log.clone();
                t.run(move || log.lock().unwrap().push(i))
            })
            .collect();
        futures::future::join_all(runs).await;
        assert_eq!(*log.lock().unwrap(), vec![0, 1, 2, 3]);
    }
}
