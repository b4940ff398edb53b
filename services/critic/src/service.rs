//! `inferenceguard.v1.CriticService` over a [`CriticBackend`]: validation,
//! then one job on the model thread per call, then conversion.

use std::time::Instant;

use ig_core::critic::{CriticBackend, CriticInfo, CriticLimits, CriticObjective};
use ig_core::policy::WorkControl;
use ig_core::RoleError;
use ig_proto::v1 as pb;
use ig_proto::v1::critic_service_server::CriticService;
use ig_serve::{deadline_of, within_deadline, Engine};
use tokio::sync::{oneshot, OnceCell};
use tonic::{Request, Response, Status};

use crate::error::CriticError;
use crate::validate::{self, ValidBatch};

/// Name of the service in `grpc.health.v1`.
pub const SERVICE_NAME: &str = "inferenceguard.v1.CriticService";

/// The critic's gRPC face.
pub struct CriticServer<B: CriticBackend> {
    engine: Engine<B>,
    limits: CriticLimits,
    info: OnceCell<CriticInfo>,
}

fn objective(o: CriticObjective) -> pb::CriticObjective {
    match o {
        CriticObjective::Augmented => pb::CriticObjective::Augmented,
        CriticObjective::Lagrangian => pb::CriticObjective::Lagrangian,
        CriticObjective::Reward => pb::CriticObjective::Reward,
    }
}

fn wire_int(n: usize) -> i32 {
    n.min(i32::MAX as usize) as i32
}

impl<B: CriticBackend> CriticServer<B> {
    /// Serves the critic behind `engine` within `limits`.
    pub fn new(engine: Engine<B>, limits: CriticLimits) -> Self {
        Self { engine, limits, info: OnceCell::new() }
    }

    async fn info(&self) -> Result<&CriticInfo, Status> {
        self.info
            .get_or_try_init(|| async {
                self.engine.ready().await?;
                self.engine.call(|b, _| b.info()).await
            })
            .await
            .map_err(|e| CriticError::Role(e).into())
    }

    /// The checks every call shares: the policy, then the items.
    async fn batch(&self, policy_model_id: &str, items: &[pb::CriticItem]) -> Result<ValidBatch, Status> {
        let info = self.info().await?;
        validate::policy(policy_model_id, &info.policy_model_id)?;
        Ok(validate::items(items, info.latent_dim, &self.limits)?)
    }

    /// Runs `job` on the model thread until `deadline`; the job returns its
    /// output and the passes it made. A caller that leaves (or a deadline
    /// that passes) stops an ascent at its next step.
    async fn run<R, F>(&self, deadline: Option<Instant>, job: F) -> Result<(R, pb::CriticStats), Status>
    where
        R: Send + 'static,
        F: FnOnce(&mut B, &WorkControl<'_>) -> Result<(R, u64), RoleError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.engine
            .submit(move |backend, queued| {
                let started = Instant::now();
                let result = {
                    let gone = || tx.is_closed();
                    job(backend, &WorkControl::new(deadline, &gone))
                };
                let stats = |passes: u64| pb::CriticStats {
                    pass_count: passes as i64,
                    compute_ns: started.elapsed().as_nanos() as i64,
                    queue_ns: queued.as_nanos() as i64,
                };
                let _ = tx.send(result.map(|(out, passes)| (out, stats(passes))));
            })
            .map_err(CriticError::Role)?;
        within_deadline(deadline, async {
            let result = rx.await.map_err(|_| CriticError::Role(RoleError::Internal("the model thread dropped the request".into())))?;
            Ok(result.map_err(CriticError::Role)?)
        })
        .await
    }
}

fn record(rpc: &'static str, items: usize, stats: &pb::CriticStats) {
    metrics::counter!("ig_critic_items_total", "rpc" => rpc).increment(items as u64);
    metrics::histogram!("ig_critic_compute_seconds", "rpc" => rpc).record(stats.compute_ns as f64 * 1e-9);
    metrics::histogram!("ig_critic_queue_seconds", "rpc" => rpc).record(stats.queue_ns as f64 * 1e-9);
}

#[tonic::async_trait]
impl<B: CriticBackend> CriticService for CriticServer<B> {
    async fn info(&self, _req: Request<pb::CriticInfoRequest>) -> Result<Response<pb::CriticInfoResponse>, Status> {
        let i = self.info().await?;
        let l = &self.limits;
        Ok(Response::new(pb::CriticInfoResponse {
            model_id: i.model_id.clone(),
            policy_model_id: i.policy_model_id.clone(),
            latent_dim: wire_int(i.latent_dim),
            z_scale: i.z_scale,
            hidden_width: wire_int(i.hidden_width),
            objective: objective(i.objective) as i32,
            safety_budget: i.safety_budget,
            training_penalty: i.training_penalty,
            lagrange_lambda: i.lagrange_lambda,
            discount: i.discount,
            provenance: i.provenance.clone(),
            weight_dtype: i.weight_dtype.clone(),
            device: i.device.clone(),
            limits: Some(pb::CriticLimits {
                max_items: wire_int(l.max_items),
                max_ascent_steps: wire_int(l.max_ascent_steps),
                max_message_bytes: wire_int(l.max_message_bytes),
            }),
            server_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn evaluate(&self, req: Request<pb::EvaluateRequest>) -> Result<Response<pb::EvaluateResponse>, Status> {
        let deadline = deadline_of(req.metadata());
        let req = req.into_inner();
        let batch = self.batch(&req.policy_model_id, &req.items).await?;
        let n = batch.len();
        let (values, stats) = self.run(deadline, move |b, control| Ok((b.evaluate(&batch.latents, &batch.z, control)?, 1))).await?;
        record("evaluate", n, &stats);
        Ok(Response::new(pb::EvaluateResponse { values, stats: Some(stats) }))
    }

    async fn gradient(&self, req: Request<pb::GradientRequest>) -> Result<Response<pb::GradientResponse>, Status> {
        let deadline = deadline_of(req.metadata());
        let req = req.into_inner();
        let batch = self.batch(&req.policy_model_id, &req.items).await?;
        let n = batch.len();
        let (grads, stats) = self.run(deadline, move |b, control| Ok((b.gradient(&batch.latents, &batch.z, control)?, 1))).await?;
        record("gradient", n, &stats);
        let gradients = grads
            .into_iter()
            .map(|g| pb::CriticGradient { value: g.value, latent_gradient: Some(pb::Latent { values: g.d_latent }), z_gradient: g.d_z })
            .collect();
        Ok(Response::new(pb::GradientResponse { gradients, stats: Some(stats) }))
    }

    async fn ascend(&self, req: Request<pb::AscendRequest>) -> Result<Response<pb::AscendResponse>, Status> {
        let deadline = deadline_of(req.metadata());
        let req = req.into_inner();
        let info = self.info().await?;
        validate::policy(&req.policy_model_id, &info.policy_model_id)?;
        validate::item_count(req.items.len(), &self.limits)?;
        let steps = validate::ascent(req.steps, req.step_size, &self.limits)?;
        let batch = validate::items(&req.items, info.latent_dim, &self.limits)?;
        let (n, step_size) = (batch.len(), req.step_size);
        let (moved, stats) = self
            .run(deadline, move |b, control| Ok((b.ascend(&batch.latents, &batch.z, steps, step_size, control)?, steps as u64 + 1)))
            .await?;
        record("ascend", n, &stats);
        metrics::counter!("ig_critic_ascent_steps_total").increment((steps * n) as u64);
        let results = moved
            .into_iter()
            .map(|a| pb::AscendedLatent { latent: Some(pb::Latent { values: a.latent }), initial_value: a.initial_value, final_value: a.final_value })
            .collect();
        Ok(Response::new(pb::AscendResponse { results, stats: Some(stats) }))
    }
}
