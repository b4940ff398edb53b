//! `inferenceguard score`: score one (prompt, response) pair with a running scorer.

use std::time::Duration;

use clap::Args;
use ig_orchestrator::ScorerClient;
use ig_proto::v1 as pb;

#[derive(Debug, Clone, Args)]
pub struct ScoreArgs {
    /// The user's prompt.
    #[arg(long)]
    pub prompt: String,
    /// The response to score.
    #[arg(long)]
    pub response: String,
    /// Scorer endpoint (the cost model listens on 50052 and the reward model on 50053 under `up`).
    #[arg(long, env = "IG_SCORER", default_value = "http://127.0.0.1:50052")]
    pub scorer: String,
    /// TLS towards an https:// scorer (mTLS: the client certificate the role requires).
    #[command(flatten)]
    pub tls: ig_serve::tls::ClientTlsArgs,
}

pub async fn run(args: ScoreArgs) -> anyhow::Result<()> {
    let tls = ig_serve::tls::ClientTls::from_args(&args.tls)?;
    let client = ScorerClient::connect_lazy(&args.scorer, tls.as_ref())?;
    client.wait_ready(Duration::from_secs(30)).await?;
    let info = client.info().await?;
    let score = client.score(&[(args.prompt.as_str(), args.response.as_str())]).await?[0];
    let role = pb::ScorerRole::try_from(info.role).unwrap_or(pb::ScorerRole::Unspecified);
    let verdict = match role {
        pb::ScorerRole::Cost if score > 0.0 => " (unsafe: cost > 0)",
        pb::ScorerRole::Cost => " (safe: cost <= 0)",
        _ => "",
    };
    let name = role.as_str_name().trim_start_matches("SCORER_ROLE_").to_lowercase();
    println!("{name} = {score:.4}{verdict}   [{}: {}]", info.model_id, info.score_description);
    Ok(())
}
