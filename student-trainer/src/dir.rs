//! Model folders on disk: the `distill.json` that marks one, and writing one atomically (filled aside,
//! then renamed into place), so a reader never sees a half-written student or checkpoint.

use crate::{Result, StudentError};
use std::path::{Path, PathBuf};

/// The file that marks a folder as distill's (what the model is and where it came from).
pub const INFO_FILE: &str = "distill.json";

/// Writes a model directory atomically: `fill` writes into a fresh sibling folder, which then replaces
/// `out`. An existing `out` that is not a distill model is never touched.
pub fn write_dir(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if out.exists() {
        let empty = out
            .read_dir()
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !out.is_dir() || (!empty && !out.join(INFO_FILE).is_file()) {
            return Err(StudentError::File {
                path: out.display().to_string(),
                reason: "exists and is not a distill model directory: choose another --out".into(),
            });
        }
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(StudentError::io(&parent))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let tmp = parent.join(format!(".{name}.partial-{nonce}"));
    std::fs::create_dir(&tmp).map_err(StudentError::io(&tmp))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = parent.join(format!(".{name}.old-{nonce}"));
    if out.exists() {
        if let Err(e) = std::fs::rename(out, &old) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(StudentError::io(out)(e));
        }
    }
    if let Err(e) = std::fs::rename(&tmp, out) {
        // Put the previous model back rather than leave nothing at `out`.
        if old.exists() {
            let _ = std::fs::rename(&old, out);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(StudentError::io(out)(e));
    }
    if old.exists() {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}
