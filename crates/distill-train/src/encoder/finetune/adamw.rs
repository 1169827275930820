//! AdamW (Loshchilov & Hutter 2019) as `torch.optim.AdamW` computes it, over candle `Var`s: one
//! fused in-place CPU pass per tensor (moments, bias correction, decoupled decay) and a sparse
//! step for the word-embedding table, whose gradient touches only the batch's token rows.

use crate::error::{Result, TrainError};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp1, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;

/// One parameter tensor's AdamW state.
struct AdamParam {
    var: Var,
    weight_decay: f64,
    /// Multiplies the scheduled learning rate (the fresh head learns faster than the body).
    lr_mult: f64,
    state: AdamState,
}

enum AdamState {
    /// Moments on the host; the update is one fused, parallel pass over the weights in place.
    Cpu { m: Vec<f32>, v: Vec<f32> },
    /// Moments as tensors on the device; the update is built from tensor ops (as candle's AdamW).
    Device { m: Var, v: Var },
}

/// AdamW as PyTorch's `torch.optim.AdamW` computes it (decoupled decay, bias-corrected moments,
/// eps outside the square root), with per-parameter decay and learning-rate multipliers, and
/// the clipping factor folded into the update so clipping costs no pass of its own.
pub struct AdamW {
    params: Vec<AdamParam>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    t: i32,
}

impl AdamW {
    /// `groups`: (variable, weight decay, learning-rate multiplier).
    pub fn new(groups: Vec<(Var, f64, f64)>) -> Result<Self> {
        let params = groups
            .into_iter()
            .map(|(var, weight_decay, lr_mult)| {
                let state = if var.device().is_cpu() && var.dtype() == DType::F32 {
                    let n = var.elem_count();
                    AdamState::Cpu {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }
                } else {
                    AdamState::Device {
                        m: Var::zeros(var.shape(), var.dtype(), var.device())?,
                        v: Var::zeros(var.shape(), var.dtype(), var.device())?,
                    }
                };
                Ok(AdamParam {
                    var,
                    weight_decay,
                    lr_mult,
                    state,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            params,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
        })
    }

    /// One update with learning rate `lr` from gradients scaled by `grad_scale`; `sparse` gives
    /// one variable's gradient as rows instead (see [`SparseRows`]).
    pub fn step(
        &mut self,
        grads: &GradStore,
        lr: f64,
        grad_scale: f64,
        sparse: Option<(&Var, &SparseRows)>,
    ) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t);
        let bc2 = 1.0 - self.beta2.powi(self.t);
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        for p in self.params.iter_mut() {
            let lr = lr * p.lr_mult;
            if let (Some((var, rows)), AdamState::Cpu { m, v }) = (sparse, &mut p.state) {
                if var.as_tensor().id() == p.var.as_tensor().id() {
                    let op = AdamCpuSparseStep {
                        m: std::cell::RefCell::new(m),
                        v: std::cell::RefCell::new(v),
                        rows,
                        decay: (1.0 - lr * p.weight_decay) as f32,
                        b1: b1 as f32,
                        b2: b2 as f32,
                        eps: eps as f32,
                        step_size: (lr / bc1) as f32,
                        inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
                        scale: grad_scale as f32,
                    };
                    p.var.as_tensor().inplace_op1(&op)?;
                    continue;
                }
            }
            let Some(g) = grads.get(&p.var) else { continue };
            match &mut p.state {
                AdamState::Cpu { m, v } => {
                    let g = if g.is_contiguous() {
                        g.clone()
                    } else {
                        g.contiguous()?
                    };
                    let op = AdamCpuStep {
                        m: std::cell::RefCell::new(m),
                        v: std::cell::RefCell::new(v),
                        decay: (1.0 - lr * p.weight_decay) as f32,
                        b1: b1 as f32,
                        b2: b2 as f32,
                        eps: eps as f32,
                        step_size: (lr / bc1) as f32,
                        inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
                        scale: grad_scale as f32,
                    };
                    p.var.as_tensor().inplace_op2(&g, &op)?;
                }
                AdamState::Device { m, v } => {
                    let g = if grad_scale != 1.0 {
                        (g * grad_scale)?
                    } else {
                        g.clone()
                    };
                    let next_m = ((m.as_tensor() * b1)? + (&g * (1.0 - b1))?)?;
                    let next_v = ((v.as_tensor() * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                    let denom = ((&next_v * (1.0 / bc2))?.sqrt()? + eps)?;
                    let update = ((&next_m * (lr / bc1))? / denom)?;
                    let theta = ((p.var.as_tensor() * (1.0 - lr * p.weight_decay))? - update)?;
                    m.set(&next_m)?;
                    v.set(&next_v)?;
                    p.var.set(&theta)?;
                }
            }
        }
        Ok(())
    }
}

/// The fused CPU AdamW update of one tensor, in place.
struct AdamCpuStep<'a> {
    m: std::cell::RefCell<&'a mut Vec<f32>>,
    v: std::cell::RefCell<&'a mut Vec<f32>>,
    decay: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    scale: f32,
}

impl InplaceOp2 for AdamCpuStep<'_> {
    fn name(&self) -> &'static str {
        "adamw-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(theta), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("adamw-step: f32 only");
        };
        let (Some((t0, t1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("adamw-step: contiguous tensors only");
        };
        let theta = &mut theta[t0..t1];
        let g = &g[g0..g1];
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        if theta.len() != g.len() || m.len() != g.len() {
            candle_core::bail!("adamw-step: size mismatch");
        }
        const CHUNK: usize = 1 << 14;
        let (b1, b2, eps, decay) = (self.b1, self.b2, self.eps, self.decay);
        let (step_size, inv_sqrt_bc2, scale) = (self.step_size, self.inv_sqrt_bc2, self.scale);
        theta
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((th, m), v), g)| {
                for i in 0..th.len() {
                    let gi = g[i] * scale;
                    let mi = b1 * m[i] + (1.0 - b1) * gi;
                    let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
                    m[i] = mi;
                    v[i] = vi;
                    let denom = vi.sqrt() * inv_sqrt_bc2 + eps;
                    th[i] = th[i] * decay - step_size * mi / denom;
                }
            });
        Ok(())
    }
}

/// A gradient given as rows of a table (the word embeddings): `grad[k·width..(k+1)·width]` is
/// the summed gradient of table row `ids[k]`; rows not listed have a zero gradient. The update
/// is still AdamW over every row (moments decay and weights decay everywhere), exactly as with
/// the dense gradient, without building it.
#[derive(Debug, Clone, Default)]
pub struct SparseRows {
    pub ids: Vec<u32>,
    pub grad: Vec<f32>,
    pub width: usize,
}

impl SparseRows {
    /// Sums the gradient `g` (one row per entry of `ids`) by id.
    pub fn accumulate(ids: &[u32], g: &Tensor) -> Result<Self> {
        let g = g.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let (n, width) = g.dims2()?;
        if n != ids.len() {
            return Err(TrainError::Other(format!(
                "sparse rows: {n} gradient rows for {} ids",
                ids.len()
            )));
        }
        let flat = g.flatten_all()?.to_vec1::<f32>()?;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| ids[i]);
        let mut out = SparseRows {
            ids: Vec::new(),
            grad: Vec::new(),
            width,
        };
        for i in order {
            let row = &flat[i * width..(i + 1) * width];
            if out.ids.last() == Some(&ids[i]) {
                let k = out.grad.len() - width;
                for (a, b) in out.grad[k..].iter_mut().zip(row) {
                    *a += *b;
                }
            } else {
                out.ids.push(ids[i]);
                out.grad.extend_from_slice(row);
            }
        }
        Ok(out)
    }

    pub fn sum_squares(&self) -> f64 {
        self.grad.iter().map(|&x| (x as f64) * (x as f64)).sum()
    }
}

/// The fused CPU AdamW update of a table from a [`SparseRows`] gradient, in place.
struct AdamCpuSparseStep<'a> {
    m: std::cell::RefCell<&'a mut Vec<f32>>,
    v: std::cell::RefCell<&'a mut Vec<f32>>,
    rows: &'a SparseRows,
    decay: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    step_size: f32,
    inv_sqrt_bc2: f32,
    scale: f32,
}

impl InplaceOp1 for AdamCpuSparseStep<'_> {
    fn name(&self) -> &'static str {
        "adamw-sparse-step"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(theta) = s else {
            candle_core::bail!("adamw-sparse-step: f32 only");
        };
        let Some((t0, t1)) = l.contiguous_offsets() else {
            candle_core::bail!("adamw-sparse-step: contiguous tensors only");
        };
        let theta = &mut theta[t0..t1];
        let w = self.rows.width;
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        if w == 0 || theta.len() % w != 0 || m.len() != theta.len() {
            candle_core::bail!("adamw-sparse-step: size mismatch");
        }
        let n_rows = theta.len() / w;
        let mut slot = vec![u32::MAX; n_rows];
        for (k, &id) in self.rows.ids.iter().enumerate() {
            match slot.get_mut(id as usize) {
                Some(s) => *s = k as u32,
                None => candle_core::bail!("adamw-sparse-step: row {id} out of range"),
            }
        }
        let zeros = vec![0f32; w];
        const ROWS: usize = 64;
        let (b1, b2, eps, decay) = (self.b1, self.b2, self.eps, self.decay);
        let (step_size, inv_sqrt_bc2, scale) = (self.step_size, self.inv_sqrt_bc2, self.scale);
        let grad = &self.rows.grad;
        theta
            .par_chunks_mut(ROWS * w)
            .zip(m.par_chunks_mut(ROWS * w))
            .zip(v.par_chunks_mut(ROWS * w))
            .zip(slot.par_chunks(ROWS))
            .for_each(|(((th, m), v), slots)| {
                for (r, &k) in slots.iter().enumerate() {
                    let g = if k == u32::MAX {
                        &zeros[..]
                    } else {
                        &grad[k as usize * w..(k as usize + 1) * w]
                    };
                    let (th, m, v) = (
                        &mut th[r * w..(r + 1) * w],
                        &mut m[r * w..(r + 1) * w],
                        &mut v[r * w..(r + 1) * w],
                    );
                    for i in 0..w {
                        let gi = g[i] * scale;
                        let mi = b1 * m[i] + (1.0 - b1) * gi;
                        let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
                        m[i] = mi;
                        v[i] = vi;
                        let denom = vi.sqrt() * inv_sqrt_bc2 + eps;
                        th[i] = th[i] * decay - step_size * mi / denom;
                    }
                }
            });
        Ok(())
    }
}
