//! Training progress: a bar on a terminal, a line every 10% in logs, nothing when hidden.

use crate::ngram::StepReport;
use crate::recipe::Progress;

/// The progress of one training phase (`"n-gram"`, `"mimic"`, `"distill"`, `"lm"`, `"fine-tune"`).
pub struct TrainBar {
    bar: indicatif::ProgressBar,
    lines: bool,
    smooth: f32,
    what: &'static str,
}

impl TrainBar {
    pub fn new(show: bool, what: &'static str) -> Self {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = if show && terminal {
            indicatif::ProgressBar::new(0)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{what} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {{msg}} ETA {{eta}}"
            ))
            .expect("valid template"),
        );
        Self {
            bar,
            lines: show && !terminal,
            smooth: 0.0,
            what,
        }
    }

    pub fn step(&mut self, r: StepReport) {
        if let Some((kl, best)) = r.held_out {
            let line = format!(
                "  {} epoch {}: held-out KL {kl:.4}{}",
                self.what,
                r.epoch + 1,
                if best { " (best so far: kept)" } else { "" }
            );
            match self.lines {
                true => eprintln!("{line}"),
                false => self.bar.println(line),
            }
            return;
        }
        self.smooth = if r.step == 1 {
            r.loss
        } else {
            0.95 * self.smooth + 0.05 * r.loss
        };
        self.bar.set_length(r.total);
        self.bar.set_position(r.step);
        let msg = format!(
            "epoch {} loss {:.4} lr {:.2e}",
            r.epoch + 1,
            self.smooth,
            r.lr
        );
        if self.lines && (r.step.is_multiple_of((r.total / 10).max(1)) || r.step == r.total) {
            eprintln!(
                "  {} step {}/{} ({:.0} s) {msg}",
                self.what,
                r.step,
                r.total,
                self.bar.elapsed().as_secs_f64()
            );
        }
        self.bar.set_message(msg);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for TrainBar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Progress bars for the recipes' training phases (`show`: on stderr; else nothing).
pub fn bars(show: bool) -> Progress {
    std::sync::Arc::new(move |name| {
        let mut bar = TrainBar::new(show, name);
        Box::new(move |r| bar.step(r))
    })
}
