//! `distill bench coordinator`: flags onto [`distill_bench::coordinator::CoordBenchSpec`], the
//! coordinator process started as `distill bench coordinator-server`, the figures printed.

use clap::Args;
use distill_bench::coordinator::CoordBenchSpec;

#[derive(Debug, Args)]
pub struct CoordBenchArgs {
    /// Simulated workers (one connection each).
    #[arg(long, default_value_t = 1000)]
    pub workers: usize,
    /// Shards of the job.
    #[arg(long, default_value_t = 1_000_000)]
    pub shards: u64,
    /// Stop after this many seconds of leasing even if shards remain.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Seconds at the start whose cycles are not counted (connections and maps warming up).
    #[arg(long, default_value_t = 2.0)]
    pub warmup_seconds: f64,
    /// HTTP/2 connections the simulated workers share (default: one each, as separate processes have).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Offered load: lease+complete cycles per second over all workers, each worker pacing itself as
    /// a real one does between shards (0: every worker cycles back to back, to find saturation).
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// Print the figures as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CoordServerArgs {
    #[arg(long)]
    pub shards: u64,
}

impl CoordBenchArgs {
    fn spec(&self) -> CoordBenchSpec {
        CoordBenchSpec {
            workers: self.workers,
            shards: self.shards,
            seconds: self.seconds,
            warmup_seconds: self.warmup_seconds,
            connections: self.connections,
            rate: self.rate,
        }
    }
}

/// The hidden server half.
pub async fn server(args: CoordServerArgs) -> anyhow::Result<()> {
    distill_bench::coordinator::server(args.shards).await
}

pub async fn run(args: CoordBenchArgs) -> anyhow::Result<()> {
    let mut server = std::process::Command::new(std::env::current_exe()?);
    server.args([
        "bench",
        "coordinator-server",
        "--shards",
        &args.shards.to_string(),
    ]);
    let figures = distill_bench::coordinator::run(&args.spec(), server).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        let f = &figures;
        let offered = if f.offered_cycles_per_second > 0.0 {
            format!("offered {:.0} cycles/s", f.offered_cycles_per_second)
        } else {
            "back to back".to_owned()
        };
        println!(
            "{} workers on {} connections, {} shards, {offered}: {} lease+complete cycles in {:.1} s = {:.0} cycles/s",
            f.workers, f.connections, f.shards, f.cycles, f.seconds, f.cycles_per_second
        );
        println!(
            "  cycle latency p50 {:.2} ms, p99 {:.2} ms (lease p99 {:.2} ms, complete p99 {:.2} ms)",
            f.cycle_p50_ms, f.cycle_p99_ms, f.lease_p99_ms, f.complete_p99_ms
        );
        println!(
            "  coordinator CPU {:.2} cores of the machine's 2 (shared with the simulated workers)",
            f.coordinator_cpu_cores
        );
        println!(
            "  coordinator peak RSS {:.0} MiB (setup: planning {} shards and {} connections in {:.1} s)",
            f.coordinator_peak_rss_mib, f.shards, f.workers, f.setup_seconds
        );
    }
    Ok(())
}
