//! The seam between the router and the one owner of the device.
//!
//! Inside the server, the engine's worker thread owns the device; the router hands it
//! classification work through this trait so that router batches and decode steps share one queue
//! and never race for the device. Used alone, the router runs jobs on a [`ThreadExecutor`] of its
//! own.

/// Two independent pieces of CPU work at once, each on one of the kernels' threads (see
/// [`switchyard_kernels::pool::join`]).
pub use switchyard_kernels::pool::join;

/// A unit of device work.
pub type DeviceJob = Box<dyn FnOnce() + Send + 'static>;

/// The message of a caught panic's payload (`panic!` with a literal or a formatted string), for
/// the owners of device work that contain a panic to the requests it concerns.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

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

/// An executor whose device owner is named after it is handed out: the server loads the router
/// before it starts the engines (so the memory plan sees the router's weights on the device), then
/// binds the router to the engine that owns the device. Jobs sent before [`bind`](Self::bind) are
/// refused (returned), never run elsewhere.
#[derive(Default)]
pub struct LateExecutor {
    target: std::sync::OnceLock<std::sync::Arc<dyn DeviceExecutor>>,
}

impl LateExecutor {
    /// An executor with no owner yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the device owner; returns `false` (and changes nothing) if one was already bound.
    pub fn bind(&self, owner: std::sync::Arc<dyn DeviceExecutor>) -> bool {
        self.target.set(owner).is_ok()
    }
}

impl DeviceExecutor for LateExecutor {
    fn execute(&self, job: DeviceJob) -> std::result::Result<(), DeviceJob> {
        match self.target.get() {
            Some(owner) => owner.execute(job),
            None => Err(job),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_executor_refuses_jobs_until_bound_then_forwards_them() {
        let late = LateExecutor::new();
        assert!(late.execute(Box::new(|| {})).is_err());
        let owner = std::sync::Arc::new(ThreadExecutor::start("late-owner").unwrap());
        assert!(late.bind(owner.clone()));
        assert!(!late.bind(owner));
        let (tx, rx) = flume::bounded(1);
        late.execute(Box::new(move || {
            tx.send(std::thread::current().name().map(str::to_string))
                .unwrap();
        }))
        .unwrap_or_else(|_| panic!("bound executor refused a job"));
        assert_eq!(rx.recv().unwrap().as_deref(), Some("late-owner"));
    }

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
