//! The progress bar over a labeling job (bytes or rows of the corpus), with shards/s and cache hits.

use distill_proto::v1;

/// Counts with thousands separators (`12,345`).
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A progress bar on stderr, or hidden.
pub struct Bar(indicatif::ProgressBar);

impl Bar {
    pub fn new(show: bool) -> Self {
        let target = if show {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        };
        let bar = indicatif::ProgressBar::with_draw_target(None, target);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg} ETA {eta}",
            )
            .expect("valid template"),
        );
        Self(bar)
    }

    /// A one-line state (waiting for the coordinator…).
    pub fn say(&self, m: String) {
        self.0.set_message(m);
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }

    /// Shows a job's progress and ledger.
    pub fn update(&self, job: &v1::Job) {
        let l = job.ledger.unwrap_or_default();
        self.0.set_length(l.progress_total.max(1));
        self.0.set_position(l.progress);
        let rate = if l.wall_seconds > 0.0 {
            (l.shards_labeled + l.cache_hits) as f64 / l.wall_seconds
        } else {
            0.0
        };
        self.0.set_message(format!(
            "{}/{} shards ({} cache hits, {} leased, {} failed), {rate:.1} shards/s",
            count(job.shards_done),
            count(l.shards),
            count(l.cache_hits),
            count(job.shards_leased),
            count(l.shards_failed),
        ));
    }
}
