//! Gold labels: a JSONL file of `{"id": …, "label": …}` objects (field names configurable), read with
//! errors that name the file and line. A row may carry its text (`"text"`): evaluation then runs the
//! teacher on it when its id is not in the cache, and a row with a text needs no id.

use crate::{Result, TaskError};
use std::collections::HashSet;
use std::path::Path;

/// One labeled example; `group` is an optional field (a movie, a document) used to split data so
/// that no group is on both sides.
#[derive(Clone, Debug, PartialEq)]
pub struct Gold {
    pub id: String,
    pub label: String,
    pub group: Option<String>,
    /// The row's own text, where the file gives one.
    pub text: Option<String>,
    pub line: u64,
}

/// Field names of a labels file.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fields {
    pub id: String,
    pub label: String,
    pub group: Option<String>,
    /// An optional text field.
    pub text: String,
    /// Rows with a text need no id (`eval` on new texts): they are named `line-N`.
    pub text_rows: bool,
    /// Rows whose label is empty are skipped, not refused (suggestions left unlabeled).
    pub skip_unlabeled: bool,
}

impl Default for Fields {
    fn default() -> Self {
        Self {
            id: "id".into(),
            label: "label".into(),
            group: None,
            text: "text".into(),
            text_rows: false,
            skip_unlabeled: false,
        }
    }
}

fn field_str(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads a labels file. Blank lines are skipped; a malformed line, a missing field or a repeated id
/// is an error naming the line.
pub fn read(path: &Path, fields: &Fields) -> Result<Vec<Gold>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(TaskError::io(path))?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        let line_err = |reason: String| TaskError::Line {
            path: name.clone(),
            line: n,
            reason,
        };
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| line_err(format!("not JSON: {e}")))?;
        let get = |f: &str| {
            v.get(f).and_then(field_str).ok_or_else(|| {
                line_err(format!(
                    "no {f:?} field (a string or number); use --id-field / --label-field to name yours"
                ))
            })
        };
        let text = v
            .get(&fields.text)
            .and_then(|t| t.as_str())
            .map(str::to_owned);
        let id = match (get(&fields.id), &text) {
            (Ok(id), _) => id,
            // A row with its own text needs no id: it is named by its line.
            (Err(_), Some(_)) if fields.text_rows => format!("line-{n}"),
            (Err(e), _) => return Err(e),
        };
        let label = get(&fields.label)?;
        if label.is_empty() && fields.skip_unlabeled {
            continue;
        }
        if label.is_empty() {
            return Err(line_err(format!("empty {:?}", fields.label)));
        }
        let group = match &fields.group {
            Some(g) => Some(get(g)?),
            None => None,
        };
        if !seen.insert(id.clone()) {
            return Err(line_err(format!("id {id:?} appears twice")));
        }
        out.push(Gold {
            id,
            label,
            group,
            text,
            line: n,
        });
    }
    if out.is_empty() {
        return Err(TaskError::File {
            path: name,
            reason: "no labeled examples".into(),
        });
    }
    Ok(out)
}

/// A task's gold labels with `more` added (`distill task fit --add`): an id already labeled the same
/// way is kept once; labeled another way, it is an error naming the line of `more`.
pub fn merge(
    existing: &[distill_cache::task::GoldLabel],
    more: Vec<Gold>,
    path: &str,
) -> Result<Vec<Gold>> {
    let known: std::collections::HashMap<&str, &str> = existing
        .iter()
        .map(|g| (g.id.as_str(), g.label.as_str()))
        .collect();
    let mut out: Vec<Gold> = existing
        .iter()
        .map(|g| Gold {
            id: g.id.clone(),
            label: g.label.clone(),
            group: None,
            text: None,
            line: 0,
        })
        .collect();
    for g in more {
        match known.get(g.id.as_str()) {
            Some(l) if *l == g.label => {}
            Some(l) => {
                return Err(TaskError::Line {
                    path: path.to_owned(),
                    line: g.line,
                    reason: format!(
                        "id {:?} is labeled {:?} here but {:?} in the task: fix one of them",
                        g.id, g.label, l
                    ),
                })
            }
            None => out.push(g),
        }
    }
    Ok(out)
}

/// Reads a list of ids: JSONL objects with an `id` field, or one id per line.
/// The ids a student's `--exclude` names (none without one): an ids file ([`read_ids`]), or a corpus
/// of several files — a folder, a glob or an object-store prefix or URL — whose rows' ids are read as
/// a job reads them.
pub async fn excluded(path: Option<&Path>) -> Result<HashSet<String>> {
    let Some(p) = path else {
        return Ok(HashSet::new());
    };
    let name = p.to_string_lossy();
    if p.is_dir() || name.contains("://") || name.contains(['*', '?', '[']) {
        let spec = distill_cache::corpus::CorpusSpec::new(name.as_ref());
        return Ok(distill_cache::corpus::ids(&spec).await?);
    }
    read_ids(p)
}

pub fn read_ids(path: &Path) -> Result<HashSet<String>> {
    let text = std::fs::read_to_string(path).map_err(TaskError::io(path))?;
    let mut out = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| TaskError::Line {
                path: path.display().to_string(),
                line: i as u64 + 1,
                reason: format!("not JSON: {e}"),
            })?;
            let id = v
                .get("id")
                .and_then(field_str)
                .ok_or_else(|| TaskError::Line {
                    path: path.display().to_string(),
                    line: i as u64 + 1,
                    reason: "no \"id\" field".into(),
                })?;
            out.insert(id);
        } else {
            out.insert(line.to_owned());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gold.jsonl");
        std::fs::write(&p, "{\"id\":\"a\",\"label\":\"x\"}\n\n{\"id\":\"b\"}\n").unwrap();
        let e = read(&p, &Fields::default()).unwrap_err().to_string();
        assert!(
            e.contains("gold.jsonl, line 3") && e.contains("\"label\""),
            "{e}"
        );
        std::fs::write(
            &p,
            "{\"id\":\"a\",\"label\":\"x\"}\n{\"id\":\"a\",\"label\":\"y\"}\n",
        )
        .unwrap();
        let e = read(&p, &Fields::default()).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("twice"), "{e}");
        std::fs::write(&p, "{\"id\":7,\"label\":\"x\",\"movie\":\"m\"}\n").unwrap();
        let fields = Fields {
            group: Some("movie".into()),
            ..Default::default()
        };
        let g = read(&p, &fields).unwrap();
        assert_eq!((g[0].id.as_str(), g[0].group.as_deref()), ("7", Some("m")));
        // A row with its own text needs no id where text rows are allowed (eval), only there.
        std::fs::write(&p, "{\"text\":\"fine\",\"label\":\"x\"}\n").unwrap();
        assert!(read(&p, &Fields::default()).is_err());
        let text_rows = Fields {
            text_rows: true,
            ..Default::default()
        };
        let g = read(&p, &text_rows).unwrap();
        assert_eq!(
            (g[0].id.as_str(), g[0].text.as_deref()),
            ("line-1", Some("fine"))
        );
    }

    #[test]
    fn merging_adds_new_ids_and_refuses_a_relabel() {
        let existing = vec![distill_cache::task::GoldLabel {
            id: "a".into(),
            label: "x".into(),
        }];
        let g = |id: &str, label: &str, line| Gold {
            id: id.into(),
            label: label.into(),
            group: None,
            text: None,
            line,
        };
        let m = merge(
            &existing,
            vec![g("a", "x", 1), g("b", "y", 2)],
            "more.jsonl",
        )
        .unwrap();
        assert_eq!(
            m.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let e = merge(&existing, vec![g("a", "y", 3)], "more.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("more.jsonl, line 3:") && e.contains("\"x\""),
            "{e}"
        );
    }
}
