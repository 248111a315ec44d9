//! Length-sorted batching under a token budget.
//!
//! A batch costs `rows × longest row` token slots. Rows are sorted by token length; a batch is cut when
//! the next row would push `rows × length` past `max_batch_tokens`, or — once the batch is big enough
//! for efficient matrix products: a quarter of the budget, and never more than [`ENOUGH_SLOTS`] — when
//! the next, longer row would drop the batch's padding efficiency below [`MIN_EFFICIENCY`]. The cap
//! keeps large budgets (a GPU's 65k tokens) from packing a whole shard of mixed lengths into one or two
//! batches padded to their longest rows. Results go back to input order through the row indices each
//! batch keeps.

/// One batch: the input rows it holds (ascending length) and the padded length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub rows: Vec<usize>,
    pub len: usize,
}

/// The padding efficiency (real ÷ padded tokens) a batch that is already big enough must keep.
pub const MIN_EFFICIENCY: f64 = 0.97;

/// Token slots past which a batch is big enough whatever the budget: what the default budget (4,096,
/// a quarter of it) already uses, so larger budgets pad no more than it does. A larger minimum packs
/// wider ranges of lengths into each batch (a 1,000-row shard of texts of 20–45 tokens has ~30 rows of
/// each length: 8,192 slots span ten lengths and pad ~20%), while batches of rows of one length still
/// grow to the whole budget.
pub const ENOUGH_SLOTS: usize = 1024;

/// Plans batches for rows of the given token lengths. A row longer than the budget gets a batch alone.
pub fn plan(lengths: &[usize], max_batch_tokens: usize) -> Vec<Batch> {
    plan_with(lengths, max_batch_tokens, ENOUGH_SLOTS)
}

fn plan_with(lengths: &[usize], max_batch_tokens: usize, enough_slots: usize) -> Vec<Batch> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let mut batches = Vec::new();
    let mut cur = Batch {
        rows: Vec::new(),
        len: 0,
    };
    let mut real = 0usize;
    for i in order {
        let len = lengths[i];
        if !cur.rows.is_empty() {
            let slots = (cur.rows.len() + 1) * len;
            let over_budget = slots > max_batch_tokens;
            let big_enough = 4 * cur.rows.len() * cur.len >= max_batch_tokens.min(4 * enough_slots);
            let wasteful = ((real + len) as f64) < MIN_EFFICIENCY * slots as f64;
            if over_budget || (big_enough && wasteful) {
                batches.push(std::mem::replace(
                    &mut cur,
                    Batch {
                        rows: Vec::new(),
                        len: 0,
                    },
                ));
                real = 0;
            }
        }
        cur.rows.push(i);
        cur.len = len;
        real += len;
    }
    if !cur.rows.is_empty() {
        batches.push(cur);
    }
    batches
}

/// Padded token slots of a plan.
pub fn padded_tokens(batches: &[Batch]) -> u64 {
    batches.iter().map(|b| (b.rows.len() * b.len) as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_once_and_budget_respected() {
        let lengths: Vec<usize> = (0..500).map(|i| 3 + (i * 37) % 120).collect();
        let batches = plan(&lengths, 1024);
        let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.rows.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
        for b in &batches {
            assert!(b.rows.len() * b.len <= 1024 || b.rows.len() == 1);
            assert_eq!(b.len, b.rows.iter().map(|&r| lengths[r]).max().unwrap());
        }
        let real: usize = lengths.iter().sum();
        let eff = real as f64 / padded_tokens(&batches) as f64;
        assert!(eff > 0.95, "padding efficiency {eff}");
    }

    #[test]
    fn short_rows_of_many_lengths_still_pad_little() {
        // Many short rows over a few dozen lengths: budget-only batching would mix neighbouring
        // lengths in each batch of ~150 rows and waste several percent.
        let lengths: Vec<usize> = (0..2000).map(|i| 20 + (i * 7919) % 40).collect();
        let batches = plan(&lengths, 4096);
        let real: usize = lengths.iter().sum();
        let eff = real as f64 / padded_tokens(&batches) as f64;
        assert!(eff >= 0.97, "padding efficiency {eff}");
        let slots_per_batch = padded_tokens(&batches) as f64 / batches.len() as f64;
        assert!(
            slots_per_batch >= 1024.0,
            "batches stay large: {slots_per_batch}"
        );
    }

    #[test]
    fn a_large_budget_still_pads_little() {
        // A 1,000-row shard of short texts (12–110 tokens, most between 20 and 45) fits a
        // 65,536-token budget in one batch; cut once big enough, it keeps its efficiency.
        let lengths: Vec<usize> = (0..1000)
            .map(|i| {
                12 + (i * 7919) % 17 + (i * 31) % 19 + if i % 10 == 0 { (i * 13) % 60 } else { 0 }
            })
            .collect();
        let batches = plan(&lengths, 65_536);
        let real: usize = lengths.iter().sum();
        let eff = real as f64 / padded_tokens(&batches) as f64;
        assert!(eff >= 0.95, "padding efficiency {eff}");
        // Without the cap (a quarter of the budget before any cut), the same rows pad far more.
        let quarter = plan_with(&lengths, 65_536, 65_536);
        let eff_quarter = real as f64 / padded_tokens(&quarter) as f64;
        assert!(eff_quarter < eff, "{eff_quarter} vs {eff}");
    }

    #[test]
    fn oversized_row_stands_alone() {
        let batches = plan(&[10, 5000, 12], 100);
        assert_eq!(batches.last().unwrap().rows, vec![1]);
        assert_eq!(batches.len(), 2);
    }

    #[test]
    fn empty_input() {
        assert!(plan(&[], 100).is_empty());
    }
}
