//! `inferenceguard extend`: one chunk extension against a running policy.

use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use ig_orchestrator::{PolicyClient, ScorerClient};
use ig_proto::v1 as pb;

#[derive(Debug, Clone, Args)]
pub struct ExtendArgs {
    /// The user's message; it is rendered with the model's chat template.
    pub prompt: String,
    /// Policy endpoint.
    #[arg(long, env = "IG_POLICY", default_value = "http://127.0.0.1:50051")]
    pub policy: String,
    #[command(flatten)]
    pub sampling: SampleArgs,
    /// Also score each child with this cost scorer (e.g. http://127.0.0.1:50052).
    #[arg(long)]
    pub cost: Option<String>,
    /// Also score each child with this reward scorer (e.g. http://127.0.0.1:50053).
    #[arg(long)]
    pub reward: Option<String>,
    /// TLS towards https:// roles (mTLS: the client certificate the roles require).
    #[command(flatten)]
    pub tls: ig_serve::tls::ClientTlsArgs,
}

/// How many children to draw and how.
#[derive(Debug, Clone, Args)]
pub struct SampleArgs {
    /// Children to draw from the prompt.
    #[arg(long, default_value_t = 4)]
    pub children: i32,
    /// Tokens per child (the chunk).
    #[arg(long, default_value_t = 32)]
    pub chunk_tokens: i32,
    /// Softmax temperature (0 = greedy).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Nucleus mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed (same seed, same children).
    #[arg(long, default_value_t = 7)]
    pub seed: i64,
}

pub async fn run(args: ExtendArgs) -> anyhow::Result<()> {
    let tls = ig_serve::tls::ClientTls::from_args(&args.tls)?;
    let client = PolicyClient::connect_lazy(&args.policy, tls.as_ref())?;
    client.wait_ready(Duration::from_secs(30)).await?;
    let scorers = match (&args.cost, &args.reward) {
        (Some(c), Some(r)) => Some((ScorerClient::connect_lazy(c, tls.as_ref())?, ScorerClient::connect_lazy(r, tls.as_ref())?)),
        (None, None) => None,
        _ => anyhow::bail!("--cost and --reward go together"),
    };
    extend_and_print(&client, &args.prompt, &args.sampling, scorers.as_ref().map(|(c, r)| (c, r))).await
}

/// Renders `prompt` as a user turn, draws the children, prints them (with
/// their cost and reward when scorers are given).
pub async fn extend_and_print(
    client: &PolicyClient,
    prompt: &str,
    s: &SampleArgs,
    scorers: Option<(&ScorerClient, &ScorerClient)>,
) -> anyhow::Result<()> {
    let info = client.info().await?;
    let rendered = client
        .render_chat(vec![pb::ChatMessage { role: "user".into(), content: prompt.into() }])
        .await?;
    println!("policy: {} ({}, {}), prompt: {} tokens", info.model_id, info.weight_dtype, info.device, rendered.token_ids.len());
    println!("user: {prompt}");
    let req = pb::ExtendChunkRequest {
        prefixes: vec![pb::PrefixToExtend { token_ids: rendered.token_ids, children_count: s.children, logit_biases: vec![], seed: None }],
        chunk_tokens: s.chunk_tokens,
        sampling: Some(pb::SamplingParams {
            temperature: Some(s.temperature),
            top_p: Some(s.top_p),
            top_k: None,
            seed: Some(s.seed),
        }),
        omit_latents: false,
        ..Default::default()
    };
    let mut stream = client.extend_chunk(req).await?;
    let mut candidates = Vec::new();
    let mut stats = None;
    while let Some(msg) = stream.next().await {
        let msg = msg?;
        candidates.extend(msg.candidates);
        if msg.stats.is_some() {
            stats = msg.stats;
        }
    }
    candidates.sort_by_key(|c| c.child_index);
    let scores = match scorers {
        Some((cost, reward)) => {
            let pairs: Vec<(&str, &str)> = candidates.iter().map(|c| (prompt, c.text.as_str())).collect();
            let (c, r) = tokio::try_join!(cost.score(&pairs), reward.score(&pairs))?;
            Some((c, r))
        }
        None => None,
    };
    for (i, c) in candidates.iter().enumerate() {
        let finish = pb::FinishReason::try_from(c.finish_reason).map(|f| f.as_str_name()).unwrap_or("?");
        let latent = c.latent.as_ref().map(|l| l.values.len()).unwrap_or(0);
        println!(
            "\n--- child {} | {} tokens | log p = {:.2} | {} | latent[{}]",
            c.child_index,
            c.token_ids.len(),
            c.logprob_sum,
            finish.trim_start_matches("FINISH_REASON_").to_lowercase(),
            latent
        );
        if let Some((cost, reward)) = &scores {
            let verdict = if cost[i] > 0.0 { "UNSAFE" } else { "safe" };
            println!("    cost C = {:+.3} ({verdict}), reward R = {:+.3}", cost[i], reward[i]);
        }
        println!("{}", c.text.trim_end());
    }
    if let Some(st) = stats {
        let secs = st.compute_ns as f64 / 1e9;
        println!(
            "\n{} tokens generated in {:.2} s ({:.0} tokens/s); prefill {} tokens, {} from the prefix cache; {} forward passes; seed {}",
            st.generated_tokens,
            secs,
            st.generated_tokens as f64 / secs.max(1e-9),
            st.prefill_tokens,
            st.cached_prefix_tokens,
            st.forward_passes,
            st.seed
        );
    }
    Ok(())
}
