//! Continuous batching of chunk extensions on the model thread.
//!
//! Extensions wait in a queue; a driver job on the model thread admits them
//! between forward passes and advances every admitted run by one token per
//! pass ([`PolicyBackend::step_extends`]), so the candidates of concurrent
//! requests share every matmul and a request that arrives mid-chunk joins at
//! the next step instead of waiting for the chunk to end. The driver leaves
//! the thread when nothing is in flight, so other jobs (top-k, info) run.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ig_core::policy::{Candidate, ExtendRequest, ExtendRun, ExtendStats, PolicyBackend};
use ig_core::RoleError;
use ig_serve::Engine;

/// What the caller of one extension hears back, on the model thread.
pub trait ExtendSink: Send + 'static {
    /// Candidates that just finished.
    fn candidates(&mut self, batch: Vec<Candidate>);
    /// The end: the work done and how long the request waited, or why it failed.
    fn done(self: Box<Self>, result: Result<(ExtendStats, Duration), RoleError>);
    /// Whether the caller has gone (the run is dropped).
    fn gone(&self) -> bool;
}

/// One queued extension.
pub struct ExtendJob {
    /// The validated request.
    pub request: ExtendRequest,
    /// Its KV cache bytes ([`ExtendRequest::kv_cache_bytes`]).
    pub kv_bytes: usize,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// Where results go.
    pub sink: Box<dyn ExtendSink>,
}

struct Queued {
    job: ExtendJob,
    enqueued: Instant,
}

#[derive(Default)]
struct Pending {
    jobs: VecDeque<Queued>,
    /// Whether a driver job is queued or running on the model thread.
    driving: bool,
}

/// Queues extensions for `engine`'s model thread. Cheap to clone.
pub struct Batcher<B> {
    engine: Engine<B>,
    pending: Arc<Mutex<Pending>>,
    queue_depth: usize,
    budget: Budget,
}

/// What one shared forward pass may hold.
#[derive(Debug, Clone, Copy)]
struct Budget {
    rows: usize,
    kv_bytes: usize,
}

impl<B> Clone for Batcher<B> {
    fn clone(&self) -> Self {
        Self { engine: self.engine.clone(), pending: self.pending.clone(), queue_depth: self.queue_depth, budget: self.budget }
    }
}

struct Active<R> {
    job: ExtendJob,
    run: R,
    started: Instant,
    queued: Duration,
}

impl<B: PolicyBackend> Batcher<B> {
    /// At most `queue_depth` extensions wait; runs are admitted while the
    /// rows of one pass stay within `max_batch_rows` and their KV caches
    /// within `max_kv_cache_bytes` (a larger request runs alone).
    pub fn new(engine: Engine<B>, queue_depth: usize, max_batch_rows: usize, max_kv_cache_bytes: usize) -> Self {
        let budget = Budget { rows: max_batch_rows.max(1), kv_bytes: max_kv_cache_bytes };
        Self { engine, pending: Arc::default(), queue_depth: queue_depth.max(1), budget }
    }

    /// Queues `job`; fails at once with `Overloaded` when the queue is full.
    pub fn submit(&self, job: ExtendJob) -> Result<(), RoleError> {
        let start_driver = {
            let mut p = self.pending.lock().expect("batcher lock");
            if p.jobs.len() >= self.queue_depth {
                return Err(RoleError::Overloaded(format!(
                    "{} extensions are already waiting (queue_depth); retry later or elsewhere",
                    p.jobs.len()
                )));
            }
            p.jobs.push_back(Queued { job, enqueued: Instant::now() });
            !std::mem::replace(&mut p.driving, true)
        };
        if start_driver {
            let (pending, budget) = (self.pending.clone(), self.budget);
            if let Err(e) = self.engine.submit(move |backend, _| drive(backend, &pending, budget)) {
                let mut p = self.pending.lock().expect("batcher lock");
                p.driving = false;
                for q in p.jobs.drain(..) {
                    q.job.sink.done(Err(e.clone()));
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Why a run stops before it is done, if it must.
fn stop_reason(job: &ExtendJob) -> Option<RoleError> {
    if job.sink.gone() {
        Some(RoleError::Cancelled)
    } else if job.deadline.is_some_and(|d| Instant::now() >= d) {
        Some(RoleError::DeadlineExceeded("the request's deadline".into()))
    } else {
        None
    }
}

/// The driver: runs on the model thread until nothing is queued or in flight.
fn drive<B: PolicyBackend>(backend: &mut B, pending: &Mutex<Pending>, budget: Budget) {
    let mut active: Vec<Active<B::Run>> = Vec::new();
    loop {
        // Admit what fits; the first job is admitted whatever its size.
        loop {
            let rows: usize = active.iter().map(|a| a.run.live_rows()).sum();
            let kv_bytes: usize = active.iter().map(|a| a.job.kv_bytes).sum();
            let next = {
                let mut p = pending.lock().expect("batcher lock");
                match p.jobs.front() {
                    None if active.is_empty() => {
                        // Checked under the lock that `submit` takes, so a job
                        // queued from now on starts a new driver.
                        p.driving = false;
                        return;
                    }
                    Some(q)
                        if active.is_empty()
                            || (rows + q.job.request.candidate_count() <= budget.rows
                                && kv_bytes + q.job.kv_bytes <= budget.kv_bytes) =>
                    {
                        p.jobs.pop_front()
                    }
                    _ => None,
                }
            };
            let Some(Queued { job, enqueued }) = next else { break };
            let queued = enqueued.elapsed();
            if let Some(e) = stop_reason(&job) {
                job.sink.done(Err(e));
                continue;
            }
            let started = Instant::now();
            match backend.begin_extend(&job.request) {
                Ok(run) => active.push(Active { job, run, started, queued }),
                Err(e) => job.sink.done(Err(e)),
            }
        }
        // Drop the runs whose caller left or whose deadline passed.
        let mut i = 0;
        while i < active.len() {
            match stop_reason(&active[i].job) {
                Some(e) => active.swap_remove(i).job.sink.done(Err(e)),
                None => i += 1,
            }
        }
        if active.is_empty() {
            continue;
        }
        metrics::histogram!("ig_policy_batch_rows").record(active.iter().map(|a| a.run.live_rows()).sum::<usize>() as f64);
        metrics::histogram!("ig_policy_batch_requests").record(active.len() as f64);
        let mut runs: Vec<&mut B::Run> = active.iter_mut().map(|a| &mut a.run).collect();
        if let Err(e) = backend.step_extends(&mut runs) {
            tracing::warn!(error = %e, runs = active.len(), "a shared forward pass failed; its runs fail");
            for a in active.drain(..) {
                a.job.sink.done(Err(e.clone()));
            }
            continue;
        }
        let mut i = 0;
        while i < active.len() {
            let a = &mut active[i];
            let finished = a.run.take_finished();
            if !finished.is_empty() {
                a.job.sink.candidates(finished);
            }
            if a.run.is_done() {
                let a = active.swap_remove(i);
                let stats = ExtendStats { compute: a.started.elapsed(), ..a.run.stats() };
                a.job.sink.done(Ok((stats, a.queued)));
            } else {
                i += 1;
            }
        }
    }
}
