//! Continuous batching of chunk extensions on the model thread.
//!
//! Extensions wait in a queue; a driver job on the model thread admits them
//! between forward passes and advances every admitted run by one token per
//! pass ([`PolicyBackend::step_extends`]), so the candidates of concurrent
//! requests share every matmul and a request that arrives mid-chunk joins at
//! the next step instead of waiting for the chunk to end. The driver leaves
//! the thread when nothing is in flight, so other jobs (top-k, info) run.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ig_core::policy::{Candidate, ExtendRequest, ExtendRun, ExtendStats, PolicyBackend};
use ig_core::RoleError;
use ig_serve::engine::Heartbeat;
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
            let mut p = lock(&self.pending);
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
            let (pending, budget, heartbeat) = (self.pending.clone(), self.budget, self.engine.heartbeat());
            if let Err(e) = self.engine.submit(move |backend, _| drive(backend, &pending, budget, &heartbeat)) {
                fail_waiting(&self.pending, &e);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// The queue's lock. A panic never happens while it is held (sinks run outside it), but
/// should one poison it, the queue itself is still consistent: keep serving.
fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks the queue undriven and fails every extension waiting in it, outside the lock: a
/// sink must never run under it.
fn fail_waiting(pending: &Mutex<Pending>, error: &RoleError) {
    let waiting: Vec<Queued> = {
        let mut p = lock(pending);
        p.driving = false;
        p.jobs.drain(..).collect()
    };
    for q in waiting {
        q.job.sink.done(Err(error.clone()));
    }
}

/// Ends a driver however it leaves the model thread. On a panic (caught by the engine,
/// which fails that job's caller) the queue must not stay marked as driven, or no
/// extension would ever start again; the runs in flight are dropped with it and their
/// sinks end their streams with an error.
struct DriverExit<'a> {
    pending: &'a Mutex<Pending>,
}

impl Drop for DriverExit<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the batch driver panicked; its runs fail and the next extension starts a new driver");
            fail_waiting(self.pending, &RoleError::Internal("the model thread failed while this extension waited".into()));
        }
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

/// The driver: runs on the model thread until nothing is queued or in flight, beating the
/// engine's heartbeat after every forward pass (its progress, for the stall watchdog).
fn drive<B: PolicyBackend>(backend: &mut B, pending: &Mutex<Pending>, budget: Budget, heartbeat: &Heartbeat) {
    let mut active: Vec<Active<B::Run>> = Vec::new();
    // Declared after `active`, so dropped before it: on a panic the queue is marked undriven
    // before the runs' sinks tell their callers, so a caller that submits again at once starts
    // a new driver instead of waiting in a queue about to be failed.
    let _exit = DriverExit { pending };
    loop {
        // Admit what fits; the first job is admitted whatever its size.
        loop {
            let rows: usize = active.iter().map(|a| a.run.fed_rows()).sum();
            let kv_bytes: usize = active.iter().map(|a| a.job.kv_bytes).sum();
            let next = {
                let mut p = lock(pending);
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
            let begun = backend.begin_extend(&job.request);
            heartbeat.beat();
            match begun {
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
        metrics::histogram!("ig_policy_batch_rows").record(active.iter().map(|a| a.run.fed_rows()).sum::<usize>() as f64);
        metrics::histogram!("ig_policy_batch_requests").record(active.len() as f64);
        let mut runs: Vec<&mut B::Run> = active.iter_mut().map(|a| &mut a.run).collect();
        let stepped = backend.step_extends(&mut runs);
        heartbeat.beat();
        if let Err(e) = stepped {
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

#[cfg(test)]
mod tests {
    //! Fault injection into the batcher with a backend that counts tokens instead of
    //! running a model: the failure paths, not the model, are under test.

    use std::sync::mpsc::{channel, Receiver, Sender};

    use ig_core::policy::{
        DecodedToken, LatentDecodeRequest, NextTokens, PolicyInfo, PrefixSpec, Sampling, TextCodec, TopKRequest, WorkControl,
    };

    use super::*;

    struct Countdown(usize);

    impl ExtendRun for Countdown {
        fn is_done(&self) -> bool {
            self.0 == 0
        }
        fn take_finished(&mut self) -> Vec<Candidate> {
            vec![]
        }
        fn stats(&self) -> ExtendStats {
            ExtendStats::default()
        }
        fn fed_rows(&self) -> usize {
            1
        }
    }

    /// Panics in the forward passes it is told to.
    struct FaultyBackend {
        panics_left: usize,
    }

    impl PolicyBackend for FaultyBackend {
        type Run = Countdown;
        fn info(&self) -> PolicyInfo {
            unreachable!("the batcher never asks")
        }
        fn codec(&self) -> Arc<dyn TextCodec> {
            unreachable!("the batcher never asks")
        }
        fn warm_up(&mut self) -> Result<(), RoleError> {
            Ok(())
        }
        fn begin_extend(&mut self, request: &ExtendRequest) -> Result<Countdown, RoleError> {
            Ok(Countdown(request.chunk_tokens))
        }
        fn step_extends(&mut self, runs: &mut [&mut Countdown]) -> Result<(), RoleError> {
            if self.panics_left > 0 {
                self.panics_left -= 1;
                panic!("injected fault in a forward pass");
            }
            runs.iter_mut().for_each(|r| r.0 -= 1);
            Ok(())
        }
        fn top_k_next(&mut self, _: &TopKRequest, _: &WorkControl<'_>) -> Result<Vec<NextTokens>, RoleError> {
            unreachable!("the batcher never asks")
        }
        fn decode_from_latents(
            &mut self,
            _: &LatentDecodeRequest,
            _: &WorkControl<'_>,
        ) -> Result<(Vec<DecodedToken>, ExtendStats), RoleError> {
            unreachable!("the batcher never asks")
        }
    }

    /// Reports how its extension ended: `Ok`, the error, or "dropped" without an end.
    struct Report {
        tx: Sender<Result<(), String>>,
        ended: bool,
    }

    impl ExtendSink for Report {
        fn candidates(&mut self, _: Vec<Candidate>) {}
        fn done(mut self: Box<Self>, result: Result<(ExtendStats, Duration), RoleError>) {
            self.ended = true;
            let _ = self.tx.send(result.map(|_| ()).map_err(|e| e.to_string()));
        }
        fn gone(&self) -> bool {
            false
        }
    }

    impl Drop for Report {
        fn drop(&mut self) {
            if !self.ended {
                let _ = self.tx.send(Err("dropped".into()));
            }
        }
    }

    fn job(tokens: usize) -> (ExtendJob, Receiver<Result<(), String>>) {
        let (tx, rx) = channel();
        let request = ExtendRequest {
            prefixes: vec![PrefixSpec { token_ids: vec![1], children: 1, logit_biases: vec![], seed: None }],
            chunk_tokens: tokens,
            sampling: Sampling::default(),
            stop_token_ids: vec![],
            max_sequence_tokens: 64,
            with_latents: false,
        };
        (ExtendJob { request, kv_bytes: 0, deadline: None, sink: Box::new(Report { tx, ended: false }) }, rx)
    }

    fn engine(panics: usize, queue_depth: usize) -> Engine<FaultyBackend> {
        let engine = Engine::spawn("batcher-test", queue_depth, move || Ok(FaultyBackend { panics_left: panics })).unwrap();
        // Returns once a probe job has run: the thread is up and its queue empty.
        let started = Instant::now();
        loop {
            let (ran, probe) = channel();
            if engine.submit(move |_, _| { let _ = ran.send(()); }).is_ok() {
                probe.recv_timeout(WAIT).unwrap();
                return engine;
            }
            assert!(started.elapsed() < WAIT, "the test engine did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn a_panicking_forward_pass_fails_its_runs_and_the_next_extension_still_runs() {
        let batcher = Batcher::new(engine(1, 8), 8, 64, usize::MAX);
        let (first, first_end) = job(3);
        batcher.submit(first).unwrap();
        let ended = first_end.recv_timeout(WAIT).expect("the run in the panicking pass must hear an end");
        assert!(ended.is_err(), "{ended:?}");
        // Without the driver's exit guard the queue stays marked as driven and this waits forever.
        let (second, second_end) = job(3);
        batcher.submit(second).unwrap();
        assert_eq!(second_end.recv_timeout(WAIT).expect("the next extension must run"), Ok(()));
    }

    #[test]
    fn a_full_model_queue_fails_the_waiting_extensions_and_the_batcher_recovers() {
        let engine = engine(0, 1);
        // Hold the model thread and fill its one-job queue.
        let (release, held) = channel::<()>();
        let (holding, hold_started) = channel::<()>();
        engine
            .submit(move |_, _| {
                let _ = holding.send(());
                let _ = held.recv();
            })
            .unwrap();
        hold_started.recv_timeout(WAIT).unwrap();
        engine.submit(|_, _| {}).unwrap();
        let batcher = Batcher::new(engine.clone(), 8, 64, usize::MAX);
        let (refused, refused_end) = job(2);
        let err = batcher.submit(refused).expect_err("no room for a driver");
        assert!(matches!(err, RoleError::Overloaded(_)), "{err:?}");
        assert!(refused_end.recv_timeout(WAIT).unwrap().is_err());
        release.send(()).unwrap();
        // The batcher's queue is free again and a new driver starts (the engine's filler
        // job may hold its one slot for a moment).
        let started = Instant::now();
        let next_end = loop {
            let (next, next_end) = job(2);
            match batcher.submit(next) {
                Ok(()) => break next_end,
                Err(RoleError::Overloaded(_)) if started.elapsed() < WAIT => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("{e:?}"),
            }
        };
        assert_eq!(next_end.recv_timeout(WAIT).expect("the next extension must run"), Ok(()));
    }
}
