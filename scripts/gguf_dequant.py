#!/usr/bin/env python3
"""Reference dequantizer for GGML tensor data, through the `gguf` package (gguf.quants.dequantize).

Used by the Rust tests to check the project's own dequantizers. It imports nothing from the project.
Dependencies (versions used when it was written): numpy (2.4.6), gguf==0.19.0. Install with
    python3 -m pip install numpy==2.4.6 && python3 -m pip install --no-deps gguf==0.19.0

CLI
---
  python3 scripts/gguf_dequant.py --type Q4_K --rows R --cols C --raw IN.bin --out OUT.f32
      IN.bin: the raw bytes of an R x C tensor as stored in a GGUF tensor data section (row-major:
      each of the R rows is C/block_size consecutive blocks; C must be a multiple of the block size).
      OUT.f32: R*C little-endian float32 values, row-major, dequantized by gguf.quants.dequantize.
  python3 scripts/gguf_dequant.py --random SEED --type Q6_K --rows R --cols C --raw IN.bin [--out OUT.f32]
      WRITES IN.bin instead: random bytes (numpy default_rng(SEED)), with every f16 scale/min field of
      every block replaced by a finite f16 drawn uniformly from [-2, 2] (F32/F16/BF16: every value
      uniform in [-2, 2]); with --out it also writes the dequantized values.
  python3 scripts/gguf_dequant.py --self-test
      Checks the formulas of the table below, written out element by element in this file (`formula`),
      against gguf.quants.dequantize on random blocks of every type: bit-for-bit equality.
Types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (case and "_" ignored).
gguf 0.19.0 dequantizes all 13 of them (none is missing; the IQ*, TQ* and FP4 types are out of scope here).

Block layouts (read from gguf 0.19.0's constants.GGML_QUANT_SIZES and quants.py; all multi-byte fields
little-endian; "f16" = IEEE half, widened exactly to f32; QK_K = 256)
---------------------------------------------------------------------------------------------------
Notation: one block holds B values y[0..B) and N bytes b[0..N); x >> k is a logical shift of an
unsigned byte; "&" masks. Every product below is exact in f32 (at most 23 significant bits), so the
only rounding is the single f32 add/subtract of the min term (any evaluation order or an FMA gives
the same bits).

F32   1 value,  4 bytes: f32 @0.                                          y = the f32
F16   1 value,  2 bytes: f16 @0.                                          y = f32(the f16)
BF16  1 value,  2 bytes: u16 @0 = the top half of an f32.                 y = f32 from bits (u16 << 16)

Q4_0  32 values, 18 bytes: d f16 @0, qs[16] @2.
      j in 0..16: y[j] = d * ((qs[j] & 0x0F) - 8);  y[j+16] = d * ((qs[j] >> 4) - 8)
Q4_1  32 values, 20 bytes: d f16 @0, m f16 @2, qs[16] @4.
      j in 0..16: y[j] = d * (qs[j] & 0x0F) + m;    y[j+16] = d * (qs[j] >> 4) + m
Q5_0  32 values, 22 bytes: d f16 @0, qh u32 @2 (bytes 2..6, little-endian), qs[16] @6.
      j in 0..16: q[j]    = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4)
                  q[j+16] = (qs[j] >> 4)   | (((qh >> (j + 16)) & 1) << 4)
      y[i] = d * (q[i] - 16)                       (bit i of qh is the 5th bit of value i)
Q5_1  32 values, 24 bytes: d f16 @0, m f16 @2, qh u32 @4 (bytes 4..8, little-endian), qs[16] @8.
      q[i] as Q5_0 (low nibbles -> values 0..16, high nibbles -> 16..32, bit i of qh -> bit 4 of q[i]);
      y[i] = d * q[i] + m
Q8_0  32 values, 34 bytes: d f16 @0, qs i8[32] @2.                     y[i] = d * qs[i]

Q2_K  256 values, 84 bytes: scales[16] @0, qs[64] @16, d f16 @80, dmin f16 @82.
      i = 128*h + 32*k + l (h in 0..2, k in 0..4, l in 0..32): q = (qs[32*h + l] >> (2*k)) & 3;
      s = i / 16 (16 sub-blocks of 16): y[i] = (d * (scales[s] & 0x0F)) * q - dmin * (scales[s] >> 4)
Q3_K  256 values, 110 bytes: hmask[32] @0, qs[64] @32, scales[12] @96, d f16 @108.
      16 six-bit scales, s in 0..16:
        lo = (s < 8 ? scales[s] & 0x0F : scales[s - 8] >> 4)
        hi = (scales[8 + s % 4] >> (2 * (s / 4))) & 3
        sc[s] = (lo | hi << 4) - 32                                      (signed, -32..31)
      i = 128*h + 32*k + l (h in 0..2, k in 0..4, l in 0..32): low = (qs[32*h + l] >> (2*k)) & 3;
      hbit = (hmask[i % 32] >> (i / 32)) & 1;  q = low - (hbit ? 0 : 4)   (-4..3: a SET bit means no -4)
      y[i] = (d * sc[i / 16]) * q
Q4_K  256 values, 144 bytes: d f16 @0, dmin f16 @2, scales[12] @4, qs[128] @16.
      8 six-bit scales sc[j] and mins m[j] from the 12 bytes b = scales[0..12]:
        j in 0..4: sc[j] = b[j] & 63;                            m[j] = b[j+4] & 63
        j in 4..8: sc[j] = (b[j+4] & 0x0F) | ((b[j-4] >> 6) << 4); m[j] = (b[j+4] >> 4) | ((b[j] >> 6) << 4)
      i = 64*c + 32*h + l (c in 0..4, h in 0..2, l in 0..32): q = (qs[32*c + l] >> (4*h)) & 0x0F,
      i.e. sub-block j = i / 32 = 2c + h takes the low (h = 0) or high (h = 1) nibbles of qs[32c..32c+32];
      y[i] = (d * sc[j]) * q - dmin * m[j]
Q5_K  256 values, 176 bytes: d f16 @0, dmin f16 @2, scales[12] @4, qh[32] @16, qs[128] @48.
      sc[j], m[j] as Q4_K; low nibble as Q4_K (from qs); j = i / 32;
      q = low | (((qh[i % 32] >> j) & 1) << 4)                            (0..31)
      y[i] = (d * sc[j]) * q - dmin * m[j]
Q6_K  256 values, 210 bytes: ql[128] @0, qh[64] @128, scales i8[16] @192, d f16 @208.
      i = 128*h + r (h in 0..2, r in 0..128):
        low = (ql[64*h + r % 64] >> (4 * (r / 64))) & 0x0F
        high = (qh[32*h + r % 32] >> (2 * (r / 32))) & 3
        q = (low | high << 4) - 32                                        (-32..31)
      y[i] = (d * scales[i / 16]) * q                                     (scales signed int8)
"""

import argparse

import numpy as np

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
         "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
# (values per block, bytes per block, byte offsets of the f16 scale/min fields) as in the docstring.
LAYOUT = {
    "F32": (1, 4, ()), "F16": (1, 2, ()), "BF16": (1, 2, ()),
    "Q4_0": (32, 18, (0,)), "Q4_1": (32, 20, (0, 2)), "Q5_0": (32, 22, (0,)),
    "Q5_1": (32, 24, (0, 2)), "Q8_0": (32, 34, (0,)),
    "Q2_K": (256, 84, (80, 82)), "Q3_K": (256, 110, (108,)), "Q4_K": (256, 144, (0, 2)),
    "Q5_K": (256, 176, (0, 2)), "Q6_K": (256, 210, (208,)),
}


def qtype_of(name):
    """The canonical name (case and underscores ignored: q4k, Q4_K) and gguf's type."""
    canon = {t.replace("_", ""): t for t in TYPES}.get(name.upper().replace("_", ""))
    if canon is None:
        raise SystemExit(f"error: unsupported --type {name}; one of {', '.join(TYPES)}")
    name = canon
    qt = GGMLQuantizationType[name]
    assert GGML_QUANT_SIZES[qt] == LAYOUT[name][:2], (name, GGML_QUANT_SIZES[qt])
    return name, qt


def row_bytes(name, cols):
    block, size, _ = LAYOUT[name]
    if cols % block:
        raise SystemExit(f"error: --cols {cols} is not a multiple of {name}'s block of {block} values")
    return cols // block * size


def dequant(name, qt, raw, rows, cols):
    """raw bytes of a rows x cols tensor -> float32 [rows, cols] via gguf.quants.dequantize."""
    n = rows * row_bytes(name, cols)
    if len(raw) != n:
        raise SystemExit(f"error: {name} {rows}x{cols} takes {n} bytes, the input has {len(raw)}")
    data = np.frombuffer(raw, dtype=np.uint8).reshape(rows, -1)
    out = np.asarray(dequantize(data, qt), dtype=np.float32)
    return out.reshape(rows, cols)


def random_raw(name, rows, cols, seed):
    """Random but valid bytes of a rows x cols tensor (finite f16 scales in [-2, 2])."""
    rng = np.random.default_rng(seed)
    block, size, f16_at = LAYOUT[name]
    if name in ("F32", "F16", "BF16"):
        v = rng.uniform(-2.0, 2.0, rows * cols).astype(np.float32)
        if name == "F32":
            return v.astype("<f4").tobytes()
        if name == "F16":
            return v.astype("<f2").tobytes()
        return (v.view(np.uint32) >> 16).astype("<u2").tobytes()
    n_blocks = rows * row_bytes(name, cols) // size
    blocks = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for off in f16_at:
        h = rng.uniform(-2.0, 2.0, n_blocks).astype("<f2")
        blocks[:, off:off + 2] = h.view(np.uint8).reshape(n_blocks, 2)
    return blocks.tobytes()


# ------------------------------------------------------------- the docstring's formulas, element-wise
def f16(b, off):
    return np.float32(np.frombuffer(bytes(b[off:off + 2]), dtype="<f2")[0])


def formula(name, b):
    """One block's values by the docstring's table (plain Python loops, f32 arithmetic)."""
    f32 = np.float32
    y = []
    if name == "F32":
        return [np.frombuffer(bytes(b), dtype="<f4")[0]]
    if name == "F16":
        return [f16(b, 0)]
    if name == "BF16":
        return [np.array([int.from_bytes(bytes(b[0:2]), "little") << 16], dtype=np.uint32)
                .view(np.float32)[0]]
    if name in ("Q4_0", "Q4_1"):
        d = f16(b, 0)
        m = f16(b, 2) if name == "Q4_1" else None
        qs = b[4:20] if m is not None else b[2:18]
        q = [qs[j] & 0x0F for j in range(16)] + [qs[j] >> 4 for j in range(16)]
        return [d * f32(v - 8) if m is None else d * f32(v) + m for v in q]
    if name in ("Q5_0", "Q5_1"):
        d = f16(b, 0)
        m = f16(b, 2) if name == "Q5_1" else None
        at = 4 if m is not None else 2
        qh = int.from_bytes(bytes(b[at:at + 4]), "little")
        qs = b[at + 4:at + 20]
        q = ([(qs[j] & 0x0F) | (((qh >> j) & 1) << 4) for j in range(16)]
             + [(qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4) for j in range(16)])
        return [d * f32(v - 16) if m is None else d * f32(v) + m for v in q]
    if name == "Q8_0":
        d = f16(b, 0)
        return [d * f32(np.int8(np.uint8(v))) for v in b[2:34]]
    if name == "Q2_K":
        scales, qs, d, dmin = b[0:16], b[16:80], f16(b, 80), f16(b, 82)
        for i in range(256):
            h, k, l = i // 128, (i % 128) // 32, i % 32
            q = (qs[32 * h + l] >> (2 * k)) & 3
            s = scales[i // 16]
            y.append((d * f32(s & 0x0F)) * f32(q) - dmin * f32(s >> 4))
        return y
    if name == "Q3_K":
        hmask, qs, sb, d = b[0:32], b[32:96], b[96:108], f16(b, 108)
        sc = []
        for s in range(16):
            lo = sb[s] & 0x0F if s < 8 else sb[s - 8] >> 4
            hi = (sb[8 + s % 4] >> (2 * (s // 4))) & 3
            sc.append((lo | hi << 4) - 32)
        for i in range(256):
            h, k, l = i // 128, (i % 128) // 32, i % 32
            low = (qs[32 * h + l] >> (2 * k)) & 3
            hbit = (hmask[i % 32] >> (i // 32)) & 1
            q = low - (0 if hbit else 4)
            y.append((d * f32(sc[i // 16])) * f32(q))
        return y
    if name in ("Q4_K", "Q5_K"):
        d, dmin, sb = f16(b, 0), f16(b, 2), b[4:16]
        sc, mn = [], []
        for j in range(8):
            if j < 4:
                sc.append(sb[j] & 63)
                mn.append(sb[j + 4] & 63)
            else:
                sc.append((sb[j + 4] & 0x0F) | ((sb[j - 4] >> 6) << 4))
                mn.append((sb[j + 4] >> 4) | ((sb[j] >> 6) << 4))
        qh, qs = (b[16:48], b[48:176]) if name == "Q5_K" else (None, b[16:144])
        for i in range(256):
            c, h, l = i // 64, (i % 64) // 32, i % 32
            j = i // 32
            q = (qs[32 * c + l] >> (4 * h)) & 0x0F
            if qh is not None:
                q |= ((qh[i % 32] >> j) & 1) << 4
            y.append((d * f32(sc[j])) * f32(q) - dmin * f32(mn[j]))
        return y
    if name == "Q6_K":
        ql, qh, scales, d = b[0:128], b[128:192], b[192:208], f16(b, 208)
        for i in range(256):
            h, r = i // 128, i % 128
            low = (ql[64 * h + r % 64] >> (4 * (r // 64))) & 0x0F
            high = (qh[32 * h + r % 32] >> (2 * (r // 32))) & 3
            q = (low | high << 4) - 32
            s = int(np.int8(np.uint8(scales[i // 16])))
            y.append((d * f32(s)) * f32(q))
        return y
    raise ValueError(name)


def self_test():
    failed = 0
    for seed, name in enumerate(TYPES):
        _, qt = qtype_of(name)
        block, size, _ = LAYOUT[name]
        rows, cols = 3, block * (2 if block > 1 else 64)
        raw = random_raw(name, rows, cols, 1000 + seed)
        theirs = dequant(name, qt, raw, rows, cols).ravel()
        b = np.frombuffer(raw, dtype=np.uint8)
        ours = np.array([v for k in range(0, len(b), size)
                         for v in formula(name, [int(x) for x in b[k:k + size]])], dtype=np.float32)
        same = np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))
        failed += not same
        print(f"{name:5} {block:3} values/{size:3} bytes per block: "
              f"{'bit-identical' if same else 'MISMATCH'} over {theirs.size} values "
              f"(range {theirs.min():.3g} .. {theirs.max():.3g})")
    if failed:
        raise SystemExit(f"error: {failed} type(s) differ from gguf.quants.dequantize")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--type", help="F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K .. Q6_K")
    ap.add_argument("--rows", type=int)
    ap.add_argument("--cols", type=int)
    ap.add_argument("--raw", help="raw GGML block bytes (read; written with --random)")
    ap.add_argument("--out", help="little-endian float32 output")
    ap.add_argument("--random", type=int, metavar="SEED",
                    help="write a random valid --raw file instead of reading one")
    ap.add_argument("--self-test", action="store_true",
                    help="check the docstring's formulas against gguf on random blocks")
    args = ap.parse_args(argv)
    if args.self_test:
        self_test()
        return
    if not (args.type and args.rows is not None and args.cols is not None and args.raw):
        ap.error("--type, --rows, --cols and --raw are required")
    if args.random is None and not args.out:
        ap.error("--out is required (unless --random)")
    if args.rows < 0 or args.cols < 0:
        ap.error("--rows and --cols must be >= 0")
    name, qt = qtype_of(args.type)
    if args.random is not None:
        row_bytes(name, args.cols)
        raw = random_raw(name, args.rows, args.cols, args.random)
        with open(args.raw, "wb") as f:
            f.write(raw)
    else:
        with open(args.raw, "rb") as f:
            raw = f.read()
    if args.out:
        values = dequant(name, qt, raw, args.rows, args.cols)
        values.astype("<f4").tofile(args.out)


if __name__ == "__main__":
    main()
