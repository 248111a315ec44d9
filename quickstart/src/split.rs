//! Step 2: the gold labels split by group (no movie on both sides) into a training pool and a test
//! set; the test ids written for the record.

use crate::protocol::split_by_group;
use crate::{QuickstartSpec, Result};
use distill_cache::store::Location;
use distill_tasks::labels::{self, Fields, Gold};
use distill_tasks::task::{self, Entry};
use std::collections::HashSet;

/// The split of the gold labels, and what distillation may not see.
pub struct Split {
    pub train: Vec<Gold>,
    pub test: Vec<Gold>,
    pub test_ids: HashSet<String>,
    /// Ids kept out of distillation: none by default (the unlabeled corpus, test texts included, is
    /// the distillation set, as in the reference setup; test labels are never used), the test ids
    /// with `exclude_test_texts`.
    pub exclude: HashSet<String>,
}

/// Reads the gold labels of the cached rows, splits them by group and writes `split/test-ids.txt`.
pub async fn split(spec: &QuickstartSpec, loc: &Location, entry: &Entry) -> Result<Split> {
    let fields = Fields {
        group: Some(spec.group_field.clone()),
        ..Default::default()
    };
    let cached = task::cached_ids(loc, entry).await?;
    let all_gold = labels::read(&spec.gold, &fields)?;
    // Rows the teacher pass rejected (duplicates, empty texts) have no cached labels.
    let gold: Vec<Gold> = all_gold
        .iter()
        .filter(|g| cached.contains(&g.id))
        .cloned()
        .collect();
    if gold.len() < all_gold.len() {
        eprintln!(
            "    {} gold rows skipped: their corpus rows were rejected by the teacher pass",
            all_gold.len() - gold.len()
        );
    }
    let (test, train) = split_by_group(&gold, spec.test_share, spec.seed);
    let test_ids: HashSet<String> = test.iter().map(|g| g.id.clone()).collect();
    let exclude = if spec.exclude_test_texts {
        test_ids.clone()
    } else {
        HashSet::new()
    };
    let split_dir = spec.out.join("split");
    crate::error::create_dir(&split_dir)?;
    let ids: String = test.iter().map(|g| format!("{}\n", g.id)).collect();
    crate::error::write(&split_dir.join("test-ids.txt"), ids)?;
    eprintln!(
        "2/5 split by {}: {} train rows ({} groups), {} test rows ({} groups), no group on both sides",
        spec.group_field,
        train.len(),
        groups(&train),
        test.len(),
        groups(&test)
    );
    Ok(Split {
        train,
        test,
        test_ids,
        exclude,
    })
}

fn groups(rows: &[Gold]) -> usize {
    rows.iter()
        .filter_map(|g| g.group.clone())
        .collect::<HashSet<_>>()
        .len()
}

/// Writes gold labels as JSONL (`id`, `label`): a draw's labels, a test set.
pub fn write_jsonl(path: &std::path::Path, rows: &[Gold]) -> Result<()> {
    let mut s = String::new();
    for g in rows {
        s.push_str(&serde_json::to_string(
            &serde_json::json!({"id": g.id, "label": g.label}),
        )?);
        s.push('\n');
    }
    crate::error::write(path, s)
}
