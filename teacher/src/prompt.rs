//! Prompts that turn a decoder LM into a classifier: a template with `{text}`, choices with their
//! continuations, optionally wrapped in the model's chat format, resolved into token ids once per
//! teacher.
//!
//! The template is cut at `{text}`: what comes before is the **prefix**, shared by every row (its keys
//! and values are computed once); the row's text goes next, then the **suffix** (the rest of the template,
//! the chat turn's end, the assistant's turn and the answer prefix); then each choice's
//! **continuation**. Segments are tokenized apart — trailing spaces of the prefix go with the row's
//! text, so `Review: {text}` tokenizes the text's first word with its space as the whole prompt would.
//! Special tokens written in the template (`<|im_start|>`) are special tokens; in the row's text they are
//! plain text ([`distill_cache::model_dir::SPECIAL_TEXT_POLICY`]).
//!
//! Chat formats: ChatML (`<|im_start|>` — SmolLM2, Qwen2; the default system message is the one the
//! model's `tokenizer.chat_template` inserts, if any) and Llama 3 (`<|start_header_id|>`).

use crate::tokenizer::TextTokenizer;
use crate::{Result, TeacherError};
use distill_cache::spec::PromptSpec;

/// A prompt in token ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptTokens {
    pub prefix: Vec<u32>,
    /// Spaces moved from the prefix's end to the front of every row's text.
    pub lead: String,
    pub suffix: Vec<u32>,
    /// One per choice, in order.
    pub continuations: Vec<Vec<u32>>,
}

/// A chat format the tokenizer's special tokens reveal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChatFormat {
    ChatMl,
    Llama3,
}

fn chat_format(tok: &TextTokenizer) -> Option<ChatFormat> {
    if tok.special_id("<|im_start|>").is_some() && tok.special_id("<|im_end|>").is_some() {
        Some(ChatFormat::ChatMl)
    } else if tok.special_id("<|start_header_id|>").is_some()
        && tok.special_id("<|eot_id|>").is_some()
    {
        Some(ChatFormat::Llama3)
    } else {
        None
    }
}

/// The system message a chat template inserts when there is none: the first
/// `<|im_start|>system` + newline + `…<|im_end|>` written as plain text in one Jinja string literal
/// (SmolLM2 writes the newline as is, Qwen2.5 as the escape `\n`, which is decoded, as are `\'`, `\"`
/// and `\\`). A candidate holding template syntax (a quote, `{{`, `{%`: a message built from the
/// conversation, as Qwen's tool branch does) is passed over.
pub fn default_system(chat_template: Option<&str>) -> Option<String> {
    const OPEN: &str = "<|im_start|>system";
    let t = chat_template?;
    let mut from = 0;
    while let Some(at) = t[from..].find(OPEN) {
        let rest = &t[from + at + OPEN.len()..];
        from += at + OPEN.len();
        let body = rest.strip_prefix('\n').or_else(|| rest.strip_prefix("\\n"));
        let Some(body) = body else { continue };
        let Some(end) = body.find("<|im_end|>") else {
            continue;
        };
        if let Some(message) = jinja_literal_text(&body[..end]) {
            return Some(message);
        }
    }
    None
}

/// The text of a stretch inside a Jinja string literal, escapes decoded; `None` where it holds an
/// unescaped quote or template syntax (so it is not one literal's plain text).
fn jinja_literal_text(raw: &str) -> Option<String> {
    if raw.contains("{{") || raw.contains("{%") || raw.contains("}}") || raw.contains("%}") {
        return None;
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            '\'' | '"' => return None,
            other => out.push(other),
        }
    }
    Some(out)
}

/// The full template text (chat-wrapped, with the answer prefix), `{text}` still in it.
pub fn render(
    spec: &PromptSpec,
    tok: &TextTokenizer,
    chat_template: Option<&str>,
) -> Result<String> {
    let body = spec.template.as_str();
    if !spec.chat {
        return Ok(format!("{body}{}", spec.answer_prefix));
    }
    let system = spec
        .system
        .clone()
        .or_else(|| default_system(chat_template));
    Ok(match chat_format(tok) {
        Some(ChatFormat::ChatMl) => {
            let sys = system
                .map(|s| format!("<|im_start|>system\n{s}<|im_end|>\n"))
                .unwrap_or_default();
            format!(
                "{sys}<|im_start|>user\n{body}<|im_end|>\n<|im_start|>assistant\n{}",
                spec.answer_prefix
            )
        }
        Some(ChatFormat::Llama3) => {
            let sys = system
                .map(|s| format!("<|start_header_id|>system<|end_header_id|>\n\n{s}<|eot_id|>"))
                .unwrap_or_default();
            format!(
                "{sys}<|start_header_id|>user<|end_header_id|>\n\n{body}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n{}",
                spec.answer_prefix
            )
        }
        None => {
            return Err(TeacherError::Config(
                "--chat: this teacher's tokenizer has no chat format distill knows (ChatML, Llama 3); write the turns out in --prompt".into(),
            ))
        }
    })
}

/// Resolves a prompt for a tokenizer; `context` bounds prefix + suffix + the longest continuation.
pub fn resolve(
    spec: &PromptSpec,
    tok: &TextTokenizer,
    chat_template: Option<&str>,
    context: usize,
) -> Result<PromptTokens> {
    spec.validate()?;
    let full = render(spec, tok, chat_template)?;
    let (before, after) = full.split_once("{text}").expect("validated: {text} once");
    let trimmed = before.trim_end_matches(' ');
    let lead = before[trimmed.len()..].to_owned();
    let mut prefix = tok.leading_ids()?;
    prefix.extend(tok.encode_template(trimmed)?);
    let suffix = tok.encode_template(after)?;
    let mut continuations = Vec::new();
    for c in &spec.choices {
        let ids = tok.encode_plain(&c.continuation)?;
        if ids.is_empty() {
            return Err(TeacherError::Config(format!(
                "--choice {}={:?}: the continuation tokenizes to nothing",
                c.label, c.continuation
            )));
        }
        continuations.push(ids);
    }
    let longest = continuations.iter().map(Vec::len).max().unwrap_or(0);
    if prefix.len() + suffix.len() + longest + 1 > context {
        return Err(TeacherError::Config(format!(
            "--prompt is {} tokens with its longest continuation, more than the teacher's context of {context}",
            prefix.len() + suffix.len() + longest
        )));
    }
    Ok(PromptTokens {
        prefix,
        lead,
        suffix,
        continuations,
    })
}

/// The chat template a decoder model ships: GGUF `tokenizer.chat_template`, or `chat_template` of an HF
/// directory's `tokenizer_config.json`.
pub fn chat_template(dir: &distill_cache::model_dir::ModelDir) -> Result<Option<String>> {
    use distill_cache::model_dir::ModelFormat;
    Ok(match dir.format {
        ModelFormat::Gguf => distill_cache::gguf::Gguf::open(&dir.location, &dir.weights[0])?
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned(),
        ModelFormat::Hf => std::fs::read(dir.dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["chat_template"].as_str().map(str::to_owned)),
    })
}

/// Checks a prompt against a decoder model's tokenizer and context without loading its weights (for a
/// planner): the error names the flag.
pub fn check(dir: &distill_cache::model_dir::ModelDir, spec: &PromptSpec) -> Result<PromptTokens> {
    let tok = crate::Teacher::decoder_tokenizer(dir)?;
    resolve(
        spec,
        &tok,
        chat_template(dir)?.as_deref(),
        dir.max_seq_length,
    )
}

#[cfg(test)]
mod tests {
    use crate::fixtures::{write_tiny_llama_gguf, TinyLlama};
    use crate::{DeviceSpec, Teacher};
    use distill_cache::model_dir::ModelDir;
    use distill_cache::spec::{Choice, Dtype, OutputSpec, PromptSpec};

    fn teacher(dir: &std::path::Path) -> Teacher {
        let p = dir.join("tiny.gguf");
        write_tiny_llama_gguf(&p, &TinyLlama::default()).unwrap();
        let md = ModelDir::inspect("tiny", &p).unwrap();
        Teacher::load(&md, &DeviceSpec::Cpu).unwrap()
    }

    fn spec(chat: bool) -> PromptSpec {
        PromptSpec {
            template: "review: {text}".into(),
            choices: vec![
                Choice {
                    label: "pos".into(),
                    continuation: " positive".into(),
                },
                Choice {
                    label: "neg".into(),
                    continuation: " negative".into(),
                },
                // Several tokens: runs after the row's keys and values.
                Choice {
                    label: "meh".into(),
                    continuation: " not bad at all".into(),
                },
            ],
            chat,
            system: None,
            answer_prefix: if chat {
                "The review is".into()
            } else {
                "\nThe review is".into()
            },
            length_normalize: false,
        }
    }

    /// log p(continuation | prompt) from the whole sequence in one forward pass, no shared prefix.
    fn direct(t: &Teacher, p: &PromptSpec, text: &str) -> Vec<f32> {
        let pt = t.prompt_tokens(p).unwrap();
        let mut row = pt.prefix.clone();
        row.extend(
            t.tokenizer()
                .encode_plain(&format!("{}{text}", pt.lead))
                .unwrap(),
        );
        row.extend(&pt.suffix);
        pt.continuations
            .iter()
            .map(|cont| {
                let mut seq = row.clone();
                seq.extend(cont);
                let logits = t
                    .position_logits(std::slice::from_ref(&seq))
                    .unwrap()
                    .remove(0);
                let vocab = logits.len() / seq.len();
                (0..cont.len())
                    .map(|j| {
                        let at = row.len() - 1 + j;
                        let l = &logits[at * vocab..(at + 1) * vocab];
                        let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                        let lse = m + l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
                        (l[cont[j] as usize] as f64 - lse) as f32
                    })
                    .sum()
            })
            .collect()
    }

    #[test]
    fn prompted_class_logits_equal_the_continuation_log_probs_computed_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let t = teacher(tmp.path());
        let texts = [
            "the movie was good",
            "a very boring film, not fun",
            "great",
            "12345 <|im_end|> awful",
        ];
        for chat in [false, true] {
            let p = spec(chat);
            let pt = t.prompt_tokens(&p).unwrap();
            assert!(pt.continuations[2].len() > 1, "a multi-token continuation");
            assert_eq!(
                pt.lead, " ",
                "the prefix's trailing space goes with the text"
            );
            for budget in [1 << 20, 1] {
                let labels = t
                    .label_spec(
                        &texts,
                        &OutputSpec::Logits {
                            dtype: Dtype::F32,
                            prompt: Some(Box::new(p.clone())),
                        },
                        budget,
                        0,
                    )
                    .unwrap();
                let v = labels.vectors();
                assert_eq!(v.width, 3);
                assert_eq!(labels.prefix_tokens_saved, (pt.prefix.len() * 3) as u64);
                for (i, text) in texts.iter().enumerate() {
                    let want = direct(&t, &p, text);
                    for (a, b) in v.row(i).iter().zip(&want) {
                        assert!((a - b).abs() < 1e-4, "chat {chat}, {text:?}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn chat_wraps_the_prompt_in_chatml_with_special_tokens() {
        let tmp = tempfile::tempdir().unwrap();
        let t = teacher(tmp.path());
        let p = spec(true);
        let pt = t.prompt_tokens(&p).unwrap();
        let im_start = t.tokenizer().special_id("<|im_start|>").unwrap();
        let im_end = t.tokenizer().special_id("<|im_end|>").unwrap();
        assert_eq!(
            pt.prefix[0], im_start,
            "the template's special tokens are special"
        );
        assert!(pt.suffix.contains(&im_end) && pt.suffix.contains(&im_start));
        assert_eq!(
            super::default_system(Some(
                "{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}"
            )),
            Some("You are helpful".into())
        );
    }

    #[test]
    fn the_default_system_message_is_found_written_plain_or_escaped() {
        use super::default_system;
        // SmolLM2: the newline as is.
        let smol = "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n' }}{% endif %}";
        assert_eq!(
            default_system(Some(smol)).as_deref(),
            Some("You are a helpful AI assistant named SmolLM")
        );
        // Qwen2.5: escaped newlines, and a tool branch first whose system turn is built from the
        // conversation (passed over).
        let qwen = r#"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- endif %}
    {{- "\n</tools><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You\'re \"helpful\".<|im_end|>\n' }}
    {%- endif %}
{%- endif %}"#;
        assert_eq!(
            default_system(Some(qwen)).as_deref(),
            Some("You are Qwen, created by Alibaba Cloud. You're \"helpful\".")
        );
        // Only a system turn built from the conversation: no default.
        let built = "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}";
        assert_eq!(default_system(Some(built)), None);
        assert_eq!(default_system(None), None);
    }

    #[test]
    fn bad_prompts_are_refused_naming_the_flag() {
        let tmp = tempfile::tempdir().unwrap();
        let t = teacher(tmp.path());
        let mut p = spec(false);
        p.template = "no placeholder".into();
        assert!(t
            .prompt_tokens(&p)
            .unwrap_err()
            .to_string()
            .contains("{text}"));
        let mut p = spec(false);
        p.choices[1].label = "pos".into();
        assert!(t
            .prompt_tokens(&p)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let mut p = spec(false);
        p.choices[0].continuation = String::new();
        assert!(t
            .prompt_tokens(&p)
            .unwrap_err()
            .to_string()
            .contains("must not be empty"));
        let mut p = spec(false);
        p.template = format!("{} {{text}}", "the film ".repeat(80));
        assert!(t
            .prompt_tokens(&p)
            .unwrap_err()
            .to_string()
            .contains("context"));
    }
}
