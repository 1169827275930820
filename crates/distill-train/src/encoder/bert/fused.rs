//! Fused CPU kernels with hand-written backward passes for the training hot path. candle builds
//! LayerNorm, softmax and GELU's gradients from a dozen elementwise ops each (every one a full
//! pass and a fresh allocation); these do each in one or two parallel passes over rows. They
//! are used on the CPU only: elsewhere the model falls back to candle's differentiable ops.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: f32 only");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: contiguous input only"),
    }
}

/// Rows per parallel task: enough work to amortise scheduling.
fn rows_per_task(row_len: usize) -> usize {
    (16384 / row_len.max(1)).max(1)
}

fn contiguous(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// Whether the fused kernels apply: f32 tensors on the CPU.
pub fn usable(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

// ---------------------------------------------------------------- LayerNorm

/// `(x - mean) / sqrt(var + eps) * w + b` over the last dimension.
pub struct LayerNorm {
    pub eps: f32,
}

fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let b = slice(s3, l3, self.name())?;
        let h = w.len();
        let mut out = vec![0f32; x.len()];
        let rpt = rows_per_task(h);
        out.par_chunks_mut(h * rpt)
            .zip(x.par_chunks(h * rpt))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_mut(h).zip(x.chunks(h)) {
                    let (mean, rstd) = row_stats(x, self.eps);
                    for i in 0..h {
                        o[i] = (x[i] - mean) * rstd * w[i] + b[i];
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = contiguous(grad)?;
        let dx = x.apply_op3_no_bwd(w, &grad, &LayerNormDx { eps: self.eps })?;
        let dwb = x.apply_op2_no_bwd(&grad, &LayerNormDwDb { eps: self.eps })?;
        Ok((Some(dx), Some(dwb.get(0)?), Some(dwb.get(1)?)))
    }
}

/// dx = rstd * (g·w - mean(g·w) - x̂ · mean(g·w · x̂)).
struct LayerNormDx {
    eps: f32,
}

impl CustomOp3 for LayerNormDx {
    fn name(&self) -> &'static str {
        "fused-layer-norm-dx"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let g = slice(s3, l3, self.name())?;
        let h = w.len();
        let mut out = vec![0f32; x.len()];
        let rpt = rows_per_task(h);
        out.par_chunks_mut(h * rpt)
            .zip(x.par_chunks(h * rpt).zip(g.par_chunks(h * rpt)))
            .for_each(|(o, (x, g))| {
                for ((o, x), g) in o.chunks_mut(h).zip(x.chunks(h)).zip(g.chunks(h)) {
                    let (mean, rstd) = row_stats(x, self.eps);
                    let (mut s1, mut s2) = (0f32, 0f32);
                    for i in 0..h {
                        let gw = g[i] * w[i];
                        s1 += gw;
                        s2 += gw * (x[i] - mean) * rstd;
                    }
                    let (m1, m2) = (s1 / h as f32, s2 / h as f32);
                    for i in 0..h {
                        let xh = (x[i] - mean) * rstd;
                        o[i] = rstd * (g[i] * w[i] - m1 - xh * m2);
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// (2, h): dw = Σ_rows g·x̂ and db = Σ_rows g.
struct LayerNormDwDb {
    eps: f32,
}

impl CustomOp2 for LayerNormDwDb {
    fn name(&self) -> &'static str {
        "fused-layer-norm-dwdb"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let h = *l1.dims().last().unwrap_or(&1);
        let rpt = rows_per_task(h).max(8);
        let acc = x
            .par_chunks(h * rpt)
            .zip(g.par_chunks(h * rpt))
            .map(|(x, g)| {
                let mut acc = vec![0f32; 2 * h];
                for (x, g) in x.chunks(h).zip(g.chunks(h)) {
                    let (mean, rstd) = row_stats(x, self.eps);
                    for i in 0..h {
                        acc[i] += g[i] * (x[i] - mean) * rstd;
                        acc[h + i] += g[i];
                    }
                }
                acc
            })
            .reduce(
                || vec![0f32; 2 * h],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        Ok((CpuStorage::F32(acc), Shape::from((2, h))))
    }
}

// ---------------------------------------------------------------- masked softmax

/// `softmax(scale · scores + mask)` over the last dimension of (b, heads, s, s) scores, with
/// `mask` (b, s) additive (0 for tokens, a large negative for padding).
pub struct MaskedSoftmax {
    pub scale: f32,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let mask = slice(s2, l2, self.name())?;
        let dims = l1.dims();
        if dims.len() != 4 {
            candle_core::bail!("{}: expects (b, heads, s, s) scores", self.name());
        }
        let s = dims[3];
        let per_batch = dims[1] * dims[2] * s;
        let mut out = vec![0f32; x.len()];
        let scale = self.scale;
        out.par_chunks_mut(s)
            .zip(x.par_chunks(s))
            .enumerate()
            .for_each(|(r, (o, x))| {
                let m = &mask[(r * s / per_batch) * s..][..s];
                let mut max = f32::NEG_INFINITY;
                for i in 0..s {
                    o[i] = x[i] * scale + m[i];
                    max = max.max(o[i]);
                }
                let mut sum = 0f32;
                for v in o.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                let inv = 1.0 / sum;
                o.iter_mut().for_each(|v| *v *= inv);
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = contiguous(grad)?;
        let dx = res.apply_op2_no_bwd(&grad, &SoftmaxDx { scale: self.scale })?;
        Ok((Some(dx), None))
    }
}

/// dx = scale · y · (g - Σ g·y).
struct SoftmaxDx {
    scale: f32,
}

impl CustomOp2 for SoftmaxDx {
    fn name(&self) -> &'static str {
        "fused-softmax-dx"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let s = *l1.dims().last().unwrap_or(&1);
        let mut out = vec![0f32; y.len()];
        let rpt = rows_per_task(s);
        out.par_chunks_mut(s * rpt)
            .zip(y.par_chunks(s * rpt).zip(g.par_chunks(s * rpt)))
            .for_each(|(o, (y, g))| {
                for ((o, y), g) in o.chunks_mut(s).zip(y.chunks(s)).zip(g.chunks(s)) {
                    let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                    for i in 0..s {
                        o[i] = self.scale * y[i] * (g[i] - dot);
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- GELU (erf)

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// erf by Abramowitz & Stegun 7.1.26 (absolute error below 3e-7 with these f32
/// coefficients, so GELU moves by under 1e-6); libm's erf was a tenth of a CPU training step.
#[inline]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * (-a * a).exp();
    if x < 0.0 {
        -y
    } else {
        y
    }
}

/// `0.5 · x · (1 + erf(x / √2))`, as `transformers`' `gelu`.
pub struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "fused-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(16384)
            .zip(x.par_chunks(16384))
            .for_each(|(o, x)| {
                for (o, &x) in o.iter_mut().zip(x) {
                    *o = 0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2));
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = contiguous(grad)?;
        Ok(Some(x.apply_op2_no_bwd(&grad, &GeluErfDx)?))
    }
}

/// dx = g · (0.5 · (1 + erf(x / √2)) + x · φ(x)).
struct GeluErfDx;

impl CustomOp2 for GeluErfDx {
    fn name(&self) -> &'static str {
        "fused-gelu-erf-dx"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let g = slice(s2, l2, self.name())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(16384)
            .zip(x.par_chunks(16384).zip(g.par_chunks(16384)))
            .for_each(|(o, (x, g))| {
                for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                    let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
                    let pdf = INV_SQRT_2PI * (-0.5 * x * x).exp();
                    *o = g * (cdf + x * pdf);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
