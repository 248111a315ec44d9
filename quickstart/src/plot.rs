//! The picture of the report: accuracy against CPU latency, one point per model, labels placed
//! where they overlap nothing.

use crate::protocol::{Summary, FIXED_C_ROW, MORE_RANDOM_ROW, MORE_SUGGESTED_ROW};

/// Rows shown in the plot: one point per model (the variants of the teacher's head are in the tables).
fn plotted(s: &Summary) -> bool {
    s.mean.latency_p50_ms > 0.0
        && ![FIXED_C_ROW, MORE_RANDOM_ROW, MORE_SUGGESTED_ROW].contains(&s.model.as_str())
}

/// Accuracy against CPU latency (log scale), one colour per task with a legend; each point's label
/// placed where it overlaps no other label or point and stays inside the picture.
pub fn plot(summary: &[Summary]) -> String {
    let (w, h) = (760.0, 460.0);
    let (left, right, top, bottom) = (64.0, 24.0, 56.0, 56.0);
    let pts: Vec<&Summary> = summary.iter().filter(|s| plotted(s)).collect();
    let lx = |v: f64| v.max(1e-3).log10();
    let (x0, x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), s| {
        (
            a.min(lx(s.mean.latency_p50_ms)),
            b.max(lx(s.mean.latency_p50_ms)),
        )
    });
    let (y0, y1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), s| {
        (a.min(s.mean.accuracy), b.max(s.mean.accuracy))
    });
    let (x0, x1) = (x0.floor(), x1.ceil().max(x0.floor() + 1.0));
    let (y0, y1) = (
        (y0 * 20.0).floor() / 20.0,
        ((y1 * 20.0).ceil() / 20.0).max(y0 + 0.05),
    );
    let px = |v: f64| left + (lx(v) - x0) / (x1 - x0) * (w - left - right);
    let py = |v: f64| h - bottom - (v - y0) / (y1 - y0) * (h - top - bottom);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    s += &format!("<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n", h - bottom, w - right, h - bottom, h - bottom);
    let mut e = x0;
    while e <= x1 + 1e-9 {
        let x = left + (e - x0) / (x1 - x0) * (w - left - right);
        s += &format!(
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{} ms</text>\n",
            h - bottom + 16.0,
            10f64.powf(e)
        );
        e += 1.0;
    }
    let mut a = y0;
    while a <= y1 + 1e-9 {
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.0}%</text>\n",
            left - 6.0,
            py(a) + 4.0,
            100.0 * a
        );
        a += 0.05;
    }
    s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">CPU latency, batch 1 (p50, log scale)</text>\n", (left + w - right) / 2.0, h - 16.0);
    s += &format!("<text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">test accuracy</text>\n", h / 2.0, h / 2.0);
    // The legend, above the plot area.
    let tasks = [
        ("sentiment", "#1f77b4", "Task 1: fresh vs rotten"),
        (
            "review-vs-plot",
            "#d62728",
            "Task 2: critic review vs plot summary",
        ),
    ];
    let mut lx0 = left;
    for (_, color, name) in tasks {
        s += &format!("<circle cx=\"{:.1}\" cy=\"22\" r=\"5\" fill=\"{color}\"/>\n<text x=\"{:.1}\" y=\"26\">{name}</text>\n", lx0 + 5.0, lx0 + 14.0);
        lx0 += 24.0 + text_width(name);
    }
    let points: Vec<(f64, f64)> = pts
        .iter()
        .map(|p| (px(p.mean.latency_p50_ms), py(p.mean.accuracy)))
        .collect();
    let boxes = place_labels(
        &points,
        &pts.iter().map(|p| p.model.as_str()).collect::<Vec<_>>(),
        (0.0, top - 12.0, w, h - bottom + 2.0),
    );
    for ((p, (x, y)), b) in pts.iter().zip(&points).zip(&boxes) {
        let color = tasks
            .iter()
            .find(|t| t.0 == p.task)
            .map(|t| t.1)
            .unwrap_or("#555555");
        s += &format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"{color}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{}</text>\n", b.0, b.1 + LABEL_H - 3.0, p.model);
    }
    s + "</svg>\n"
}

const LABEL_H: f64 = 12.0;

/// Width of a label at font size 11 (a sans-serif character is ~6 px wide on average).
fn text_width(t: &str) -> f64 {
    6.2 * t.chars().count() as f64
}

/// Places each label (its top-left corner) beside its point: the first of several spots around the
/// point that stays inside `frame` (x0, y0, x1, y1) and overlaps neither a placed label nor a point;
/// if none is free, the spot that overlaps least.
fn place_labels(
    points: &[(f64, f64)],
    labels: &[&str],
    frame: (f64, f64, f64, f64),
) -> Vec<(f64, f64)> {
    let overlap = |a: (f64, f64, f64, f64), b: (f64, f64, f64, f64)| {
        let dx = (a.2.min(b.2) - a.0.max(b.0)).max(0.0);
        let dy = (a.3.min(b.3) - a.1.max(b.1)).max(0.0);
        dx * dy
    };
    let dots: Vec<(f64, f64, f64, f64)> = points
        .iter()
        .map(|&(x, y)| (x - 5.0, y - 5.0, x + 5.0, y + 5.0))
        .collect();
    let mut placed: Vec<(f64, f64, f64, f64)> = Vec::new();
    // Lower points first: their labels go where the upper ones are not.
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&a, &b| points[b].1.total_cmp(&points[a].1));
    let mut out = vec![(0.0, 0.0); points.len()];
    for i in order {
        let (x, y) = points[i];
        let tw = text_width(labels[i]);
        let mut best: Option<(f64, (f64, f64, f64, f64))> = None;
        for k in 0..24 {
            let step = (k / 4) as f64 * LABEL_H;
            let (bx, by) = match k % 4 {
                0 => (x + 8.0, y - LABEL_H - 2.0 - step),
                1 => (x + 8.0, y + 2.0 + step),
                2 => (x - 8.0 - tw, y - LABEL_H - 2.0 - step),
                _ => (x - 8.0 - tw, y + 2.0 + step),
            };
            let r = (bx, by, bx + tw, by + LABEL_H);
            let outside = (frame.0 - r.0).max(0.0)
                + (r.2 - frame.2).max(0.0)
                + (frame.1 - r.1).max(0.0)
                + (r.3 - frame.3).max(0.0);
            let cost = 1e6 * outside
                + placed
                    .iter()
                    .chain(&dots)
                    .map(|b| overlap(r, *b))
                    .sum::<f64>()
                + k as f64 * 1e-3;
            if best.is_none_or(|(c, _)| cost < c) {
                best = Some((cost, r));
            }
            if cost < 1.0 {
                break;
            }
        }
        let r = best.expect("candidates").1;
        placed.push(r);
        out[i] = (r.0, r.1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_inside_and_apart_even_for_crowded_points() {
        // Five points in a cluster near the right edge (the teacher rows of the two tasks, say).
        let points = [
            (700.0, 100.0),
            (702.0, 104.0),
            (698.0, 98.0),
            (600.0, 300.0),
            (705.0, 110.0),
        ];
        let labels = [
            "teacher + head",
            "transformer, distilled",
            "LLM (SmolLM2, prompted) + calibration",
            "n-gram",
            "n-gram, distilled, test texts unseen",
        ];
        let frame = (0.0, 40.0, 760.0, 420.0);
        let boxes = place_labels(&points, &labels, frame);
        let rects: Vec<(f64, f64, f64, f64)> = boxes
            .iter()
            .zip(labels)
            .map(|(&(x, y), l)| (x, y, x + text_width(l), y + LABEL_H))
            .collect();
        for (i, a) in rects.iter().enumerate() {
            assert!(
                a.0 >= frame.0 && a.2 <= frame.2 && a.1 >= frame.1 && a.3 <= frame.3,
                "{} outside: {a:?}",
                labels[i]
            );
            for b in &rects[i + 1..] {
                let apart = a.2 <= b.0 || b.2 <= a.0 || a.3 <= b.1 || b.3 <= a.1;
                assert!(apart, "{a:?} overlaps {b:?}");
            }
        }
    }
}
