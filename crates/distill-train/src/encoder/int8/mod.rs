//! int8 dense layers for the CPU encoder forward: weights quantised once (symmetric, one scale
//! per output channel, values in ±127), activations quantised per row on the fly (symmetric, one
//! scale per row), products summed in i32 and scaled back into an f32 destination that already
//! holds bias and residual, exactly as the f32 path accumulates into it.
//!
//! Why this exists: a served student's cost and latency are its forward pass, and most of that is
//! the encoder's dense layers. int8 weights are a quarter of the bytes (a batch of one reads
//! every weight once), and one VNNI instruction does four times the multiply-adds of an f32 FMA.
//!
//! One packed layout serves every kernel: output columns in panels of [`PANEL`], k in groups of
//! four, each (panel, group) one 64-byte block `[16 columns][4 k]` (what one `vpdpbusd` on a zmm
//! consumes). Weights are packed when the model loads, never per call.
//!
//! Every kernel computes the same i32 sums exactly: none can saturate (the AVX2 one multiplies
//! |a| by sign(a)·w so a pair of products stays under 2·127² < 2¹⁵; the VNNI ones add 128 to the
//! activations and subtract 128·Σw afterwards), and all share one row quantiser and one
//! dequantising epilogue with no fused multiply-add. So every path gives bit-identical f32 results,
//! and the tests compare each against a plain-Rust reference on the unpacked weights.

mod kernels;

pub use kernels::Kernel;
use rayon::prelude::*;

/// Output columns per packed panel.
pub const PANEL: usize = 16;
/// Bytes of one (panel, k-group) block.
const BLOCK: usize = PANEL * 4;

/// A dense layer `y += x · Wᵀ` with int8 weights (Hugging Face / PyTorch layout: W is
/// (out_features, in_features)).
#[derive(Clone, PartialEq)]
pub struct QuantizedLinear {
    out_features: usize,
    in_features: usize,
    /// ceil(in_features / 4).
    groups: usize,
    /// ceil(out_features / PANEL).
    panels: usize,
    /// panels × groups × BLOCK bytes; padding columns and k are zero.
    packed: Vec<i8>,
    /// One per column, zero past `out_features`.
    scales: Vec<f32>,
    /// Σₖ w[c][k] per column, for the VNNI kernels' unsigned-activation offset.
    col_sums: Vec<i32>,
}

impl std::fmt::Debug for QuantizedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantizedLinear({}→{})",
            self.in_features, self.out_features
        )
    }
}

/// Rounds to the nearest integer, ties to even, for |v| < 2²²: the 1.5·2²³ trick, which
/// vectorises (`f32::round` is a libm call) and reads the integer straight from the bits.
#[inline(always)]
fn round_to_i32(v: f32) -> i32 {
    ((v + 12_582_912.0).to_bits() as i32).wrapping_sub(0x4B40_0000)
}

/// Symmetric int8 values and the scale of one row: `row ≈ q · scale`, q in ±127.
#[inline(always)]
fn quantize_row(row: &[f32], out: &mut [i8]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] = acc[l].max(c[l].abs());
        }
    }
    let mut amax = acc.iter().fold(0f32, |m, &v| m.max(v));
    for v in rest {
        amax = amax.max(v.abs());
    }
    if !amax.is_finite() || amax <= 0.0 {
        out.fill(0);
        return 0.0;
    }
    let inv = 127.0 / amax;
    for (o, &v) in out.iter_mut().zip(row) {
        *o = round_to_i32(v * inv).clamp(-127, 127) as i8;
    }
    amax / 127.0
}

impl QuantizedLinear {
    /// Quantises f32 weights `w` (out_features rows of in_features), one scale per row.
    pub fn quantize(w: &[f32], out_features: usize, in_features: usize) -> Self {
        assert_eq!(w.len(), out_features * in_features, "weight shape");
        let mut q = vec![0i8; w.len()];
        let mut scales = vec![0f32; out_features];
        for ((row, qrow), s) in w
            .chunks_exact(in_features.max(1))
            .zip(q.chunks_exact_mut(in_features.max(1)))
            .zip(&mut scales)
        {
            *s = quantize_row(row, qrow);
        }
        Self::from_int8(&q, &scales, out_features, in_features)
            .expect("freshly quantised weights are in range")
    }

    /// Packs stored int8 weights (row-major (out_features, in_features)) and their per-row
    /// scales. Refuses -128 (outside the symmetric range every kernel relies on) and scales that
    /// are negative or not finite.
    pub fn from_int8(
        q: &[i8],
        scales: &[f32],
        out_features: usize,
        in_features: usize,
    ) -> Result<Self, String> {
        if q.len() != out_features * in_features {
            return Err(format!(
                "{} int8 values for a ({out_features}, {in_features}) weight",
                q.len()
            ));
        }
        if scales.len() != out_features {
            return Err(format!(
                "{} scales for {out_features} output channels",
                scales.len()
            ));
        }
        if q.contains(&i8::MIN) {
            return Err("an int8 weight is -128 (symmetric quantisation uses ±127)".into());
        }
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
            return Err(format!("a weight scale is {s} (must be finite and ≥ 0)"));
        }
        let groups = in_features.div_ceil(4);
        let panels = out_features.div_ceil(PANEL);
        let mut packed = vec![0i8; panels * groups * BLOCK];
        let mut col_sums = vec![0i32; panels * PANEL];
        for c in 0..out_features {
            let (p, j) = (c / PANEL, c % PANEL);
            let row = &q[c * in_features..(c + 1) * in_features];
            for (k, &v) in row.iter().enumerate() {
                packed[(p * groups + k / 4) * BLOCK + j * 4 + k % 4] = v;
            }
            col_sums[c] = row.iter().map(|&v| v as i32).sum();
        }
        let mut padded_scales = scales.to_vec();
        padded_scales.resize(panels * PANEL, 0.0);
        Ok(Self {
            out_features,
            in_features,
            groups,
            panels,
            packed,
            scales: padded_scales,
            col_sums,
        })
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The stored form: row-major (out_features, in_features) int8 values and per-row scales.
    pub fn int8_weights(&self) -> (Vec<i8>, Vec<f32>) {
        let mut q = vec![0i8; self.out_features * self.in_features];
        for c in 0..self.out_features {
            let (p, j) = (c / PANEL, c % PANEL);
            for k in 0..self.in_features {
                q[c * self.in_features + k] =
                    self.packed[(p * self.groups + k / 4) * BLOCK + j * 4 + k % 4];
            }
        }
        (q, self.scales[..self.out_features].to_vec())
    }

    /// Stacks layers with the same input width into one (output channels of `parts[0]` first):
    /// the fused Q|K|V projection.
    pub fn stack(parts: &[QuantizedLinear]) -> Result<Self, String> {
        let in_features = parts.first().map(|p| p.in_features).unwrap_or(0);
        if parts.iter().any(|p| p.in_features != in_features) {
            return Err("stacked layers differ in input width".into());
        }
        let (mut q, mut s) = (Vec::new(), Vec::new());
        for p in parts {
            let (pq, ps) = p.int8_weights();
            q.extend(pq);
            s.extend(ps);
        }
        Self::from_int8(&q, &s, s.len(), in_features)
    }

    /// `dst (m × out) += x (m × in) · Wᵀ`, with `threads` workers of the current rayon pool.
    pub fn matmul_acc(&self, dst: &mut [f32], x: &[f32], m: usize, kernel: Kernel, threads: usize) {
        let (k, n) = (self.in_features, self.out_features);
        assert!(x.len() >= m * k && dst.len() >= m * n, "matmul shapes");
        if m == 0 || n == 0 || k == 0 {
            return;
        }
        let rows = QuantizedRows::new(x, m, k, self.groups * 4, kernel, threads);
        let (mr, np) = kernel.tile();
        let blocks = self.panels.div_ceil(np);
        let dst_ptr = SendPtr(dst.as_mut_ptr());
        let run_block = |b: usize| {
            let p0 = b * np;
            let np_here = np.min(self.panels - p0);
            let mut acc = [0i32; kernels::ACC_LEN];
            for r0 in (0..m).step_by(mr) {
                let rows_here = mr.min(m - r0);
                kernel.tile_sums(
                    &rows.data[r0 * rows.stride..],
                    rows.stride,
                    rows_here,
                    &self.packed[p0 * self.groups * BLOCK..],
                    self.groups,
                    np_here,
                    &self.col_sums[p0 * PANEL..],
                    &mut acc,
                );
                let c0 = p0 * PANEL;
                let c1 = ((p0 + np_here) * PANEL).min(n);
                for r in 0..rows_here {
                    let sa = rows.scales[r0 + r];
                    // SAFETY: row r0 + r < m and columns c0..c1 ⊂ 0..n lie inside dst (asserted
                    // above); blocks own disjoint column ranges, so no two workers write the
                    // same element.
                    let out = unsafe {
                        std::slice::from_raw_parts_mut(
                            dst_ptr.get().add((r0 + r) * n + c0),
                            c1 - c0,
                        )
                    };
                    dequantize_into(
                        out,
                        &acc[r * kernels::ACC_STRIDE..],
                        sa,
                        &self.scales[c0..c1],
                    );
                }
            }
        };
        if threads > 1 && blocks > 1 {
            (0..blocks).into_par_iter().for_each(run_block);
        } else {
            (0..blocks).for_each(run_block);
        }
    }
}

/// `out[c] += acc[c] · (row scale · column scale)`: one multiply of the two scales, one of the
/// sum, one add, the same in every path (no FMA), so results are bit-identical across kernels.
#[inline(always)]
fn dequantize_into(out: &mut [f32], acc: &[i32], sa: f32, col_scales: &[f32]) {
    for ((o, &a), &sw) in out.iter_mut().zip(acc).zip(col_scales) {
        *o += a as f32 * (sa * sw);
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint column ranges of one destination to rayon workers.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Activations quantised per row: `stride` bytes a row (k rounded up to a multiple of four,
/// zero-padded), one scale per row.
struct QuantizedRows {
    data: Vec<i8>,
    stride: usize,
    scales: Vec<f32>,
}

impl QuantizedRows {
    fn new(x: &[f32], m: usize, k: usize, stride: usize, kernel: Kernel, threads: usize) -> Self {
        let mut data = vec![0i8; m * stride];
        let mut scales = vec![0f32; m];
        let quantize = |(row_out, s): (&mut [i8], &mut f32), row: &[f32]| {
            *s = kernel.quantize_row(row, &mut row_out[..k]);
        };
        if threads > 1 && m >= 64 {
            data.par_chunks_mut(stride)
                .zip(scales.par_iter_mut())
                .zip(x.par_chunks(k))
                .for_each(|(pair, row)| quantize(pair, row));
        } else {
            data.chunks_mut(stride)
                .zip(scales.iter_mut())
                .zip(x.chunks(k))
                .for_each(|(pair, row)| quantize(pair, row));
        }
        Self {
            data,
            stride,
            scales,
        }
    }
}

/// The definition every kernel is tested against: unpacked weights, i32 dot products, the same
/// quantiser and epilogue.
pub fn reference_matmul_acc(
    dst: &mut [f32],
    x: &[f32],
    m: usize,
    q: &[i8],
    scales: &[f32],
    n: usize,
    k: usize,
) {
    let mut qx = vec![0i8; k];
    for r in 0..m {
        let sa = quantize_row(&x[r * k..(r + 1) * k], &mut qx);
        let acc: Vec<i32> = (0..n)
            .map(|c| {
                qx.iter()
                    .zip(&q[c * k..(c + 1) * k])
                    .map(|(&a, &w)| a as i32 * w as i32)
                    .sum()
            })
            .collect();
        dequantize_into(&mut dst[r * n..(r + 1) * n], &acc, sa, scales);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random values in [-amp, amp), reproducible.
    fn noise(n: usize, seed: u32, amp: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                ((s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn rounding_is_nearest_even_and_quantised_rows_reconstruct() {
        assert_eq!(
            [0.5f32, 1.5, 2.5, -0.5, -1.5, 126.6, -126.4].map(round_to_i32),
            [0, 2, 2, 0, -2, 127, -126]
        );
        let row = noise(37, 3, 5.0);
        let mut q = vec![0i8; 37];
        let s = quantize_row(&row, &mut q);
        assert!(q.iter().any(|&v| v.abs() == 127) && !q.contains(&i8::MIN));
        for (&v, &qv) in row.iter().zip(&q) {
            assert!(
                (v - qv as f32 * s).abs() <= s * 0.5 + 1e-6,
                "{v} vs {qv}·{s}"
            );
        }
        // An all-zero row has scale 0 and contributes nothing.
        assert_eq!(quantize_row(&[0.0; 5], &mut q[..5]), 0.0);
        assert_eq!(&q[..5], &[0; 5]);
    }

    #[test]
    fn packing_round_trips_and_refuses_bad_weights() {
        let (n, k) = (19, 7);
        let w = noise(n * k, 9, 0.3);
        let l = QuantizedLinear::quantize(&w, n, k);
        let (q, s) = l.int8_weights();
        assert_eq!(QuantizedLinear::from_int8(&q, &s, n, k).unwrap(), l);
        let mut bad = q.clone();
        bad[3] = i8::MIN;
        assert!(QuantizedLinear::from_int8(&bad, &s, n, k)
            .unwrap_err()
            .contains("-128"));
        let mut bad_s = s.clone();
        bad_s[0] = f32::NAN;
        assert!(QuantizedLinear::from_int8(&q, &bad_s, n, k).is_err());
        assert!(QuantizedLinear::from_int8(&q, &s[1..], n, k).is_err());
        let stacked = QuantizedLinear::stack(&[l.clone(), l.clone()]).unwrap();
        assert_eq!(stacked.out_features(), 2 * n);
        assert_eq!(stacked.int8_weights().0[..n * k], q[..]);
    }

    #[test]
    fn quantised_matmul_stays_close_to_f32() {
        let (m, n, k) = (5, 33, 64);
        let x = noise(m * k, 1, 2.0);
        let w = noise(n * k, 2, 0.2);
        let l = QuantizedLinear::quantize(&w, n, k);
        let mut got = vec![0f32; m * n];
        l.matmul_acc(&mut got, &x, m, Kernel::Scalar, 1);
        for r in 0..m {
            for c in 0..n {
                let exact: f32 = (0..k).map(|i| x[r * k + i] * w[c * k + i]).sum();
                assert!(
                    (got[r * n + c] - exact).abs() < 0.05,
                    "{} vs {exact}",
                    got[r * n + c]
                );
            }
        }
    }

    /// Every kernel this CPU runs, on shapes with remainders in every dimension (rows past a
    /// tile, columns past a panel and a panel block, k not a multiple of four), against the
    /// reference, bit for bit, single- and multi-threaded, accumulating into a non-zero
    /// destination.
    #[test]
    fn every_kernel_matches_the_reference_bit_for_bit() {
        let kernels = Kernel::available();
        assert!(kernels.contains(&Kernel::Scalar));
        eprintln!("kernels on this CPU: {kernels:?}");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 16, 4),
            (3, 17, 5),
            (7, 65, 33),
            (13, 100, 384),
            (6, 64, 1536),
            (70, 130, 99),
        ] {
            let x = noise(m * k, (m * 31 + n) as u32, 3.0);
            let w = noise(n * k, (k * 7 + n) as u32, 0.25);
            let l = QuantizedLinear::quantize(&w, n, k);
            let (q, s) = l.int8_weights();
            let base = noise(m * n, 5, 1.0);
            let mut want = base.clone();
            reference_matmul_acc(&mut want, &x, m, &q, &s, n, k);
            for &kernel in &kernels {
                for threads in [1, 3] {
                    let mut got = base.clone();
                    pool.install(|| l.matmul_acc(&mut got, &x, m, kernel, threads));
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{kernel:?} threads={threads} m={m} n={n} k={k}"
                    );
                }
            }
        }
    }

    /// Extreme activations: a row of ±max values and a single huge outlier must not overflow
    /// or saturate any kernel's sums.
    #[test]
    fn extreme_values_do_not_saturate() {
        let (m, n, k) = (3, 20, 1536);
        let mut x = vec![1.0f32; m * k];
        x[k..2 * k]
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = if i % 2 == 0 { -1.0 } else { 1.0 });
        x[2 * k + 7] = 1e30;
        let w: Vec<f32> = (0..n * k)
            .map(|i| if (i / k) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let l = QuantizedLinear::quantize(&w, n, k);
        let (q, s) = l.int8_weights();
        let mut want = vec![0f32; m * n];
        reference_matmul_acc(&mut want, &x, m, &q, &s, n, k);
        assert!((want[0] - k as f32).abs() < 1e-2, "{}", want[0]);
        for kernel in Kernel::available() {
            let mut got = vec![0f32; m * n];
            l.matmul_acc(&mut got, &x, m, kernel, 1);
            assert_eq!(bits(&got), bits(&want), "{kernel:?}");
        }
    }
}
