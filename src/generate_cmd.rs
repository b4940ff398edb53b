//! `inferenceguard generate`: one guarded generation through a running
//! orchestrator, with a progress bar per search step.

use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::Args;
use ig_orchestrator::search::Method;
use ig_orchestrator::GuardClient;
use ig_proto::v1 as pb;
use indicatif::{ProgressBar, ProgressStyle};

/// Parses a method by its snake-case name (`inference_guard`, `base`, ...).
pub(crate) fn method_parser() -> impl clap::builder::TypedValueParser<Value = Method> {
    clap::builder::PossibleValuesParser::new(Method::ALL.map(Method::name))
        .map(|name| *Method::ALL.iter().find(|m| m.name() == name).expect("a possible value"))
}

/// Search parameters; unset ones take the server's defaults (docs/search.md).
#[derive(Debug, Clone, Args)]
pub struct SearchArgs {
    /// The search strategy.
    #[arg(long, value_parser = method_parser(), default_value = "inference_guard")]
    pub method: Method,
    /// Candidates per step [N] (Best-of-N: samples).
    #[arg(long)]
    pub samples: Option<i32>,
    /// Beams kept per step [K] (default N/4).
    #[arg(long)]
    pub beam_width: Option<i32>,
    /// Tokens per chunk [d].
    #[arg(long)]
    pub chunk_tokens: Option<i32>,
    /// Most response tokens [D].
    #[arg(long)]
    pub max_new_tokens: Option<i32>,
    /// Most resampling rounds per step [M].
    #[arg(long)]
    pub max_resamples: Option<i32>,
    /// Safety budget B: safe when cost <= B.
    #[arg(long)]
    pub budget: Option<f64>,
    /// Softmax temperature.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Seed of the draws.
    #[arg(long)]
    pub seed: Option<i64>,
    /// Cost model by registry name (default: the registry's).
    #[arg(long, default_value = "")]
    pub cost_model: String,
    /// Reward model by registry name (default: the registry's).
    #[arg(long, default_value = "")]
    pub reward_model: String,
}

impl SearchArgs {
    pub fn request(&self, prompt: &str) -> pb::GenerateStreamRequest {
        pb::GenerateStreamRequest {
            prompt: Some(pb::generate_stream_request::Prompt::PromptText(prompt.to_string())),
            method: ig_orchestrator::guard::wire_method(self.method) as i32,
            params: Some(pb::SearchParams {
                samples_count: self.samples,
                beam_width: self.beam_width,
                chunk_tokens: self.chunk_tokens,
                max_new_tokens: self.max_new_tokens,
                max_resamples: self.max_resamples,
                safety_budget: self.budget,
                temperature: self.temperature,
                top_p: self.top_p,
                seed: self.seed,
                ..Default::default()
            }),
            cost_model: self.cost_model.clone(),
            reward_model: self.reward_model.clone(),
            ..Default::default()
        }
    }
}

/// How the command line reaches a secured orchestrator: its CA (https:// endpoints), a
/// client certificate where the orchestrator asks for one, and a bearer token.
#[derive(Debug, Clone, Args)]
pub struct GuardAccess {
    /// Bearer token for an orchestrator started with --auth-tokens.
    #[arg(long, env = "IG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub tls: ig_serve::tls::ClientTlsArgs,
}

impl GuardAccess {
    /// A client of the orchestrator at `endpoint` with this access.
    pub fn client(&self, endpoint: &str) -> anyhow::Result<GuardClient> {
        let tls = ig_serve::tls::ClientTls::from_args(&self.tls)?;
        let client = GuardClient::connect_lazy(endpoint, tls.as_ref()).map_err(|e| anyhow::anyhow!("--guard {e}"))?;
        match &self.token {
            None => Ok(client),
            Some(t) if t.trim().is_empty() => anyhow::bail!("--token: must not be empty"),
            Some(t) => Ok(client.with_token(t)?),
        }
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The user's message.
    pub prompt: String,
    /// Orchestrator endpoint (https:// with --tls-ca).
    #[arg(long, env = "IG_GUARD", default_value = "http://127.0.0.1:50050")]
    pub guard: String,
    #[command(flatten)]
    pub access: GuardAccess,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Deadline of the request, in seconds.
    #[arg(long, default_value_t = 600.0)]
    pub timeout_seconds: f64,
}

pub async fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let client = args.access.client(&args.guard)?;
    client.wait_ready(Duration::from_secs(10)).await.map_err(|e| anyhow::anyhow!("--guard {}: {e}; is `inferenceguard up` running?", args.guard))?;
    let timeout = Duration::try_from_secs_f64(args.timeout_seconds).map_err(|_| anyhow::anyhow!("--timeout-seconds: must be >= 0"))?;
    let result = generate_with_progress(&client, &args.prompt, &args.search, timeout).await?;
    print_result(&result);
    Ok(())
}

/// Runs one generation with a progress bar over its steps.
pub async fn generate_with_progress(
    client: &GuardClient,
    prompt: &str,
    search: &SearchArgs,
    timeout: Duration,
) -> anyhow::Result<pb::GenerationResult> {
    let method = search.method;
    let max_new = search.max_new_tokens.unwrap_or(128).max(1) as u64;
    let steps = if method.is_chunked() { max_new.div_ceil(search.chunk_tokens.unwrap_or(32).max(1) as u64) } else { max_new };
    let bar = ProgressBar::new(steps).with_style(
        ProgressStyle::with_template("{prefix:>16} [{bar:30}] step {pos}/{len} {elapsed} {msg}")?.progress_chars("=> "),
    );
    bar.set_prefix(method.name());
    let result = client
        .generate_stream(search.request(prompt), Some(timeout), |s| {
            bar.set_position(s.step_index as u64 + 1);
            let mut msg = format!("{} candidates", s.candidate_count);
            if let Some(f) = s.safe_fraction {
                msg += &format!(", {:.0}% safe", f * 100.0);
            }
            if s.resample_round_count > 0 {
                msg += &format!(", {} resample round(s)", s.resample_round_count);
            }
            bar.set_message(msg);
        })
        .await;
    bar.finish_and_clear();
    Ok(result?)
}

pub fn print_result(r: &pb::GenerationResult) {
    println!("{}", r.text.trim());
    println!();
    let t = r.timings.unwrap_or_default();
    let s = |ns: i64| ns as f64 / 1e9;
    println!(
        "{}  reward {:.3}  cost {:.3}  z {:.3}  min_z {:.3}  | {} steps, {} candidates, {} resample rounds, {} tokens generated",
        if r.safe { "SAFE" } else { "UNSAFE" },
        r.reward,
        r.cost,
        r.z,
        r.min_z,
        r.step_count,
        r.candidate_count,
        r.resample_round_count,
        r.generated_token_count
    );
    let critic = if t.critic_ns > 0 { format!(", critic {:.1}s", s(t.critic_ns)) } else { String::new() };
    println!(
        "time {:.1}s (policy {:.1}s, cost {:.1}s, reward {:.1}s{critic})",
        s(t.total_ns),
        s(t.policy_ns),
        s(t.cost_ns),
        s(t.reward_ns)
    );
}
