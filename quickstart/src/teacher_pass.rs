//! The teacher passes of the run, each once (a rerun is all cache hits): the encoder over the
//! corpus, and the prompted LLM over the rows the run needs from it.

use crate::protocol::{draw, relabel, sentiment};
use crate::split::Split;
use crate::{QuickstartError, QuickstartSpec, Result};
use distill_cache::format::OutputRequest;
use distill_cache::spec::{Choice, Dtype, OutputKind, PromptSpec};
use distill_cache::store::Location;
use distill_label::{JobSummary, LabelSpec};
use distill_tasks::labels::Gold;
use distill_tasks::rng::Rng;
use distill_tasks::task::{self, Entry, EntryQuery};
use distill_teacher::Teacher;
use std::collections::HashSet;
use std::sync::Arc;

/// The prompt that makes the LLM a sentiment teacher: chat-formatted, with an answer prefix, the
/// class logits the log-probabilities of " positive" and " negative".
pub fn sentiment_prompt() -> PromptSpec {
    PromptSpec {
        template: "Is this movie review positive or negative? Review: {text}".into(),
        choices: vec![
            Choice {
                label: "fresh".into(),
                continuation: " positive".into(),
            },
            Choice {
                label: "rotten".into(),
                continuation: " negative".into(),
            },
        ],
        chat: true,
        system: None,
        answer_prefix: "The review is".into(),
        length_normalize: false,
    }
}

/// Labels `corpus` with `teacher` in this process, prints what it cost, and finds the entry.
async fn label_once(
    spec: &QuickstartSpec,
    loc: &Location,
    corpus: &str,
    teacher: &str,
    output: OutputRequest,
) -> Result<(JobSummary, Entry)> {
    let kind = output.kind;
    let mut job = LabelSpec::new(corpus, teacher, &spec.store, output);
    job.teacher.max_batch_tokens = spec.max_batch_tokens;
    let job = distill_label::label(&job, spec.progress).await?;
    eprintln!(
        "    {} rows, {} shards ({} cache hits): {:.1} teacher-seconds spent, {:.1} saved",
        job.ledger.rows,
        job.ledger.shards,
        job.ledger.cache_hits,
        job.ledger.teacher_seconds,
        job.ledger.teacher_seconds_saved
    );
    let entry = task::find_entry(
        loc,
        &EntryQuery {
            corpus: Some(corpus),
            teacher: Some(job.teacher_fingerprint.as_str()),
            output: Some(job.output_fingerprint.as_str()),
            kind: Some(kind),
        },
    )
    .await?;
    Ok((job, entry))
}

/// Step 1: the encoder's embeddings of the whole corpus.
pub async fn encoder(spec: &QuickstartSpec, loc: &Location) -> Result<(JobSummary, Entry)> {
    eprintln!(
        "1/5 labeling {} with {} (cached shards are skipped)",
        spec.corpus, spec.teacher
    );
    let output = OutputRequest::simple(OutputKind::Embeddings, Dtype::F32);
    label_once(spec, loc, &spec.corpus, &spec.teacher, output).await
}

/// The LLM teacher's pass, its entry, the loaded model and its size.
pub struct Llm {
    pub job: JobSummary,
    pub entry: Entry,
    pub teacher: Arc<Teacher>,
    pub bytes: u64,
}

/// The LLM teacher, prompted over the test rows, every draw's gold rows and a sample of the
/// training rows (written as a corpus of their own).
pub async fn llm(spec: &QuickstartSpec, loc: &Location, split: &Split) -> Result<Llm> {
    let ids = llm_rows(spec, split);
    let subset = spec.out.join("llm-corpus.jsonl");
    crate::error::write(&subset, rows_of(&spec.corpus, &ids)?)?;
    eprintln!(
        "    LLM teacher {}: labeling {} rows (test rows, gold rows, {} training rows) from a prompt",
        spec.llm_teacher,
        ids.len(),
        spec.llm_rows
    );
    let mut output = OutputRequest::simple(OutputKind::Logits, Dtype::F32);
    output.prompt = Some(sentiment_prompt());
    let corpus = subset.display().to_string();
    let (job, entry) = label_once(spec, loc, &corpus, &spec.llm_teacher, output).await?;
    let md = distill_cache::model_dir::ModelDir::resolve(&spec.llm_teacher).await?;
    Ok(Llm {
        job,
        entry,
        teacher: crate::rows::load_teacher(&md).await?,
        bytes: crate::rows::weight_bytes(&md),
    })
}

/// The ids the LLM labels: the test rows, every draw's gold rows, `llm_rows` more training rows.
fn llm_rows(spec: &QuickstartSpec, split: &Split) -> HashSet<String> {
    let pool = relabel(&split.train, sentiment);
    let mut ids: HashSet<String> = relabel(&split.test, sentiment)
        .into_iter()
        .map(|g| g.id)
        .collect();
    for d in 0..spec.draws {
        ids.extend(
            draw(&pool, spec.gold_count, spec.seed, d, false)
                .into_iter()
                .map(|g| g.id),
        );
    }
    let mut rest: Vec<&Gold> = split
        .train
        .iter()
        .filter(|g| !ids.contains(&g.id))
        .collect();
    Rng::derive(spec.seed, "llm-rows", 0).shuffle(&mut rest);
    ids.extend(rest.iter().take(spec.llm_rows).map(|g| g.id.clone()));
    ids
}

/// The JSONL lines of `corpus` whose id is in `ids`, as they are.
fn rows_of(corpus: &str, ids: &HashSet<String>) -> Result<String> {
    let text = std::fs::read_to_string(corpus).map_err(|source| QuickstartError::Io {
        path: corpus.into(),
        source,
    })?;
    let mut body = String::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["id"].as_str().is_some_and(|id| ids.contains(id)) {
            body.push_str(line);
            body.push('\n');
        }
    }
    Ok(body)
}
