//! The coordinator's Prometheus metrics. `distill_pending_shards` (queue depth) is what an autoscaler
//! scales workers on.

use crate::service::Coordinator;
use distill_proto::http::metric;

/// Renders the metrics page.
pub fn render(coord: &Coordinator) -> String {
    let g = coord.sched().gauges();
    let c = &g.counters;
    let mut p = String::new();
    let gauge = |p: &mut String, n: &str, h: &str, v: f64| metric(p, n, "gauge", h, v);
    let counter = |p: &mut String, n: &str, h: &str, v: f64| metric(p, n, "counter", h, v);
    gauge(
        &mut p,
        "distill_pending_shards",
        "Shards waiting for a worker (queue depth), over running jobs.",
        g.pending_shards as f64,
    );
    gauge(
        &mut p,
        "distill_leases_in_flight",
        "Leases held by workers.",
        g.leases_in_flight as f64,
    );
    gauge(
        &mut p,
        "distill_workers",
        "Registered workers.",
        g.workers as f64,
    );
    gauge(
        &mut p,
        "distill_jobs_running",
        "Jobs not yet finished.",
        g.jobs_running as f64,
    );
    gauge(
        &mut p,
        "distill_ready",
        "1 when the store answers and jobs are loaded.",
        coord.is_ready() as u8 as f64,
    );
    counter(
        &mut p,
        "distill_leases_granted_total",
        "Leases granted.",
        c.leases_granted as f64,
    );
    counter(
        &mut p,
        "distill_shards_done_total",
        "Shards labeled and committed.",
        c.shards_done as f64,
    );
    counter(
        &mut p,
        "distill_shards_failed_total",
        "Shards failed after every attempt.",
        c.shards_failed as f64,
    );
    counter(
        &mut p,
        "distill_cache_hits_total",
        "Shards found in the cache at planning.",
        c.cache_hits as f64,
    );
    counter(
        &mut p,
        "distill_rows_total",
        "Rows labeled (rate() gives rows/s).",
        c.rows as f64,
    );
    counter(
        &mut p,
        "distill_lease_expiries_total",
        "Leases that expired without a heartbeat.",
        c.lease_expiries as f64,
    );
    counter(
        &mut p,
        "distill_retries_total",
        "Shard attempts retried.",
        c.retries as f64,
    );
    counter(
        &mut p,
        "distill_speculative_leases_total",
        "Speculative copies of tail shards.",
        c.speculative_leases as f64,
    );
    counter(
        &mut p,
        "distill_teacher_seconds_total",
        "Device-seconds of teacher forward passes reported.",
        c.teacher_seconds,
    );
    counter(
        &mut p,
        "distill_teacher_seconds_saved_total",
        "Device-seconds cache hits saved.",
        c.teacher_seconds_saved,
    );
    p
}
