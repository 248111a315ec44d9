//! `distill cache ls`.

use crate::report::{bytes, count};
use clap::Args;

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Cache store: a local directory or URL.
    #[arg(long, env = "DISTILL_STORE")]
    pub store: String,
    /// Print as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn ls(args: LsArgs) -> anyhow::Result<()> {
    let loc = distill_cache::store::open(&args.store, false)?;
    distill_cache::store::probe(&loc).await?;
    let entries = distill_cache::catalog::list(&loc).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("{}: empty cache", args.store);
        return Ok(());
    }
    println!(
        "{:<14} {:<28} {:<16} {:>7} {:>10} {:>10} {:>10}  corpora",
        "teacher", "source", "output", "shards", "rows", "bytes", "device-s"
    );
    for e in entries {
        let source = e
            .teacher
            .as_ref()
            .map(|t| t.source.clone())
            .unwrap_or_else(|| "?".into());
        let source = if source.len() > 28 {
            format!("…{}", &source[source.len() - 27..])
        } else {
            source
        };
        let output = e.output.map(|o| o.describe()).unwrap_or_else(|| "?".into());
        println!(
            "{:<14} {:<28} {:<16} {:>7} {:>10} {:>10} {:>10.1}  {}",
            e.teacher_fingerprint.short(),
            source,
            output,
            count(e.shards),
            count(e.rows),
            bytes(e.bytes),
            e.device_seconds,
            e.corpora.join(", ")
        );
    }
    Ok(())
}
