//! Weight matrices kept in their file's encoding (GGML blocks, f16, bf16) and dequantized to f32 one
//! matrix — or one slice of rows — at a time, right before the product that needs them.
//!
//! A decoder teacher's pass is compute-bound: every weight matrix meets hundreds to thousands of token
//! rows per batch, so turning a `[out, in]` matrix into f32 just before its product costs O(out·in)
//! against the product's O(rows·out·in) — under 1% at 256 rows. Keeping the blocks resident instead
//! of f32 copies is what lets a 0.5–8B teacher fit a worker's memory (a Q4_K matrix is 4.5 bits a
//! weight, its f32 copy 32).
//!
//! The dequantizers are written here over the bytes as GGUF stores them (ggml's block layouts), in
//! safe Rust, row by row, so any slice of rows can be dequantized into any buffer on any thread. They
//! compute what ggml's reference dequantizers compute (`scale × quant − min`, in f32), checked per type
//! against the `gguf` package's numpy dequantizer in the tests.

use half::{bf16, f16};
use rayon::prelude::*;
use std::ops::Range;

/// The encodings a [`Packed`] matrix can hold (ggml's tensor types by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl Encoding {
    /// The encoding of a GGML tensor type, `None` for the types kept dense (dequantized at load).
    pub fn of_ggml(t: candle_core::quantized::GgmlDType) -> Option<Self> {
        use candle_core::quantized::GgmlDType as G;
        Some(match t {
            G::F32 => Self::F32,
            G::F16 => Self::F16,
            G::BF16 => Self::Bf16,
            G::Q4_0 => Self::Q4_0,
            G::Q4_1 => Self::Q4_1,
            G::Q5_0 => Self::Q5_0,
            G::Q5_1 => Self::Q5_1,
            G::Q8_0 => Self::Q8_0,
            G::Q4K => Self::Q4K,
            G::Q5K => Self::Q5K,
            G::Q6K => Self::Q6K,
            _ => return None,
        })
    }

    /// Values per block and bytes per block.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
        }
    }

    /// Bytes of a row of `cols` values, `None` when `cols` is not a whole number of blocks or the
    /// size does not fit a `usize` (a damaged header's claim).
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        let (n, b) = self.block();
        cols.is_multiple_of(n)
            .then(|| (cols / n).checked_mul(b))
            .flatten()
    }

    /// Dequantizes whole blocks: `src` holds `dst.len() / block values` blocks.
    fn dequantize(self, src: &[u8], dst: &mut [f32]) {
        let (n, b) = self.block();
        debug_assert_eq!(src.len() / b * n, dst.len());
        match self {
            Self::F32 => {
                for (y, x) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *y = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
                }
            }
            Self::F16 => {
                for (y, x) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    *y = f16::from_le_bytes([x[0], x[1]]).to_f32();
                }
            }
            Self::Bf16 => {
                for (y, x) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    *y = bf16::from_le_bytes([x[0], x[1]]).to_f32();
                }
            }
            _ => {
                for (x, y) in src.chunks_exact(b).zip(dst.chunks_exact_mut(n)) {
                    match self {
                        Self::Q4_0 => q4_0(x.try_into().unwrap(), y.try_into().unwrap()),
                        Self::Q4_1 => q4_1(x.try_into().unwrap(), y.try_into().unwrap()),
                        Self::Q5_0 => q5_0(x.try_into().unwrap(), y.try_into().unwrap()),
                        Self::Q5_1 => q5_1(x.try_into().unwrap(), y.try_into().unwrap()),
                        Self::Q8_0 => q8_0(x.try_into().unwrap(), y.try_into().unwrap()),
                        Self::Q4K => q4_k(x.try_into().unwrap(), y.try_into().unwrap()),
                        Self::Q5K => q5_k(x.try_into().unwrap(), y.try_into().unwrap()),
                        Self::Q6K => q6_k(x.try_into().unwrap(), y.try_into().unwrap()),
                        Self::F32 | Self::F16 | Self::Bf16 => unreachable!("handled above"),
                    }
                }
            }
        }
    }
}

/// A row-major `[rows, cols]` matrix in its file's encoding.
#[derive(Clone)]
pub struct Packed {
    pub encoding: Encoding,
    pub rows: usize,
    pub cols: usize,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Packed[{}×{}; {:?}]",
            self.rows, self.cols, self.encoding
        )
    }
}

/// Rows dequantized per task when a matrix is dequantized in parallel.
const ROWS_PER_TASK: usize = 64;

impl Packed {
    /// A matrix from its encoded bytes; errors say what does not fit.
    pub fn new(
        encoding: Encoding,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
    ) -> Result<Self, String> {
        let row = encoding.row_bytes(cols).ok_or_else(|| {
            format!(
                "{cols} columns are not a whole number of {:?} blocks of {}",
                encoding,
                encoding.block().0
            )
        })?;
        let want = row.checked_mul(rows).ok_or("the size overflows")?;
        if bytes.len() != want {
            return Err(format!(
                "{} bytes for a {rows}×{cols} {encoding:?} matrix, which takes {want}",
                bytes.len()
            ));
        }
        Ok(Self {
            encoding,
            rows,
            cols,
            bytes,
        })
    }

    fn row_bytes(&self) -> usize {
        self.bytes.len() / self.rows.max(1)
    }

    /// Rows `rows` as f32 into `dst` (`rows.len() × cols` values), on this thread.
    pub fn dequantize_rows(&self, rows: Range<usize>, dst: &mut [f32]) {
        assert!(rows.end <= self.rows && dst.len() == rows.len() * self.cols);
        let rb = self.row_bytes();
        self.encoding
            .dequantize(&self.bytes[rows.start * rb..rows.end * rb], dst);
    }

    /// Rows `rows` as f32 into `dst`, split over rayon's threads.
    pub fn par_dequantize_rows(&self, rows: Range<usize>, dst: &mut [f32]) {
        assert!(rows.end <= self.rows && dst.len() == rows.len() * self.cols);
        let cols = self.cols.max(1);
        dst.par_chunks_mut(ROWS_PER_TASK * cols)
            .enumerate()
            .for_each(|(i, d)| {
                let r0 = rows.start + i * ROWS_PER_TASK;
                self.dequantize_rows(r0..r0 + d.len() / cols, d);
            });
    }

    /// Rows `ids` (gathered, in order) as f32: an embedding lookup. Panics on an id out of range (the
    /// tokenizer's ids are checked against the vocabulary at load).
    pub fn gather_rows(&self, ids: &[u32]) -> Vec<f32> {
        let mut out = vec![0f32; ids.len() * self.cols];
        out.par_chunks_mut(self.cols.max(1))
            .zip(ids.par_iter())
            .for_each(|(d, &id)| self.dequantize_rows(id as usize..id as usize + 1, d));
        out
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

// ggml's block layouts; offsets in bytes.

/// Q4_0: d (f16) @0, 16 bytes of nibbles @2; value j is low nibble of byte j, value j+16 the high one.
fn q4_0(x: &[u8; 18], y: &mut [f32; 32]) {
    let d = half(x, 0);
    for j in 0..16 {
        let q = x[2 + j];
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: d @0, m @2 (f16), nibbles @4; `q · d + m`.
fn q4_1(x: &[u8; 20], y: &mut [f32; 32]) {
    let (d, m) = (half(x, 0), half(x, 2));
    for j in 0..16 {
        let q = x[4 + j];
        y[j] = (q & 0x0F) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// Q5_0: d @0, the fifth bits qh (u32 LE) @2, nibbles @6; bit j of qh tops value j, bit j+16 value
/// j+16; `(q − 16) · d`.
fn q5_0(x: &[u8; 22], y: &mut [f32; 32]) {
    let d = half(x, 0);
    let qh = u32::from_le_bytes([x[2], x[3], x[4], x[5]]);
    for j in 0..16 {
        let q = x[6 + j];
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = (((q & 0x0F) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((q >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

/// Q5_1: d @0, m @2, qh @4, nibbles @8; `q · d + m`.
fn q5_1(x: &[u8; 24], y: &mut [f32; 32]) {
    let (d, m) = (half(x, 0), half(x, 2));
    let qh = u32::from_le_bytes([x[4], x[5], x[6], x[7]]);
    for j in 0..16 {
        let q = x[8 + j];
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((q & 0x0F) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((q >> 4) as u32 | h1) as f32 * d + m;
    }
}

/// Q8_0: d @0, 32 signed bytes @2; `q · d`.
fn q8_0(x: &[u8; 34], y: &mut [f32; 32]) {
    let d = half(x, 0);
    for j in 0..32 {
        y[j] = (x[2 + j] as i8) as f32 * d;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block's 12 scale bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K: d @0, dmin @2 (f16), 12 scale bytes @4, 128 bytes of nibbles @16. Four groups of 64 values:
/// low nibbles of 32 bytes then their high nibbles, each half with its own scale and min:
/// `d·sc · q − dmin·m`.
fn q4_k(x: &[u8; 144], y: &mut [f32; 256]) {
    let (d, dmin) = (half(x, 0), half(x, 2));
    let scales = &x[4..16];
    for g in 0..4 {
        let q = &x[16 + 32 * g..16 + 32 * (g + 1)];
        let (s1, m1) = scale_min_k4(2 * g, scales);
        let (s2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        let out = &mut y[64 * g..64 * (g + 1)];
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            out[32 + l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// Q5_K: d @0, dmin @2, 12 scale bytes @4, 32 bytes of fifth bits @16, 128 bytes of nibbles @48. As
/// Q4_K, with group g's low half topped by bit 2g of `qh[l]` and its high half by bit 2g+1.
fn q5_k(x: &[u8; 176], y: &mut [f32; 256]) {
    let (d, dmin) = (half(x, 0), half(x, 2));
    let scales = &x[4..16];
    let qh = &x[16..48];
    for g in 0..4 {
        let q = &x[48 + 32 * g..48 + 32 * (g + 1)];
        let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
        let (s1, m1) = scale_min_k4(2 * g, scales);
        let (s2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        let out = &mut y[64 * g..64 * (g + 1)];
        for l in 0..32 {
            let lo = (q[l] & 0x0F) + if qh[l] & u1 != 0 { 16 } else { 0 };
            let hi = (q[l] >> 4) + if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d1 * lo as f32 - m1;
            out[32 + l] = d2 * hi as f32 - m2;
        }
    }
}

/// Q6_K: low nibbles ql[128] @0, high 2-bit pairs qh[64] @128, 16 signed scales @192, d (f16) @208.
/// Two halves of 128 values; in half n, value `l + 32·i` (i = 0..4) takes its low 4 bits from
/// `ql[64n + l + 32·(i & 1)]` (low nibble for i < 2, high for i ≥ 2) and its top 2 bits from bits
/// `2i..2i+2` of `qh[32n + l]`; `d · scale[8n + l/16 + 2i] · (q − 32)`.
fn q6_k(x: &[u8; 210], y: &mut [f32; 256]) {
    let d = half(x, 208);
    for n in 0..2 {
        let ql = &x[64 * n..64 * n + 64];
        let qh = &x[128 + 32 * n..128 + 32 * n + 32];
        let sc = &x[192 + 8 * n..192 + 8 * n + 8];
        let out = &mut y[128 * n..128 * (n + 1)];
        for l in 0..32 {
            let is = l / 16;
            let h = qh[l];
            let q1 = ((ql[l] & 0x0F) | ((h & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((h >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((h >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// How a decoder's weights are held, and in what precision they are multiplied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Resident {
    /// In their file's encoding, dequantized to f32 one matrix at a time right before its product (on
    /// the CPU; other devices hold them as f32).
    #[default]
    Compact,
    /// Dequantized to f32 once at load (the reference path: about 4 bytes a weight).
    F32,
    /// bf16 on the device, products of bf16 inputs accumulated in f32; activations, norms, softmax and
    /// attention in f32. What GPUs run fast; another precision, so another teacher fingerprint.
    Bf16,
}

impl Resident {
    /// The compute dtype in the teacher's fingerprint: compact and f32 weights compute the same f32
    /// products (a cache written with either is a hit for the other); bf16 computes others.
    pub fn compute_dtype(self) -> &'static str {
        match self {
            Self::Compact | Self::F32 => distill_cache::model_dir::COMPUTE_DTYPE,
            Self::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Resident {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "compact" => Ok(Self::Compact),
            "f32" => Ok(Self::F32),
            // bf16 is a job's precision (`--precision bf16`), not a worker's choice.
            _ => Err(format!(
                "unknown weight residency {s:?}: use compact or f32"
            )),
        }
    }
}

impl std::fmt::Display for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Compact => "compact",
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

/// How a teacher is loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// How a decoder's weights stay in memory on the CPU.
    pub resident: Resident,
    /// Bytes of memory the model may take; `None`: what this machine has available.
    pub memory_limit: Option<u64>,
}

impl LoadOptions {
    /// These options for a job of `precision` ("" or "f32", or "bf16").
    pub fn for_precision(&self, precision: &str) -> Self {
        match precision {
            "bf16" => Self {
                resident: Resident::Bf16,
                ..*self
            },
            _ => *self,
        }
    }
}

/// Written as `compact` or `f32` in specs (bf16 comes from a job's precision).
impl serde::Serialize for Resident {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Resident {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QStorage, QTensor};
    use candle_core::Device;

    const ALL: &[(Encoding, GgmlDType)] = &[
        (Encoding::F32, GgmlDType::F32),
        (Encoding::F16, GgmlDType::F16),
        (Encoding::Bf16, GgmlDType::BF16),
        (Encoding::Q4_0, GgmlDType::Q4_0),
        (Encoding::Q4_1, GgmlDType::Q4_1),
        (Encoding::Q5_0, GgmlDType::Q5_0),
        (Encoding::Q5_1, GgmlDType::Q5_1),
        (Encoding::Q8_0, GgmlDType::Q8_0),
        (Encoding::Q4K, GgmlDType::Q4K),
        (Encoding::Q5K, GgmlDType::Q5K),
        (Encoding::Q6K, GgmlDType::Q6K),
    ];

    /// Random bytes for `rows × cols` values of `e`, with every float field a finite value in [-2, 2].
    fn random_matrix(e: Encoding, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut unit = move || (next() >> 11) as f32 / (1u64 << 53) as f32 * 4.0 - 2.0;
        let (n, b) = e.block();
        let blocks = rows * cols / n;
        let mut bytes: Vec<u8> = Vec::with_capacity(blocks * b);
        let f16_at: &[usize] = match e {
            Encoding::Q4_0 | Encoding::Q5_0 | Encoding::Q8_0 => &[0],
            Encoding::Q4_1 | Encoding::Q5_1 | Encoding::Q4K | Encoding::Q5K => &[0, 2],
            Encoding::Q6K => &[208],
            _ => &[],
        };
        for _ in 0..blocks {
            match e {
                Encoding::F32 => bytes.extend(unit().to_le_bytes()),
                Encoding::F16 => bytes.extend(f16::from_f32(unit()).to_le_bytes()),
                Encoding::Bf16 => bytes.extend(bf16::from_f32(unit()).to_le_bytes()),
                _ => {
                    let start = bytes.len();
                    for _ in 0..b {
                        bytes.push((unit().to_bits() >> 7) as u8 ^ (unit().to_bits() as u8));
                    }
                    for &at in f16_at {
                        let v = f16::from_f32(unit()).to_le_bytes();
                        bytes[start + at..start + at + 2].copy_from_slice(&v);
                    }
                }
            }
        }
        bytes
    }

    /// Equal up to f32 rounding (1e-6 relative), and as many.
    fn assert_same(ours: &[f32], theirs: &[f32], what: &str) {
        assert_eq!(ours.len(), theirs.len(), "{what}");
        for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{what}, value {i}: {a} vs {b}"
            );
        }
    }

    fn dequantized(e: Encoding, rows: usize, cols: usize, bytes: &[u8]) -> Vec<f32> {
        let p = Packed::new(e, rows, cols, bytes.to_vec()).unwrap();
        let mut out = vec![0f32; rows * cols];
        p.par_dequantize_rows(0..rows, &mut out);
        out
    }

    #[test]
    fn every_encoding_dequantizes_as_candle_does() {
        let (rows, cols) = (3, 512);
        for &(e, g) in ALL {
            let bytes = random_matrix(e, rows, cols, 11);
            let ours = dequantized(e, rows, cols, &bytes);
            let storage = QStorage::from_data(bytes.clone().into(), &Device::Cpu, g).unwrap();
            let theirs: Vec<f32> = QTensor::new(storage, (rows, cols))
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(ours.iter().any(|&x| x != 0.0), "{e:?}: all zero");
            assert_same(&ours, &theirs, &format!("{e:?} against candle"));
        }
    }

    #[test]
    fn every_encoding_dequantizes_as_the_gguf_package_does() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let python = std::env::var("DISTILL_PYTHON").unwrap_or_else(|_| "python3".into());
        let has = std::process::Command::new(&python)
            .args(["-c", "import gguf.quants, numpy"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !has {
            assert!(
                std::env::var("DISTILL_REQUIRE_ALL").as_deref() != Ok("1"),
                "no python with gguf and numpy (scripts/test.sh installs them)"
            );
            eprintln!("skipped: no python with gguf and numpy");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (rows, cols) = (4, 768);
        for &(e, g) in ALL {
            let bytes = random_matrix(e, rows, cols, 29);
            let (raw, out) = (tmp.path().join("in.bin"), tmp.path().join("out.f32"));
            std::fs::write(&raw, &bytes).unwrap();
            let name = format!("{g:?}").replace("K", "_K").to_uppercase();
            let status = std::process::Command::new(&python)
                .arg(root.join("scripts/gguf_dequant.py"))
                .args(["--type", &name, "--rows", &rows.to_string()])
                .args(["--cols", &cols.to_string(), "--raw"])
                .arg(&raw)
                .arg("--out")
                .arg(&out)
                .output()
                .unwrap();
            assert!(
                status.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&status.stderr)
            );
            let theirs: Vec<f32> = std::fs::read(&out)
                .unwrap()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let ours = dequantized(e, rows, cols, &bytes);
            assert_same(&ours, &theirs, &format!("{name} against gguf"));
        }
    }

    #[test]
    fn rows_gathered_and_sliced_equal_the_whole() {
        let (rows, cols) = (70, 64);
        let bytes = random_matrix(Encoding::Q8_0, rows, cols, 3);
        let p = Packed::new(Encoding::Q8_0, rows, cols, bytes.clone()).unwrap();
        let whole = dequantized(Encoding::Q8_0, rows, cols, &bytes);
        let got = p.gather_rows(&[5, 69, 0, 5]);
        for (j, r) in [5usize, 69, 0, 5].into_iter().enumerate() {
            assert_eq!(
                got[j * cols..(j + 1) * cols],
                whole[r * cols..(r + 1) * cols]
            );
        }
        let mut part = vec![0f32; 10 * cols];
        p.dequantize_rows(60..70, &mut part);
        assert_eq!(part[..], whole[60 * cols..]);
    }

    #[test]
    fn sizes_that_do_not_fit_are_refused() {
        assert!(Packed::new(Encoding::Q4K, 2, 100, vec![0; 288]).is_err());
        assert!(Packed::new(Encoding::Q4K, 2, 256, vec![0; 287]).is_err());
        assert!(Packed::new(Encoding::Q4K, 2, 256, vec![0; 288]).is_ok());
    }
}
