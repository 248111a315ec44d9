//! Which corpus examples to label next (`distill task suggest`): the rows where the task's teacher is
//! least sure and, with a student, where teacher and student disagree most — spread over the teacher's
//! embedding space so that the suggestions are not near copies of one another.
//!
//! Each row not yet labeled gets a score: `1 − margin` (the teacher's top-two probability gap) plus,
//! with a student, the total-variation distance between the two models' probabilities. The best
//! `POOL × n` rows form a pool; from it `n` are picked greedily, each maximising
//! `score × distance to the nearest row already picked` (cosine distance between embeddings), the
//! first being the best-scored one.

use crate::data::{Example, TrainData};
use crate::metrics::{argmax, probabilities};
use crate::model::Predictor;
use crate::Result;
use serde::Serialize;
use std::collections::HashSet;

/// Suggestions for a task of the cache: its rows (with their teacher embeddings when the task's entry
/// has them) minus its gold ids, scored with the task's logits and, with a student, the student's.
pub async fn for_task(
    loc: &distill_cache::store::Location,
    task: &distill_cache::task::TaskRecord,
    n: usize,
    student: Option<Predictor>,
    candidates: Option<HashSet<String>>,
) -> Result<Vec<Suggestion>> {
    if let Some(m) = &student {
        if m.labels() != task.labels.as_slice() {
            return Err(crate::StudentError::Invalid(format!(
                "the student predicts [{}] but task {} has labels [{}]: give a student of this task",
                m.labels().join(", "),
                task.name,
                task.labels.join(", ")
            )));
        }
    }
    let mut data = TrainData::open(loc, task, HashSet::new(), 0).await?;
    if task.base_output != task.output {
        data = data.with_embeddings(task)?;
    }
    let labeled: HashSet<String> = task.gold.iter().map(|g| g.id.clone()).collect();
    let labels = task.labels.clone();
    tokio::task::spawn_blocking(move || {
        let o = SuggestOptions {
            n,
            labeled: &labeled,
            candidates: candidates.as_ref(),
            student: student.as_ref(),
        };
        suggest(&data, &labels, &o)
    })
    .await
    .map_err(|e| crate::StudentError::Invalid(format!("suggesting panicked: {e}")))?
}

/// Candidates kept per suggestion before the diversity pass.
pub const POOL: usize = 10;

/// One example worth labeling.
#[derive(Clone, Debug, Serialize)]
pub struct Suggestion {
    pub id: String,
    pub text: String,
    /// The teacher's label and its probability.
    pub teacher: String,
    pub teacher_confidence: f32,
    /// The student's label (with a student).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub student: Option<String>,
    pub score: f32,
    /// Why: `uncertain` (the teacher's margin dominates) or `disagreement`.
    pub reason: &'static str,
}

/// What to suggest from.
pub struct SuggestOptions<'a> {
    pub n: usize,
    /// Rows never suggested (the task's gold ids).
    pub labeled: &'a HashSet<String>,
    /// Only these rows may be suggested (`None`: every row).
    pub candidates: Option<&'a HashSet<String>>,
    pub student: Option<&'a Predictor>,
}

struct Candidate {
    s: Suggestion,
    vector: Vec<f32>,
}

/// Scores every row of `data` (streamed shard by shard; memory: one shard and the pool) and picks
/// `n` spread-out suggestions. `labels` are the task's classes in logits order. The rows' vectors
/// are their teacher embeddings where `data` was opened with them, else their task probabilities.
pub fn suggest(
    data: &TrainData,
    labels: &[String],
    o: &SuggestOptions<'_>,
) -> Result<Vec<Suggestion>> {
    let keep = (o.n * POOL).max(o.n);
    let mut pool: Vec<Candidate> = Vec::new();
    data.for_each_shard(|examples| {
        let examples: Vec<Example> = examples
            .into_iter()
            .filter(|e| {
                !o.labeled.contains(&e.id) && o.candidates.is_none_or(|c| c.contains(&e.id))
            })
            .collect();
        if examples.is_empty() {
            return Ok(());
        }
        let student = match o.student {
            Some(m) => {
                let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
                Some(probabilities(&m.logits(&texts)?))
            }
            None => None,
        };
        for (i, e) in examples.into_iter().enumerate() {
            let t = probabilities(std::slice::from_ref(&e.soft)).remove(0);
            let kt = argmax(&t);
            let second = t
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != kt)
                .map(|(_, v)| *v)
                .fold(0f32, f32::max);
            let uncertainty = 1.0 - (t[kt] - second);
            let (apart, student_label) = match &student {
                Some(s) => {
                    let s = &s[i];
                    let tv = 0.5 * s.iter().zip(&t).map(|(a, b)| (a - b).abs()).sum::<f32>();
                    (tv, Some(labels[argmax(s)].clone()))
                }
                None => (0.0, None),
            };
            let vector = e.embedding.clone().unwrap_or_else(|| t.clone());
            pool.push(Candidate {
                s: Suggestion {
                    id: e.id,
                    text: e.text,
                    teacher: labels[kt].clone(),
                    teacher_confidence: t[kt],
                    student: student_label,
                    score: uncertainty + apart,
                    reason: if apart > uncertainty {
                        "disagreement"
                    } else {
                        "uncertain"
                    },
                },
                vector: normalized(vector),
            });
        }
        pool.sort_by(|a, b| b.s.score.total_cmp(&a.s.score).then(a.s.id.cmp(&b.s.id)));
        pool.truncate(keep);
        Ok(())
    })?;
    Ok(spread(pool, o.n))
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Greedy: the best-scored first, then each time the candidate maximising score × cosine distance
/// to the nearest one picked.
fn spread(mut pool: Vec<Candidate>, n: usize) -> Vec<Suggestion> {
    let mut picked: Vec<Candidate> = Vec::new();
    let mut nearest = vec![f32::INFINITY; pool.len()];
    while picked.len() < n && !pool.is_empty() {
        let best = (0..pool.len())
            .max_by(|&a, &b| {
                let v = |i: usize| pool[i].s.score * nearest[i].min(2.0);
                v(a).total_cmp(&v(b)).then(b.cmp(&a))
            })
            .expect("non-empty");
        let c = pool.swap_remove(best);
        nearest.swap_remove(best);
        for (i, p) in pool.iter().enumerate() {
            let cos: f32 = p.vector.iter().zip(&c.vector).map(|(a, b)| a * b).sum();
            nearest[i] = nearest[i].min(1.0 - cos);
        }
        picked.push(c);
    }
    picked.into_iter().map(|c| c.s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, score: f32, v: Vec<f32>) -> Candidate {
        Candidate {
            s: Suggestion {
                id: id.into(),
                text: id.into(),
                teacher: "a".into(),
                teacher_confidence: 0.5,
                student: None,
                score,
                reason: "uncertain",
            },
            vector: normalized(v),
        }
    }

    #[test]
    fn the_spread_skips_near_copies_of_what_it_picked() {
        // Three near copies with the best scores, and two distinct rows scored a little lower.
        let pool = vec![
            cand("a", 1.0, vec![1.0, 0.0, 0.0]),
            cand("a2", 0.99, vec![1.0, 0.01, 0.0]),
            cand("a3", 0.98, vec![1.0, 0.0, 0.01]),
            cand("b", 0.9, vec![0.0, 1.0, 0.0]),
            cand("c", 0.8, vec![0.0, 0.0, 1.0]),
        ];
        let got: Vec<String> = spread(pool, 3).into_iter().map(|s| s.id).collect();
        assert_eq!(got, ["a", "b", "c"]);
    }

    #[test]
    fn the_spread_returns_what_there_is() {
        let pool = vec![
            cand("a", 1.0, vec![1.0, 0.0]),
            cand("b", 0.5, vec![0.0, 1.0]),
        ];
        assert_eq!(spread(pool, 5).len(), 2);
    }
}
