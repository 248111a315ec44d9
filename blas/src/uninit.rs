//! Output buffers written once, without zeroing them first.
//!
//! A linear layer's output is first set to its bias (and residual), then accumulated into by the
//! product; zeroing it before that is a wasted pass over memory (multi-MB per layer: about 2% of a
//! MiniLM forward on two cores). [`collect_chunks`] hands out the new buffer's chunks uninitialised,
//! in parallel, and takes each back only as an initialised `&mut [f32]` over the same memory, which
//! safe code can only get from [`write_rows`] (every value written). So no value of the result is
//! ever read before it is written.

use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `len` values, written in parallel chunks of `chunk` values by `init(chunk_index, dst)`, which must
/// hand back `dst` itself, initialised (through [`write_rows`]). Panics if it hands back anything else.
pub fn collect_chunks<F>(len: usize, chunk: usize, init: F) -> Vec<f32>
where
    F: for<'a> Fn(usize, &'a mut [MaybeUninit<f32>]) -> &'a mut [f32] + Sync,
{
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, dst)| {
            let (at, n) = (dst.as_ptr().cast::<f32>(), dst.len());
            let done = init(i, dst);
            assert!(
                std::ptr::eq(done.as_ptr(), at) && done.len() == n,
                "collect_chunks: init must hand back its own chunk, initialised"
            );
        });
    // SAFETY: the capacity is at least `len`, and each of its chunks came back from `init` as an
    // initialised `&mut [f32]` over exactly that memory (checked above; a `&mut [f32]` cannot point to
    // uninitialised memory without unsafe code, which only this crate has, in `write_rows`). A panic
    // in `init` propagates before this line, dropping `v` at length 0.
    unsafe { v.set_len(len) };
    v
}

/// Writes `dst` row by row, `width` values each: row `i` is `base(i)`, plus `add` value by value when
/// given (a residual row plus the bias, or the bias alone); hands `dst` back initialised. Panics if a
/// row or `add` is shorter than `width` or `dst` is not whole rows.
pub fn write_rows<'a, 'b>(
    dst: &'a mut [MaybeUninit<f32>],
    width: usize,
    base: impl Fn(usize) -> &'b [f32],
    add: Option<&[f32]>,
) -> &'a mut [f32] {
    assert!(
        width > 0 && dst.len().is_multiple_of(width),
        "write_rows: {} values are not rows of {width}",
        dst.len()
    );
    for (i, row) in dst.chunks_exact_mut(width).enumerate() {
        let src = &base(i)[..width];
        match add {
            Some(add) => {
                for ((d, s), a) in row.iter_mut().zip(src).zip(&add[..width]) {
                    d.write(s + a);
                }
            }
            None => {
                for (d, s) in row.iter_mut().zip(src) {
                    d.write(*s);
                }
            }
        }
    }
    // SAFETY: every row of `dst` (it is whole rows, asserted above) was written just above, value by
    // value; `MaybeUninit<f32>` has the layout of `f32`.
    unsafe { &mut *(std::ptr::from_mut(dst) as *mut [f32]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_come_back_written_with_rows_and_the_added_row() {
        let (rows, width) = (37, 5);
        let base: Vec<f32> = (0..rows * width).map(|i| i as f32).collect();
        let add = [0.5f32, 1.0, 1.5, 2.0, 2.5];
        let chunk = 4 * width;
        let v = collect_chunks(rows * width, chunk, |c, dst| {
            let r0 = c * chunk / width;
            write_rows(
                dst,
                width,
                |i| &base[(r0 + i) * width..][..width],
                Some(&add),
            )
        });
        assert_eq!(v.len(), rows * width);
        for (i, x) in v.iter().enumerate() {
            assert_eq!(*x, base[i] + add[i % width], "{i}");
        }
        let plain = collect_chunks(2 * width, width, |_, dst| {
            write_rows(dst, width, |_| &add, None)
        });
        assert_eq!(plain, [add, add].concat());
    }

    #[test]
    #[should_panic(expected = "hand back its own chunk")]
    fn a_chunk_handed_back_that_is_not_its_own_is_refused() {
        let other: &'static mut [f32] = Box::leak(vec![1.0f32; 4].into_boxed_slice());
        let other = std::sync::Mutex::new(Some(other));
        collect_chunks(4, 4, |_, _dst| other.lock().unwrap().take().unwrap());
    }
}
