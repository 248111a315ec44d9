//! `distill predict` as library calls: inputs (JSONL or one text per line) read with errors naming
//! the line, a trained classifier's labels and probabilities for each, or a causal LM's scores.

use crate::model::Predictor;
use crate::{Result, StudentError};
use distill_tasks::metrics::{argmax, probabilities};
use distill_teacher::DeviceSpec;
use std::io::BufRead;
use std::path::PathBuf;

/// Which model, how inputs are read, how they are batched.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictSpec {
    /// A trained classifier (a distill student, a BertForSequenceClassification checkpoint) or a
    /// causal LM.
    pub model: PathBuf,
    pub text_field: String,
    pub id_field: String,
    /// An optional gold label per input: the accuracy on those is reported.
    pub label_field: String,
    pub device: DeviceSpec,
    pub batch: usize,
    /// Causal LMs: tokens to generate after each text (greedy).
    pub generate: usize,
}

/// One text to label.
#[derive(Clone, Debug)]
pub struct Input {
    pub id: String,
    pub text: String,
    pub label: Option<String>,
    /// 1-based line of the input.
    pub line: u64,
}

/// The output: one JSON object per input, and the accuracy on inputs that carried a label.
#[derive(Debug)]
pub struct Predictions {
    pub lines: Vec<serde_json::Value>,
    pub right: usize,
    pub judged: usize,
}

/// Reads inputs: a JSON object per line (text, optional id and label fields) or a plain text per line
/// (named `line-N`). `name` names the source in errors.
pub fn read_inputs(reader: impl BufRead, name: &str, spec: &PredictSpec) -> Result<Vec<Input>> {
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let n = i as u64 + 1;
        let at = |reason: String| StudentError::Line {
            path: name.to_owned(),
            line: n,
            reason,
        };
        let line = line.map_err(|e| at(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        if !line.trim_start().starts_with('{') {
            out.push(Input {
                id: format!("line-{n}"),
                text: line,
                label: None,
                line: n,
            });
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| at(format!("not JSON: {e}")))?;
        let text = v
            .get(&spec.text_field)
            .and_then(|t| t.as_str())
            .ok_or_else(|| {
                at(format!(
                    "no string field {:?} (use --text-field)",
                    spec.text_field
                ))
            })?;
        let id = match v.get(&spec.id_field) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(x)) => x.to_string(),
            _ => format!("line-{n}"),
        };
        let label = match v.get(&spec.label_field) {
            Some(serde_json::Value::String(l)) => Some(l.clone()),
            Some(serde_json::Value::Number(l)) => Some(l.to_string()),
            _ => None,
        };
        out.push(Input {
            id,
            text: text.to_owned(),
            label,
            line: n,
        });
    }
    Ok(out)
}

/// Labels `inputs` with the model of `spec` (a causal LM scores them instead). `name` names the
/// inputs' source in errors. Blocking.
pub fn predict(spec: &PredictSpec, inputs: &[Input], name: &str) -> Result<Predictions> {
    let md =
        distill_cache::model_dir::ModelDir::inspect(&spec.model.display().to_string(), &spec.model);
    if let Ok(md) = md {
        if md.family == distill_cache::model_dir::Family::Llama {
            return score_lm(spec, &md, inputs);
        }
    }
    let model = Predictor::load(&spec.model, &spec.device)?;
    let labels = model.labels().to_vec();
    for inp in inputs {
        if let Some(l) = inp.label.as_ref().filter(|l| !labels.contains(l)) {
            return Err(StudentError::Line {
                path: name.to_owned(),
                line: inp.line,
                reason: format!(
                    "label {l:?} is not one the model knows ({}); drop the field or use --label-field",
                    labels.join(", ")
                ),
            });
        }
    }
    let mut out = Predictions {
        lines: Vec::with_capacity(inputs.len()),
        right: 0,
        judged: 0,
    };
    for chunk in inputs.chunks(spec.batch.max(1)) {
        let texts: Vec<&str> = chunk.iter().map(|i| i.text.as_str()).collect();
        for (inp, p) in chunk.iter().zip(probabilities(&model.logits(&texts)?)) {
            let k = argmax(&p);
            if let Some(l) = &inp.label {
                out.judged += 1;
                out.right += (l == &labels[k]) as usize;
            }
            let probs: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .zip(&p)
                .map(|(l, v)| (l.clone(), serde_json::json!(v)))
                .collect();
            out.lines.push(serde_json::json!({
                "id": inp.id, "label": labels[k], "probability": p[k], "probabilities": probs,
            }));
        }
    }
    Ok(out)
}

/// A causal LM's per-text scores (and greedy continuations), with each input's id.
fn score_lm(
    spec: &PredictSpec,
    md: &distill_cache::model_dir::ModelDir,
    inputs: &[Input],
) -> Result<Predictions> {
    let t = distill_teacher::Teacher::load(md, &spec.device)?;
    let texts: Vec<&str> = inputs.iter().map(|i| i.text.as_str()).collect();
    let scored = crate::lm::score_texts(&t, &texts, spec.generate)?;
    let lines = inputs
        .iter()
        .zip(scored)
        .map(|(i, s)| {
            let mut v =
                serde_json::to_value(&s).map_err(|e| StudentError::Invalid(e.to_string()))?;
            v["id"] = i.id.clone().into();
            Ok(v)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Predictions {
        lines,
        right: 0,
        judged: 0,
    })
}

/// Writes one line per item to `output` (`-`: standard output). A file is written aside and renamed:
/// a reader never sees half the lines.
pub fn write_lines(output: &str, lines: &[String]) -> Result<()> {
    use std::io::Write;
    let mut body = lines.join("\n");
    body.push('\n');
    if output == "-" {
        return std::io::stdout()
            .write_all(body.as_bytes())
            .map_err(StudentError::io("<stdout>"));
    }
    let tmp = format!("{output}.partial-{}", std::process::id());
    std::fs::write(&tmp, body).map_err(StudentError::io(&tmp))?;
    std::fs::rename(&tmp, output).map_err(StudentError::io(output))
}
