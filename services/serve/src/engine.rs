//! The model thread: one OS thread owns a backend; callers queue jobs.
//!
//! The queue is bounded: when it is full a call fails at once with
//! [`RoleError::Overloaded`] (admission control) instead of waiting. A job
//! that panics is contained: its caller gets an internal error and the thread
//! goes on with the next job.
//!
//! A job that neither ends nor reports progress ([`Heartbeat::beat`]) for the stall
//! timeout marks the engine [`EngineState::Stalled`] ([`Engine::watch_progress`]): health
//! says NOT_SERVING and new calls fail at once with UNAVAILABLE, so clients go to another
//! replica, until the thread moves again.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Weak};
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
    /// Loaded, but the thread has made no progress for longer than the stall timeout.
    Stalled(String),
}

/// The stall watchdog's flag, shared by every role with a model thread.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchdogArgs {
    /// Seconds a model job may go without progress (a job ending, or one forward pass of
    /// the policy's batch) before health says NOT_SERVING and new calls are refused; 0 turns
    /// the watchdog off. Longer than the slowest single pass (a full prefill pass on CPU).
    #[arg(long, env = "IG_STALL_TIMEOUT_SECONDS", default_value_t = 120.0)]
    pub stall_timeout_seconds: f64,
}

impl WatchdogArgs {
    /// Starts `engine`'s watchdog with this timeout (none for 0).
    pub fn start<B: 'static>(&self, engine: &Engine<B>) -> anyhow::Result<()> {
        let after = Duration::try_from_secs_f64(self.stall_timeout_seconds)
            .map_err(|_| anyhow::anyhow!("--stall-timeout-seconds: must be a number >= 0, got {}", self.stall_timeout_seconds))?;
        if !after.is_zero() {
            engine.watch_progress(after)?;
        }
        Ok(())
    }
}

/// When the model thread last made progress. Cheap to clone.
#[derive(Clone)]
pub struct Heartbeat(Arc<Beats>);

struct Beats {
    origin: Instant,
    /// Milliseconds since `origin` (plus one) of the last progress of the job running
    /// now; 0 while the thread is idle.
    busy_since: AtomicU64,
}

impl Heartbeat {
    fn new() -> Self {
        Self(Arc::new(Beats { origin: Instant::now(), busy_since: AtomicU64::new(0) }))
    }

    fn now(&self) -> u64 {
        self.0.origin.elapsed().as_millis() as u64 + 1
    }

    /// Called by a long job (a driver of many forward passes) after each step.
    pub fn beat(&self) {
        self.0.busy_since.store(self.now(), Ordering::Relaxed);
    }

    fn idle(&self) {
        self.0.busy_since.store(0, Ordering::Relaxed);
    }

    /// How long the running job has gone without progress (None while idle).
    fn silent_for(&self) -> Option<Duration> {
        match self.0.busy_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(self.now().saturating_sub(since))),
        }
    }
}

type Job<B> = Box<dyn FnOnce(&mut B) + Send>;

/// Handle to a model thread owning a backend of type `B`. Cheap to clone.
pub struct Engine<B> {
    name: String,
    jobs: SyncSender<Job<B>>,
    state: watch::Receiver<EngineState>,
    state_tx: Arc<watch::Sender<EngineState>>,
    heartbeat: Heartbeat,
}

impl<B> Clone for Engine<B> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            jobs: self.jobs.clone(),
            state: self.state.clone(),
            state_tx: self.state_tx.clone(),
            heartbeat: self.heartbeat.clone(),
        }
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
        let state_tx = Arc::new(state_tx);
        let heartbeat = Heartbeat::new();
        let (thread_state, thread_heartbeat) = (state_tx.clone(), heartbeat.clone());
        std::thread::Builder::new().name(format!("{name}-model")).spawn(move || {
            let (state_tx, heartbeat) = (thread_state, thread_heartbeat);
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
                heartbeat.beat();
                if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut backend))).is_err() {
                    tracing::error!("a job panicked on the model thread; its caller gets an internal error");
                }
                heartbeat.idle();
            }
        })?;
        Ok(Self { name: name.to_string(), jobs, state, state_tx, heartbeat })
    }

    /// The thread's progress clock, for jobs that run many steps.
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// Starts the stall watchdog: while a job goes `stall_after` without ending or
    /// beating, the state is [`EngineState::Stalled`]; it returns to Ready when the
    /// thread moves again. The watchdog ends with the engine.
    pub fn watch_progress(&self, stall_after: Duration) -> std::io::Result<()> {
        let beats: Weak<Beats> = Arc::downgrade(&self.heartbeat.0);
        let state_tx = Arc::downgrade(&self.state_tx);
        let period = (stall_after / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        std::thread::Builder::new().name(format!("{}-watchdog", self.name)).spawn(move || loop {
            std::thread::sleep(period);
            let (Some(beats), Some(state_tx)) = (beats.upgrade(), state_tx.upgrade()) else { return };
            let silent = Heartbeat(beats).silent_for().filter(|d| *d > stall_after);
            state_tx.send_if_modified(|state| match (&*state, silent) {
                (EngineState::Ready, Some(d)) => {
                    tracing::error!(seconds = d.as_secs_f64(), "the model thread has made no progress: health NOT_SERVING until it does");
                    metrics::counter!("ig_model_stalls_total").increment(1);
                    *state = EngineState::Stalled(format!("the model thread has made no progress for {:.0} s", d.as_secs_f64()));
                    true
                }
                (EngineState::Stalled(_), None) => {
                    tracing::info!("the model thread moves again: health SERVING");
                    *state = EngineState::Ready;
                    true
                }
                _ => false,
            });
        })?;
        Ok(())
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
            EngineState::Stalled(m) => return Err(RoleError::Unavailable(format!("{m}; retry elsewhere"))),
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

    #[tokio::test]
    async fn a_job_without_progress_marks_the_engine_stalled_until_it_moves() {
        let engine = Engine::spawn("test", 4, || Ok(())).unwrap();
        engine.ready().await.unwrap();
        engine.watch_progress(Duration::from_millis(200)).unwrap();
        let mut state = engine.watch_state();
        // A job that beats more often than the timeout is progress, however long it runs.
        let beats = engine.heartbeat();
        engine
            .call(move |_, _| {
                for _ in 0..12 {
                    std::thread::sleep(Duration::from_millis(50));
                    beats.beat();
                }
            })
            .await
            .unwrap();
        assert_eq!(engine.state(), EngineState::Ready);
        // A job stuck without beating: Stalled, and new calls are refused at once.
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        engine.submit(move |_, _| { let _ = stuck.recv(); }).unwrap();
        tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| matches!(s, EngineState::Stalled(_)))).await.unwrap().unwrap();
        assert!(matches!(engine.submit(|_, _| {}), Err(RoleError::Unavailable(m)) if m.contains("no progress")));
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| *s == EngineState::Ready)).await.unwrap().unwrap();
        engine.call(|_, _| ()).await.unwrap();
    }
}
