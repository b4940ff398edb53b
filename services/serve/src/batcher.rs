//! Batching a score model's work across concurrent callers (the scorer
//! server, and the orchestrator's in-process roles, put it in front of the
//! model thread).
//!
//! Callers queue their (already validated) items; a single task takes
//! whatever has queued while the model was busy, up to `max_batch_items`, and
//! scores it in one model call. Each caller gets back exactly its own
//! results. If a merged batch fails (one caller's item, say), each caller's
//! items are scored again on their own so one bad request cannot fail others.

use std::time::{Duration, Instant};

use ig_core::policy::WorkControl;
use ig_core::scorer::{ScoreInput, ScoreOutput, ScorerBackend};
use ig_core::RoleError;
use crate::Engine;
use tokio::sync::{mpsc, oneshot};

/// Time a caller's items spent waiting and computing.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchTiming {
    /// Waiting for the model thread.
    pub queue: Duration,
    /// The model call that scored them (shared with the batch).
    pub compute: Duration,
}

type Reply = oneshot::Sender<Result<(Vec<ScoreOutput>, BatchTiming), RoleError>>;

struct Job {
    inputs: Vec<ScoreInput>,
    deadline: Option<Instant>,
    enqueued: Instant,
    reply: Reply,
}

/// Handle to the batching task. Cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    jobs: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the batching task in front of `engine`.
    pub fn start<B: ScorerBackend>(engine: Engine<B>, max_batch_items: usize, queue_depth: usize) -> Self {
        let (jobs, mut rx) = mpsc::channel::<Job>(queue_depth.max(1));
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                let mut n = batch[0].inputs.len();
                while n < max_batch_items {
                    match rx.try_recv() {
                        Ok(j) => {
                            n += j.inputs.len();
                            batch.push(j);
                        }
                        Err(_) => break,
                    }
                }
                batch.retain(|j| !j.reply.is_closed());
                if batch.is_empty() {
                    continue;
                }
                metrics::histogram!("ig_scorer_batch_items").record(n as f64);
                // The model thread owns the replies: it answers each caller.
                if let Err(e) = engine.call(move |backend, _| run_batch(backend, batch)).await {
                    tracing::error!(error = %e, "scoring batch lost");
                }
            }
        });
        Self { jobs }
    }

    /// Scores `inputs` (one caller's items), batched with other callers'.
    pub async fn score(&self, inputs: Vec<ScoreInput>, deadline: Option<Instant>) -> Result<(Vec<ScoreOutput>, BatchTiming), RoleError> {
        let (reply, rx) = oneshot::channel();
        let job = Job { inputs, deadline, enqueued: Instant::now(), reply };
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RoleError::Overloaded("the scoring queue is full; retry later or elsewhere".into()),
            mpsc::error::TrySendError::Closed(_) => RoleError::Unavailable("the scoring task stopped".into()),
        })?;
        rx.await.map_err(|_| RoleError::Unavailable("the model thread dropped the request".into()))?
    }
}

/// Scores the jobs of one batch on the model thread and answers each.
fn run_batch<B: ScorerBackend>(backend: &mut B, batch: Vec<Job>) {
    let started = Instant::now();
    let inputs: Vec<ScoreInput> = batch.iter().flat_map(|j| j.inputs.iter().cloned()).collect();
    // The batch goes on while any caller waits, until the latest deadline.
    let deadline = batch.iter().map(|j| j.deadline).try_fold(None::<Instant>, |acc, d| d.map(|d| Some(acc.map_or(d, |a| a.max(d)))));
    let deadline = deadline.flatten();
    let gone = || batch.iter().all(|j| j.reply.is_closed());
    let result = backend.score(&inputs, &WorkControl::new(deadline, &gone));
    let compute = started.elapsed();
    match result {
        Ok(outputs) => {
            let mut outputs = outputs.into_iter();
            for job in batch {
                let mine: Vec<ScoreOutput> = outputs.by_ref().take(job.inputs.len()).collect();
                let timing = BatchTiming { queue: started.duration_since(job.enqueued), compute };
                let _ = job.reply.send(Ok((mine, timing)));
            }
        }
        Err(e) if batch.len() == 1 => {
            let job = batch.into_iter().next().expect("one job");
            let _ = job.reply.send(Err(e));
        }
        Err(_) => {
            for job in batch {
                let started = Instant::now();
                let gone = || job.reply.is_closed();
                let r = backend.score(&job.inputs, &WorkControl::new(job.deadline, &gone));
                let timing = BatchTiming { queue: started.duration_since(job.enqueued), compute: started.elapsed() };
                let _ = job.reply.send(r.map(|o| (o, timing)));
            }
        }
    }
}
