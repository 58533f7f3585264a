//! Matrix multiply (with transpose flags) and the fully connected layer. See `shaders/matmul.wgsl`.

use crate::autograd::Var;
use crate::gpu::{Kernel, grid_1d};
use crate::reducing_kernel;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    has_bias: u32,
    row_tiles: u32,
    _pad: u32,
}

const MATMUL: Kernel = reducing_kernel!("matmul.wgsl", "matmul");
const MATVEC: Kernel = reducing_kernel!("matmul.wgsl", "matvec");
/// Output block computed by one workgroup (must match `BM`/`BN` in the shader).
const TILE: usize = 64;
/// Rows of `op(A)` that `matvec` handles (the components of its accumulator)...
const MATVEC_ROWS: usize = 4;
/// ...and the output columns of one of its workgroups (`MV_COLS` in the shader).
const MATVEC_COLS: usize = 8;
const MAX_GRID: usize = 65_535;

fn dims(t: &Tensor, op: &'static str, name: &str) -> Result<(usize, usize)> {
    t.expect_f32_rank(op, name, 2)?;
    Ok((t.shape()[0], t.shape()[1]))
}

fn check_u32(op: &'static str, what: &str, n: usize) -> Result<()> {
    if n > u32::MAX as usize {
        return Err(Error::shape(
            op,
            format!("{what} has {n} elements, beyond the u32 index range"),
        ));
    }
    Ok(())
}

/// `C = op(A) op(B) (+ bias)`; shapes already checked: `op(A)` is `[m, k]`, `op(B)` is `[k, n]`.
#[allow(clippy::too_many_arguments)]
fn gemm(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
) -> Result<Tensor> {
    check_u32(op, "A", a.numel())?;
    check_u32(op, "B", b.numel())?;
    check_u32(op, "the output", m * n)?;
    let gpu = a.gpu();
    let c = Tensor::uninit(gpu, &[m, n], DType::F32, op)?;
    let bias_buf = bias.map_or(a.buffer(), |t| t.buffer());
    let mut p = Params {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        trans_a: trans_a as u32,
        trans_b: trans_b as u32,
        has_bias: bias.is_some() as u32,
        row_tiles: 0,
        _pad: 0,
    };
    let buffers = [a.buffer(), b.buffer(), bias_buf, c.buffer()];
    if m <= MATVEC_ROWS && !trans_a && trans_b {
        // A few rows against a [N, K] matrix (the linear layer at batch 1-4): a workgroup per
        // eight output columns instead of a 64 x 64 tile that is mostly empty rows.
        let groups = n.div_ceil(MATVEC_COLS) as u32;
        gpu.dispatch(&MATVEC, &p, &buffers, grid_1d(groups))?;
        return Ok(c);
    }
    let col_tiles = n.div_ceil(TILE);
    let row_tiles = m.div_ceil(TILE);
    if col_tiles > MAX_GRID {
        return Err(Error::Limit {
            what: format!("{op}: output [{m}, {n}] needs {col_tiles} column tiles"),
            limit: "max_compute_workgroups_per_dimension",
            needed: col_tiles as u64,
            available: MAX_GRID as u64,
        });
    }
    let grid = if row_tiles <= MAX_GRID {
        [col_tiles as u32, row_tiles as u32, 1]
    } else {
        [
            col_tiles as u32,
            MAX_GRID as u32,
            row_tiles.div_ceil(MAX_GRID) as u32,
        ]
    };
    p.row_tiles = row_tiles as u32;
    gpu.dispatch(&MATMUL, &p, &buffers, grid)?;
    Ok(c)
}

/// `C = op(A) op(B)` for row-major 2-D tensors, where `op(X)` is `X` or `Xᵀ` as the flags say.
/// `op(A)` must be `[M, K]` and `op(B)` `[K, N]`; the result is `[M, N]`.
pub fn matmul(a: &Tensor, b: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    const OP: &str = "matmul";
    let (ar, ac) = dims(a, OP, "A")?;
    let (br, bc) = dims(b, OP, "B")?;
    a.expect_same_gpu(OP, b)?;
    let (m, ka) = if trans_a { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if trans_b { (bc, br) } else { (br, bc) };
    if ka != kb {
        return Err(Error::shape(
            OP,
            format!(
                "inner dimensions differ: op(A) is [{m}, {ka}] (A {:?}, trans_a {trans_a}), op(B) is \
                 [{kb}, {n}] (B {:?}, trans_b {trans_b})",
                a.shape(),
                b.shape()
            ),
        ));
    }
    gemm(OP, a, b, None, m, n, ka, trans_a, trans_b)
}

/// Fully connected layer `y = x wᵀ + b`: `x` `[N, I]`, `w` `[O, I]`, `b` `[O]`, `y` `[N, O]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "linear";
    let (n, i) = dims(x, OP, "x")?;
    let (o, wi) = dims(w, OP, "w")?;
    x.expect_same_gpu(OP, w)?;
    if wi != i {
        return Err(Error::shape(
            OP,
            format!(
                "x {:?} has {i} features but w {:?} expects {wi}",
                x.shape(),
                w.shape()
            ),
        ));
    }
    if let Some(b) = b {
        b.expect_f32_rank(OP, "b", 1)?;
        x.expect_same_gpu(OP, b)?;
        if b.shape()[0] != o {
            return Err(Error::shape(
                OP,
                format!(
                    "bias {:?} must have {o} elements to match w {:?}",
                    b.shape(),
                    w.shape()
                ),
            ));
        }
    }
    gemm(OP, x, w, b, n, o, i, false, true)
}

impl Var {
    /// `self @ other` for 2-D values; gradients `gy otherᵀ` and `selfᵀ gy`.
    pub fn matmul(&self, other: &Var) -> Result<Var> {
        let out = matmul(self.tensor(), other.tensor(), false, false)?;
        let saved = Var::any_tracked(&[self, other]).then(|| {
            (
                other.requires_grad().then(|| self.tensor().clone()),
                self.requires_grad().then(|| other.tensor().clone()),
            )
        });
        Var::record("matmul", &[self, other], out, move |gy| {
            let (a, b) = saved.expect("saved when tracked");
            let ga = b.map(|b| matmul(&gy, &b, false, true)).transpose()?;
            let gb = a.map(|a| matmul(&a, &gy, true, false)).transpose()?;
            Ok(vec![ga, gb])
        })
    }

    /// Fully connected layer `y = x wᵀ + b` (see [`linear`]), recording
    /// `gx = gy w`, `gw = gyᵀ x`, `gb = Σ_N gy` for the tracked inputs.
    pub fn linear(&self, w: &Var, b: Option<&Var>) -> Result<Var> {
        let y = linear(self.tensor(), w.tensor(), b.map(|b| b.tensor()))?;
        let mut inputs = vec![self, w];
        inputs.extend(b);
        let need_gx = self.requires_grad();
        let need_gw = w.requires_grad();
        let need_gb = b.is_some_and(|b| b.requires_grad());
        let saved = Var::any_tracked(&inputs).then(|| {
            (
                need_gw.then(|| self.tensor().clone()),
                need_gx.then(|| w.tensor().clone()),
            )
        });
        let has_bias = b.is_some();
        Var::record("linear", &inputs, y, move |gy| {
            let (x, w) = saved.expect("saved when tracked");
            let gx = w.map(|w| matmul(&gy, &w, false, false)).transpose()?;
            let gw = x.map(|x| matmul(&gy, &x, true, false)).transpose()?;
            let mut grads = vec![gx, gw];
            if has_bias {
                grads.push(if need_gb {
                    Some(crate::ops::sum_channels(&gy)?)
                } else {
                    None
                });
            }
            Ok(grads)
        })
    }
}
