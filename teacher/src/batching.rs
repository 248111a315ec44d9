//! Length-sorted batching under a token budget.
//!
//! A batch costs `rows × longest row` token slots. Rows are sorted by token length; a batch is cut when
//! the next row would push `rows × length` past `max_batch_tokens`, or — once the batch already fills a
//! quarter of the budget, enough for efficient matrix products — when the next, longer row would drop
//! the batch's padding efficiency below [`MIN_EFFICIENCY`]. Results go back to input order through the
//! row indices each batch keeps.

/// One batch: the input rows it holds (ascending length) and the padded length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub rows: Vec<usize>,
    pub len: usize,
}

/// The padding efficiency (real ÷ padded tokens) a batch that is already big enough must keep.
pub const MIN_EFFICIENCY: f64 = 0.97;

/// Plans batches for rows of the given token lengths. A row longer than the budget gets a batch alone.
pub fn plan(lengths: &[usize], max_batch_tokens: usize) -> Vec<Batch> {
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
            let big_enough = 4 * cur.rows.len() * cur.len >= max_batch_tokens;
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
