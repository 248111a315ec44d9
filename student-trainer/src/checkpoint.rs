//! Training checkpoints, shared by both students: one folder holding `state.safetensors` (named
//! tensors: weights and optimiser moments) and `position.json` (which run, and where in it), written
//! aside and renamed like a model directory. A checkpoint is only resumed by the run that wrote it.

use crate::dir::{write_dir, INFO_FILE};
use crate::{Result, StudentError};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Where a run stands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Position {
    /// A fingerprint of everything that decides the run's result.
    pub run: String,
    /// Epochs completed.
    pub epoch: usize,
    /// Batches of epoch `epoch` already done (0 at an epoch boundary).
    pub batch: u64,
    /// Optimiser steps done.
    pub step: u64,
}

/// The tensors of a checkpoint, with errors that name the folder and say how to recover.
#[derive(Debug)]
pub struct State {
    dir: String,
    tensors: HashMap<String, Tensor>,
}

fn bad(dir: &str, reason: String) -> StudentError {
    StudentError::File {
        path: dir.to_owned(),
        reason: format!("{reason}: delete the checkpoint to start over"),
    }
}

impl State {
    /// The tensor `name`, if the checkpoint has one.
    pub fn find(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// The tensor `name`, which must have `dims`.
    pub fn get(&self, name: &str, dims: &[usize]) -> Result<&Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| bad(&self.dir, format!("state.safetensors has no {name}")))?;
        if t.dims() != dims {
            return Err(bad(
                &self.dir,
                format!("{name} has shape {:?}, expected {dims:?}", t.dims()),
            ));
        }
        Ok(t)
    }
}

/// Writes a checkpoint (replacing the previous one).
pub fn save(dir: &Path, tensors: &HashMap<String, Tensor>, pos: &Position) -> Result<()> {
    write_dir(dir, |tmp| {
        candle_core::safetensors::save(tensors, tmp.join("state.safetensors"))?;
        let p = tmp.join("position.json");
        std::fs::write(&p, serde_json::to_vec_pretty(pos).expect("json"))
            .map_err(StudentError::io(&p))?;
        let i = tmp.join(INFO_FILE);
        std::fs::write(&i, b"{\"kind\":\"checkpoint\"}").map_err(StudentError::io(&i))
    })
}

/// Reads the checkpoint in `dir` if it was written by `run`; `None` if there is none or it is from
/// another run (with a warning). A corrupt checkpoint is an error naming it.
pub fn load(dir: &Path, run: &str, device: &Device) -> Result<Option<(Position, State)>> {
    let name = dir.display().to_string();
    let pos_path = dir.join("position.json");
    if !pos_path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&pos_path).map_err(StudentError::io(&pos_path))?;
    let pos: Position =
        serde_json::from_slice(&bytes).map_err(|e| bad(&name, format!("position.json: {e}")))?;
    if pos.run != run {
        tracing::warn!(checkpoint = %name, "checkpoint is from a run with other settings; starting over");
        return Ok(None);
    }
    let tensors =
        candle_core::safetensors::load(dir.join("state.safetensors"), device).map_err(|e| {
            bad(
                &name,
                format!(
                    "state.safetensors is corrupt ({})",
                    distill_teacher::error::without_backtrace(e)
                ),
            )
        })?;
    Ok(Some((pos, State { dir: name, tensors })))
}

/// Marks a folder as a distill checkpoint folder (only such folders are ever deleted).
const CHECKPOINT_MARKER: &str = ".distill-checkpoint";

/// The checkpoint folder of a training run: `given`, or `<out>.checkpoint` next to `out`.
pub fn folder_for(out: &Path, given: Option<&Path>) -> std::path::PathBuf {
    given.map(Path::to_owned).unwrap_or_else(|| {
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        out.with_file_name(format!("{name}.checkpoint"))
    })
}

/// Creates (or reuses) a checkpoint folder; refuses a non-empty folder that is not one.
pub fn prepare(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = dir
            .read_dir()
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty && !dir.join(CHECKPOINT_MARKER).is_file() {
            return Err(StudentError::File {
                path: dir.display().to_string(),
                reason: "exists and is not a distill checkpoint: choose another --checkpoint"
                    .into(),
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(StudentError::io(dir))?;
    let marker = dir.join(CHECKPOINT_MARKER);
    std::fs::write(&marker, b"").map_err(StudentError::io(&marker))?;
    Ok(())
}

/// Removes a checkpoint folder once the model is written (only if it carries the marker).
pub fn remove(dir: &Path) {
    if dir.join(CHECKPOINT_MARKER).is_file() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
