//! The seam between the router and the one owner of the device.
//!
//! Inside the server, the engine's worker thread owns the device; the router hands it
//! classification work through this trait so that router batches and decode steps share one queue
//! and never race for the device. Used alone, the router runs jobs on a [`ThreadExecutor`] of its
//! own.

/// A unit of device work.
pub type DeviceJob = Box<dyn FnOnce() + Send + 'static>;

/// Runs jobs on the thread that owns the device.
pub trait DeviceExecutor: Send + Sync {
    /// Queues `job`; returns it back if the executor has stopped.
    fn execute(&self, job: DeviceJob) -> std::result::Result<(), DeviceJob>;
}

/// An executor with a dedicated thread, for a router used without an engine.
pub struct ThreadExecutor {
    tx: flume::Sender<DeviceJob>,
}

impl ThreadExecutor {
    /// Starts the executor thread.
    pub fn start(name: &str) -> std::io::Result<Self> {
        let (tx, rx) = flume::unbounded::<DeviceJob>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                for job in rx.iter() {
                    job();
                }
            })?;
        Ok(Self { tx })
    }
}

impl DeviceExecutor for ThreadExecutor {
    fn execute(&self, job: DeviceJob) -> std::result::Result<(), DeviceJob> {
        self.tx.send(job).map_err(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_in_order_on_the_executor_thread() {
        let exec = ThreadExecutor::start("test-executor").unwrap();
        let (tx, rx) = flume::unbounded();
        for i in 0..5 {
            let tx = tx.clone();
            exec.execute(Box::new(move || {
                let name = std::thread::current().name().map(str::to_string);
                tx.send((i, name)).unwrap();
            }))
            .unwrap_or_else(|_| panic!("executor stopped"));
        }
        let got: Vec<_> = rx.iter().take(5).collect();
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        assert!(got.iter().all(|g| g.1.as_deref() == Some("test-executor")));
    }
}
