//! The memory a decoder teacher will take, estimated from its file's header before any weight is
//! read, against the memory this machine (or its container) has: a model that cannot fit is refused
//! in one line that names the file and both figures, not killed by the kernel halfway through a shard.

use crate::packed::{Encoding, Resident};
use crate::{Result, TeacherError};
use candle_core::quantized::gguf_file::Content;

const MB: u64 = 1 << 20;

/// What computing takes beside the weights (activations of a 4096-token batch, one position chunk of
/// logits, the tokenizer, the runtime), a round allowance.
pub const WORKING_BYTES: u64 = 400 * MB;

/// Bytes of memory available to this process: the kernel's `MemAvailable`, lowered by a cgroup limit
/// (v2 `memory.max` less `memory.current`, or v1) where one is set. `None` where neither can be read.
pub fn available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let cgroup = match (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        (Some(max), Some(cur)) => Some(max.saturating_sub(cur)),
        _ => match (
            read("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
            read("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
        ) {
            (Some(max), Some(cur)) if max < (1 << 60) => Some(max.saturating_sub(cur)),
            _ => None,
        },
    };
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The estimate for one model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Needs {
    /// The weights as they stay resident.
    pub weights: u64,
    /// The largest f32 matrix dequantized at once (compact), or the transient copies of loading (f32).
    pub scratch: u64,
}

impl Needs {
    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.scratch)
            .saturating_add(WORKING_BYTES)
    }
}

/// The memory a GGUF decoder takes with its weights resident as `resident` (on the CPU).
pub fn gguf_needs(content: &Content, resident: Resident) -> Needs {
    // Saturating arithmetic throughout: the header's shapes are checked against the file's size,
    // but a matrix with a zero dimension holds no bytes whatever its other dimension claims.
    let (mut weights, mut largest, mut embed, mut tied) = (0u64, 0u64, 0u64, true);
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims();
        let elems = dims.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64));
        let bytes = match (resident, Encoding::of_ggml(info.ggml_dtype), dims) {
            (Resident::Compact, Some(e), &[rows, cols]) => e
                .row_bytes(cols)
                .map(|r| (r as u64).saturating_mul(rows as u64))
                .unwrap_or(elems.saturating_mul(4)),
            (Resident::Bf16, _, &[_, _]) => elems.saturating_mul(2),
            _ => elems.saturating_mul(4),
        };
        weights = weights.saturating_add(bytes);
        match name.as_str() {
            "output.weight" => tied = false,
            "token_embd.weight" => embed = elems,
            _ if dims.len() == 2 => largest = largest.max(elems),
            _ => {}
        }
    }
    let scratch = match resident {
        // gate and up are fused: twice the largest matrix; the head goes in slices.
        Resident::Compact => largest
            .saturating_mul(8)
            .max(crate::linear::SLICE_VALUES as u64 * 4),
        // A tied head is a transposed copy of the embeddings; loading holds one f32 matrix and a
        // fused copy at a time.
        Resident::F32 | Resident::Bf16 => {
            let width = if resident == Resident::F32 { 4 } else { 2 };
            if tied {
                weights = weights.saturating_add(embed.saturating_mul(width));
            }
            embed.max(largest.saturating_mul(2)).saturating_mul(4)
        }
    };
    Needs { weights, scratch }
}

/// Refuses a model that needs more memory than `available`, naming it and both figures.
pub fn check(
    location: &str,
    needs: Needs,
    resident: Resident,
    available: Option<u64>,
) -> Result<()> {
    let Some(have) = available else {
        return Ok(());
    };
    if needs.total() <= have {
        return Ok(());
    }
    Err(TeacherError::Model {
        location: location.to_owned(),
        reason: format!(
            "needs about {} MB of memory ({} MB of weights kept {resident}, {} MB to dequantize into, {} MB to compute) but {} MB are available: use a more quantized file, free memory or label on a larger machine",
            needs.total().div_ceil(MB),
            needs.weights.div_ceil(MB),
            needs.scratch.div_ceil(MB),
            WORKING_BYTES / MB,
            have / MB
        ),
    })
}

/// Largest safetensors header read (the JSON listing the tensors); a larger claim is a damaged file.
const MAX_HEADER_BYTES: u64 = 100 * MB;

/// The memory an HF checkpoint (safetensors files) takes loaded as f32 (or bf16 where `resident`
/// says so), from each file's header alone: every tensor's elements at the resident width, plus the
/// largest tensor once more for the copy a load makes.
pub fn safetensors_needs(files: &[std::path::PathBuf], resident: Resident) -> Result<Needs> {
    let width = if resident == Resident::Bf16 { 2 } else { 4 };
    let (mut weights, mut largest) = (0u64, 0u64);
    for f in files {
        for elems in safetensors_elems(f)? {
            weights = weights.saturating_add(elems.saturating_mul(width));
            largest = largest.max(elems);
        }
    }
    Ok(Needs {
        weights,
        scratch: largest.saturating_mul(4),
    })
}

/// The element count of each tensor a safetensors file's header lists (the header's length checked
/// against the file's size before it is read).
fn safetensors_elems(path: &std::path::Path) -> Result<Vec<u64>> {
    use std::io::Read;
    let bad = |reason: String| TeacherError::Model {
        location: path.display().to_string(),
        reason,
    };
    let mut f = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad("shorter than a safetensors header".into()))?;
    let n = u64::from_le_bytes(len);
    if n > size.saturating_sub(8) || n > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "its safetensors header claims {n} bytes in a file of {size}: a damaged file"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("cannot read its header: {e}")))?;
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("its safetensors header is not JSON: {e}")))?;
    Ok(json
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .map(|(_, v)| {
            v["shape"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .map(|x| x.as_u64().unwrap_or(0))
                        .fold(1u64, u64::saturating_mul)
                })
                .unwrap_or(0)
        })
        .collect())
}
