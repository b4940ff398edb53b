//! The model thread: one OS thread owns a backend; callers queue jobs.
//!
//! The queue is bounded: when it is full a call fails at once with
//! [`RoleError::Overloaded`] (admission control) instead of waiting. A job
//! that panics is contained: its caller gets an internal error and the thread
//! goes on with the next job.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use ig_core::RoleError;
use tokio::sync::{oneshot, watch};

/// Where the model thread is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineState {
    /// Loading and warming up the model.
    Loading,
    /// Serving requests.
    Ready,
    /// The model failed to load; the message says why.
    Failed(String),
}

type Job<B> = Box<dyn FnOnce(&mut B) + Send>;

/// Handle to a model thread owning a backend of type `B`. Cheap to clone.
pub struct Engine<B> {
    jobs: SyncSender<Job<B>>,
    state: watch::Receiver<EngineState>,
}

impl<B> Clone for Engine<B> {
    fn clone(&self) -> Self {
        Self { jobs: self.jobs.clone(), state: self.state.clone() }
    }
}

impl<B: 'static> Engine<B> {
    /// Starts the thread: it runs `load` (loading and warming up the model),
    /// then serves jobs in order. At most `queue_depth` jobs wait.
    pub fn spawn<F>(name: &str, queue_depth: usize, load: F) -> std::io::Result<Self>
    where
        F: FnOnce() -> Result<B, RoleError> + Send + 'static,
    {
        let (jobs, rx) = sync_channel::<Job<B>>(queue_depth.max(1));
        let (state_tx, state) = watch::channel(EngineState::Loading);
        std::thread::Builder::new().name(format!("{name}-model")).spawn(move || {
            let started = Instant::now();
            let mut backend = match std::panic::catch_unwind(AssertUnwindSafe(load)) {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "model failed to load");
                    let _ = state_tx.send(EngineState::Failed(e.to_string()));
                    return;
                }
                Err(_) => {
                    let _ = state_tx.send(EngineState::Failed("model loading panicked".into()));
                    return;
                }
            };
            tracing::info!(seconds = started.elapsed().as_secs_f64(), "model loaded and warmed up");
            let _ = state_tx.send(EngineState::Ready);
            while let Ok(job) = rx.recv() {
                if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut backend))).is_err() {
                    tracing::error!("a job panicked on the model thread; its caller gets an internal error");
                }
            }
        })?;
        Ok(Self { jobs, state })
    }

    /// The thread's current state.
    pub fn state(&self) -> EngineState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change (for health reporting).
    pub fn watch_state(&self) -> watch::Receiver<EngineState> {
        self.state.clone()
    }

    /// Waits until the model is ready (or failed to load).
    pub async fn ready(&self) -> Result<(), RoleError> {
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| *s != EngineState::Loading)
            .await
            .map_err(|_| RoleError::Unavailable("the model thread stopped while loading".into()))?
            .clone();
        match state {
            EngineState::Failed(m) => Err(RoleError::Unavailable(format!("the model failed to load: {m}"))),
            _ => Ok(()),
        }
    }

    /// Queues `job` without waiting for it; the job reports through its own
    /// channels (streaming). The job receives how long it waited in the queue.
    pub fn submit<F>(&self, job: F) -> Result<(), RoleError>
    where
        F: FnOnce(&mut B, Duration) + Send + 'static,
    {
        match &*self.state.borrow() {
            EngineState::Ready => {}
            EngineState::Loading => return Err(RoleError::Unavailable("the model is still loading".into())),
            EngineState::Failed(m) => return Err(RoleError::Unavailable(format!("the model failed to load: {m}"))),
        }
        let enqueued = Instant::now();
        let span = tracing::Span::current();
        let job: Job<B> = Box::new(move |b: &mut B| {
            let _entered = span.enter();
            job(b, enqueued.elapsed())
        });
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => RoleError::Overloaded("the model's request queue is full; retry later or elsewhere".into()),
            TrySendError::Disconnected(_) => RoleError::Unavailable("the model thread stopped".into()),
        })
    }

    /// Runs `job` on the model thread and returns its result.
    pub async fn call<R, F>(&self, job: F) -> Result<R, RoleError>
    where
        R: Send + 'static,
        F: FnOnce(&mut B, Duration) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.submit(move |b, queued| {
            let _ = tx.send(job(b, queued));
        })?;
        rx.await.map_err(|_| RoleError::Internal("the model thread dropped the request (a bug; see its log)".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_in_order_and_survives_a_panic() {
        let engine = Engine::spawn("test", 4, || Ok(Vec::<u32>::new())).unwrap();
        engine.ready().await.unwrap();
        engine.call(|v, _| v.push(1)).await.unwrap();
        let panicked = engine.call(|_v: &mut Vec<u32>, _| -> u32 { panic!("boom") }).await;
        assert!(matches!(panicked, Err(RoleError::Internal(_))));
        let seen = engine.call(|v, _| { v.push(2); v.clone() }).await.unwrap();
        assert_eq!(seen, vec![1, 2]);
    }

    #[tokio::test]
    async fn a_full_queue_is_overloaded_and_a_failed_load_is_unavailable() {
        let engine = Engine::spawn("test", 1, || Ok(())).unwrap();
        engine.ready().await.unwrap();
        let (block_tx, block_rx) = std::sync::mpsc::channel::<()>();
        engine.submit(move |_, _| { let _ = block_rx.recv(); }).unwrap(); // occupies the thread
        // One of the next two fills the single queue slot, the other is refused.
        let mut refused = 0;
        for _ in 0..3 {
            if let Err(RoleError::Overloaded(_)) = engine.submit(|_, _| {}) {
                refused += 1;
            }
        }
        assert!(refused >= 1);
        block_tx.send(()).unwrap();

        let failed: Engine<()> = Engine::spawn("test", 1, || Err(RoleError::Internal("no weights".into()))).unwrap();
        assert!(matches!(failed.ready().await, Err(RoleError::Unavailable(m)) if m.contains("no weights")));
    }
}
