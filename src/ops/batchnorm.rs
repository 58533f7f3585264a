//! Batch normalisation (PyTorch `BatchNorm2d` semantics) with an optional fused ReLU. See
//! `shaders/batchnorm.wgsl`.
//!
//! Training mode normalises with the batch mean and biased variance and updates the running
//! statistics in place (`running = (1 - momentum) * running + momentum * batch`, the variance with
//! the unbiased batch variance). Eval mode normalises with the running statistics.
//!
//! Inputs are `[N, C, H, W]` (rank 2 `[N, C]` and rank 3 `[N, C, L]` work too: the statistics are
//! per channel over every other dimension).

use crate::autograd::Var;
use crate::gpu::{Kernel, flag, grid_1d, grid_for_elements};
use crate::reducing_kernel;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

/// Options of [`Var::batch_norm`].
#[derive(Clone, Copy, Debug)]
pub struct BatchNorm {
    /// Normalise with batch statistics and update the running ones (else use the running ones).
    pub training: bool,
    /// Weight of the batch statistics in the running-statistics update.
    pub momentum: f32,
    /// Added to the variance before the square root.
    pub eps: f32,
    /// Apply a ReLU to the output, fused into the same kernel.
    pub relu: bool,
}

impl BatchNorm {
    /// Training mode, momentum 0.1, eps 1e-5, no ReLU.
    pub fn train() -> Self {
        BatchNorm {
            training: true,
            momentum: 0.1,
            eps: 1e-5,
            relu: false,
        }
    }

    /// Eval mode (running statistics), eps 1e-5, no ReLU.
    pub fn eval() -> Self {
        BatchNorm {
            training: false,
            ..Self::train()
        }
    }

    /// The same options with a fused ReLU.
    pub fn with_relu(self) -> Self {
        BatchNorm { relu: true, ..self }
    }
}

/// Per-channel statistics a backward pass needs: the mean and `1 / sqrt(var + eps)` used by the
/// forward (batch statistics in training, running statistics in eval), each of shape `[C]`.
#[derive(Clone, Debug)]
pub struct BnSaved {
    /// Per-channel mean.
    pub mean: Tensor,
    /// Per-channel inverse standard deviation.
    pub invstd: Tensor,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    channels: u32,
    hw: u32,
    batch: u32,
    chunks: u32,
    chunk_len: u32,
    momentum: f32,
    eps: f32,
    /// normalize / backward_input step 256 elements at a time: (256 % hw, (256 / hw) % C).
    element_step_q: u32,
    element_step_c: u32,
    /// stats_partial / backward_partial step PARTIAL_WG values at a time: (64 % hw, 64 / hw).
    partial_step_q: u32,
    partial_step_n: u32,
    /// The pooled backward: the max pool's input plane and output plane (0 otherwise).
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
}

/// Elements between one normalize / backward_input thread's consecutive elements.
const ELEMENT_STEP: usize = 256;

/// Threads of a batch-norm partial-reduction workgroup (`PARTIAL_WG` in the shader): values
/// between one thread's consecutive values.
const PARTIAL_WG: usize = 64;

/// What the backward may do with the upstream gradient's buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GyUse {
    /// Only read it (another handle holds it).
    Read,
    /// Write gx over it (nothing else holds it).
    Overwrite,
    /// Mask it by the ReLU in place and keep it (a residual block's join, whose shortcut
    /// receives the masked gradient too); gx gets a buffer of its own. Only with the ReLU, and
    /// only where nothing else holds it. The partial sums do the masking as they read
    /// (`MASK_OUT`).
    Mask,
}

/// Values of one channel reduced by one workgroup before the per-channel merge.
const CHUNK: usize = 4096;

/// Partials a finalizing thread loads at once (`ROUND` in the shader).
const ROUND: usize = 4;

/// The finalizing kernels' threads per channel (`FIN_LANES`) for `chunks` partials per channel,
/// and their grid for `c` channels: enough threads for one round of [`ROUND`] partials each, a
/// power of two up to [`PARTIAL_WG`]. A thread per channel merged the partials alone before;
/// the stem's batch norm at batch 128 has 392 per channel, 98 rounds one after another.
/// Channels with at most [`ROUND`] (most layers at small batches) keep one thread each, 64 per
/// workgroup: 64 threads per channel made lavapipe's finalizing kernels 15-20x slower there.
fn finalize_lanes(chunks: usize, c: usize) -> (f64, [u32; 3]) {
    let lanes = chunks.div_ceil(ROUND).next_power_of_two().min(PARTIAL_WG);
    let groups = c.div_ceil(PARTIAL_WG / lanes);
    (lanes as f64, grid_1d(groups as u32))
}

const STATS_PARTIAL: Kernel = reducing_kernel!("batchnorm.wgsl", "stats_partial");
const STATS_FINALIZE: Kernel = reducing_kernel!("batchnorm.wgsl", "stats_finalize");
const EVAL_STATS: Kernel = reducing_kernel!("batchnorm.wgsl", "eval_stats");
const CHANNEL_RECORD: Kernel = reducing_kernel!("batchnorm.wgsl", "channel_record");
const NORMALIZE: Kernel = reducing_kernel!("batchnorm.wgsl", "normalize");
const BACKWARD_PARTIAL: Kernel = reducing_kernel!("batchnorm.wgsl", "backward_partial");
const BACKWARD_FINALIZE: Kernel = reducing_kernel!("batchnorm.wgsl", "backward_finalize");
const BACKWARD_INPUT: Kernel = reducing_kernel!("batchnorm.wgsl", "backward_input");
const BACKWARD_INPUT_INPLACE: Kernel = reducing_kernel!("batchnorm.wgsl", "backward_input_inplace");
const STATS_PARTIAL4: Kernel = reducing_kernel!("batchnorm.wgsl", "stats_partial4");
const BACKWARD_PARTIAL4: Kernel = reducing_kernel!("batchnorm.wgsl", "backward_partial4");
const POOLED_BACKWARD_INPUT: Kernel = reducing_kernel!("batchnorm.wgsl", "pooled_backward_input");

/// The layout of `x` as (N, C, HW), checked.
#[derive(Clone, Copy)]
struct Dims {
    n: usize,
    c: usize,
    hw: usize,
}

impl Dims {
    fn of(op: &'static str, x: &Tensor) -> Result<Dims> {
        if x.dtype() != DType::F32 || !(2..=4).contains(&x.rank()) {
            return Err(Error::shape(
                op,
                format!(
                    "x must be an f32 [N, C, H, W] tensor, got {:?} {:?}",
                    x.dtype(),
                    x.shape()
                ),
            ));
        }
        let s = x.shape();
        let d = Dims {
            n: s[0],
            c: s[1],
            hw: s[2..].iter().product(),
        };
        // The element kernels index up to 1023 past the last element before their bounds check.
        if x.numel() >= u32::MAX as usize - 1024 {
            return Err(Error::shape(
                op,
                format!("x {:?} exceeds the u32 index range", x.shape()),
            ));
        }
        Ok(d)
    }

    fn m(&self) -> usize {
        self.n * self.hw
    }

    fn chunks(&self) -> usize {
        self.m().div_ceil(CHUNK)
    }

    fn params(&self, momentum: f32, eps: f32) -> Params {
        Params {
            channels: self.c as u32,
            hw: self.hw as u32,
            batch: self.n as u32,
            chunks: self.chunks() as u32,
            chunk_len: CHUNK as u32,
            momentum,
            eps,
            element_step_q: (ELEMENT_STEP % self.hw.max(1)) as u32,
            element_step_c: ((ELEMENT_STEP / self.hw.max(1)) % self.c.max(1)) as u32,
            partial_step_q: (PARTIAL_WG % self.hw.max(1)) as u32,
            partial_step_n: (PARTIAL_WG / self.hw.max(1)) as u32,
            in_h: 0,
            in_w: 0,
            out_h: 0,
            out_w: 0,
        }
    }

    /// Whether a channel plane holds a (nonzero) multiple of 4 values, so that no vec4
    /// straddles two planes: the partial kernels then run their vec4 twins, and each unit of
    /// the element kernels lies in one plane.
    fn vec4(&self) -> bool {
        self.hw > 0 && self.hw.is_multiple_of(4)
    }

    /// `p` for the partial kernels (stats_partial, backward_partial) on vec4s where a channel
    /// plane holds a multiple of 4 values (`true`): the plane, the chunk and the walk's steps
    /// counted in vec4s (the chunks are the same values). `p` unchanged otherwise.
    fn partials(&self, mut p: Params) -> (Params, bool) {
        if !self.vec4() {
            return (p, false);
        }
        let hw = self.hw / 4;
        p.hw = hw as u32;
        p.chunk_len = (CHUNK / 4) as u32;
        p.partial_step_q = (PARTIAL_WG % hw) as u32;
        p.partial_step_n = (PARTIAL_WG / hw) as u32;
        (p, true)
    }

    /// `p` for the element kernels (normalize, backward_input, backward_input_inplace), their
    /// `QUAD_CHANNELS` constant and their grid. They run on units of 4 consecutive values (a
    /// vec4), 1024 per workgroup, four per thread. Where a channel plane holds a multiple of 4
    /// values, a unit lies in one plane (1), and the plane and the element steps are counted in
    /// units; where it holds 4 or more, a unit may cross into the next plane (2), and where
    /// fewer, each value may lie in its own (4): the plane is counted in values and the steps
    /// are 1024 values.
    fn elements(&self, mut p: Params) -> (Params, f64, [u32; 3]) {
        let (quad, hw, step) = if self.vec4() {
            (1, self.hw / 4, ELEMENT_STEP)
        } else if self.hw >= 4 {
            (2, self.hw, 4 * ELEMENT_STEP)
        } else {
            (4, self.hw, 4 * ELEMENT_STEP)
        };
        p.hw = hw as u32;
        p.element_step_q = (step % hw.max(1)) as u32;
        p.element_step_c = ((step / hw.max(1)) % self.c.max(1)) as u32;
        let units = (self.n * self.c * self.hw).div_ceil(4);
        (p, quad as f64, grid_for_elements(units.div_ceil(4)))
    }
}

/// Check that each named tensor is f32 of shape `[C]` and on `x`'s device (`of` names `x` in
/// the message).
pub(crate) fn expect_channel_vectors(
    op: &'static str,
    (of, x): (&str, &Tensor),
    c: usize,
    vs: &[(&str, &Tensor)],
) -> Result<()> {
    for (name, v) in vs {
        if v.dtype() != DType::F32 || v.shape() != [c] {
            return Err(Error::shape(
                op,
                format!(
                    "{name} must be an f32 tensor of shape [{c}] for {of} {:?}, got {:?} {:?}",
                    x.shape(),
                    v.dtype(),
                    v.shape()
                ),
            ));
        }
        x.expect_same_gpu(op, v)?;
    }
    Ok(())
}

/// Check batch norm's four channel vectors (`gamma`, `beta`, `running_mean`, `running_var`)
/// against `x`, of `c` channels.
fn expect_bn_vectors(op: &'static str, x: &Tensor, c: usize, vs: [&Tensor; 4]) -> Result<()> {
    let names = ["gamma", "beta", "running_mean", "running_var"];
    let named: Vec<(&str, &Tensor)> = names.into_iter().zip(vs).collect();
    expect_channel_vectors(op, ("x", x), c, &named)
}

/// `y = gamma * (x - mean) * invstd + beta` with each channel's `record` (mean, invstd, gamma,
/// beta; from `stats_finalize` or [`channel_record`]), plus `residual` when given, then a ReLU
/// when `relu`.
fn normalize(
    x: &Tensor,
    d: Dims,
    record: &Tensor,
    relu: bool,
    residual: Option<&Tensor>,
    op: &'static str,
) -> Result<Tensor> {
    let y = Tensor::uninit(x.gpu(), x.shape(), DType::F32, op)?;
    let (p, quad, grid) = d.elements(d.params(0.0, 0.0));
    let choices = [
        flag("RELU", relu),
        flag("RESIDUAL", residual.is_some()),
        ("QUAD_CHANNELS", quad),
    ];
    x.gpu().dispatch_with(
        &NORMALIZE,
        &choices,
        &p,
        &[
            x.buffer(),
            record.buffer(),
            y.buffer(),
            residual.unwrap_or(x).buffer(),
        ],
        grid,
    )?;
    Ok(y)
}

/// Eval mode's records for [`normalize`]: per channel `(mean, invstd, gamma, beta)` from the
/// running statistics (invstd computed as [`batch_norm_eval_stats`] computes it).
fn channel_record(
    op: &'static str,
    [mean, var, gamma, beta]: [&Tensor; 4],
    eps: f32,
) -> Result<Tensor> {
    let gpu = mean.gpu();
    let c = mean.numel();
    let record = Tensor::uninit(gpu, &[c * 4], DType::F32, op)?;
    // channel_record reads only the channel count and eps.
    let p = Dims { n: 1, c, hw: 1 }.params(0.0, eps);
    gpu.dispatch(
        &CHANNEL_RECORD,
        &p,
        &[
            mean.buffer(),
            var.buffer(),
            gamma.buffer(),
            beta.buffer(),
            record.buffer(),
        ],
        grid_for_elements(c),
    )?;
    Ok(record)
}

/// Training-mode batch norm: normalise `x` with its per-channel batch statistics, apply
/// `gamma`/`beta` (and a ReLU when `relu`), and update `running_mean`/`running_var` in place.
/// Returns the output and the batch statistics for the backward pass.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    momentum: f32,
    eps: f32,
    relu: bool,
) -> Result<(Tensor, BnSaved)> {
    const OP: &str = "batch_norm";
    let d = Dims::of(OP, x)?;
    let (saved, record) = train_stats(
        OP,
        x,
        d,
        gamma,
        beta,
        running_mean,
        running_var,
        momentum,
        eps,
    )?;
    let y = normalize(x, d, &record, relu, None, OP)?;
    Ok((y, saved))
}

/// The checks and the statistics of a training-mode batch norm: the batch mean and inverse
/// standard deviation of `x`, with the running statistics updated in place, and
/// [`normalize`]'s records of them.
#[allow(clippy::too_many_arguments)]
fn train_stats(
    op: &'static str,
    x: &Tensor,
    d: Dims,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    momentum: f32,
    eps: f32,
) -> Result<(BnSaved, Tensor)> {
    expect_bn_vectors(op, x, d.c, [gamma, beta, running_mean, running_var])?;
    if d.m() < 2 {
        return Err(Error::shape(
            op,
            format!(
                "training needs more than one value per channel, got x {:?}",
                x.shape()
            ),
        ));
    }
    if running_mean.same_storage(running_var) {
        return Err(Error::shape(
            op,
            "running_mean and running_var share one buffer",
        ));
    }
    // The finalizing kernel reads gamma and beta into the records as it updates the running
    // statistics in place: one sharing a buffer with them is read from a copy taken first.
    let running = [running_mean, running_var];
    let unshared = |t: &Tensor| -> Result<Tensor> {
        if running.iter().any(|r| r.same_storage(t)) {
            t.deep_clone()
        } else {
            Ok(t.clone())
        }
    };
    let (gamma, beta) = (&unshared(gamma)?, &unshared(beta)?);
    let gpu = x.gpu();
    let groups = d.c * d.chunks();
    let partials = Tensor::uninit(gpu, &[groups * 3], DType::F32, op)?;
    let p = d.params(momentum, eps);
    let (pp, vec4) = d.partials(p);
    gpu.dispatch(
        if vec4 {
            &STATS_PARTIAL4
        } else {
            &STATS_PARTIAL
        },
        &pp,
        &[x.buffer(), partials.buffer()],
        grid_1d(groups as u32),
    )?;
    let mean = Tensor::uninit(gpu, &[d.c], DType::F32, op)?;
    let invstd = Tensor::uninit(gpu, &[d.c], DType::F32, op)?;
    let record = Tensor::uninit(gpu, &[d.c * 4], DType::F32, op)?;
    let (lanes, grid) = finalize_lanes(d.chunks(), d.c);
    gpu.dispatch_with(
        &STATS_FINALIZE,
        &[("FIN_LANES", lanes)],
        &p,
        &[
            partials.buffer(),
            mean.buffer(),
            invstd.buffer(),
            running_mean.buffer(),
            running_var.buffer(),
            gamma.buffer(),
            beta.buffer(),
            record.buffer(),
        ],
        grid,
    )?;
    Ok((BnSaved { mean, invstd }, record))
}

/// Eval-mode batch norm: normalise `x` with the running statistics.
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f32,
    relu: bool,
) -> Result<Tensor> {
    const OP: &str = "batch_norm_eval";
    let d = Dims::of(OP, x)?;
    expect_bn_vectors(OP, x, d.c, [gamma, beta, running_mean, running_var])?;
    let stats = [running_mean, running_var, gamma, beta];
    let record = channel_record(OP, stats, eps)?;
    normalize(x, d, &record, relu, None, OP)
}

/// The statistics eval mode normalises with, as [`BnSaved`]: a copy of `running_mean` and
/// `1 / sqrt(running_var + eps)`.
pub fn batch_norm_eval_stats(
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f32,
) -> Result<BnSaved> {
    const OP: &str = "batch_norm_eval_stats";
    running_mean.expect_f32_rank(OP, "running_mean", 1)?;
    let c = running_mean.numel();
    expect_channel_vectors(OP, ("x", running_mean), c, &[("running_var", running_var)])?;
    let gpu = running_mean.gpu();
    let mean = Tensor::uninit(gpu, &[c], DType::F32, OP)?;
    let invstd = Tensor::uninit(gpu, &[c], DType::F32, OP)?;
    // eval_stats reads only the channel count and eps.
    let p = Dims { n: 1, c, hw: 1 }.params(0.0, eps);
    gpu.dispatch(
        &EVAL_STATS,
        &p,
        &[
            running_mean.buffer(),
            running_var.buffer(),
            mean.buffer(),
            invstd.buffer(),
        ],
        grid_for_elements(c),
    )?;
    Ok(BnSaved { mean, invstd })
}

/// backward_finalize: `[ggamma, gbeta, coef]` from backward_partial's `partials` (`p.chunks`
/// per channel, over `p.batch * p.hw` values), in eval mode (`eval`) without the mean terms;
/// `coef` holds the input gradient's records per channel, `[C * 4]` and `[C]` (see
/// `shaders/batchnorm.wgsl`).
fn finalize_backward(
    op: &'static str,
    p: &Params,
    eval: bool,
    partials: &Tensor,
    gamma: &Tensor,
    saved: &BnSaved,
) -> Result<[Tensor; 4]> {
    let (gpu, c) = (partials.gpu(), p.channels as usize);
    let ggamma = Tensor::uninit(gpu, &[c], DType::F32, op)?;
    let gbeta = Tensor::uninit(gpu, &[c], DType::F32, op)?;
    let coef = Tensor::uninit(gpu, &[c * 4], DType::F32, op)?;
    let coef2 = Tensor::uninit(gpu, &[c], DType::F32, op)?;
    let (lanes, grid) = finalize_lanes(p.chunks as usize, c);
    gpu.dispatch_with(
        &BACKWARD_FINALIZE,
        &[flag("EVAL", eval), ("FIN_LANES", lanes)],
        p,
        &[
            partials.buffer(),
            gamma.buffer(),
            saved.invstd.buffer(),
            ggamma.buffer(),
            gbeta.buffer(),
            coef.buffer(),
            coef2.buffer(),
            saved.mean.buffer(),
        ],
        grid,
    )?;
    Ok([ggamma, gbeta, coef, coef2])
}

#[allow(clippy::too_many_arguments)]
fn backward(
    op: &'static str,
    x: &Tensor,
    y: &Tensor,
    gy: &Tensor,
    gamma: &Tensor,
    saved: &BnSaved,
    relu: bool,
    eval: bool,
    gy_use: GyUse,
) -> Result<(Tensor, Tensor, Tensor)> {
    let d = Dims::of(op, x)?;
    for (name, t) in [("y", y), ("gy", gy)] {
        t.expect_f32_shape(op, name, "x's", x.shape())?;
        x.expect_same_gpu(op, t)?;
    }
    // The partial sums bind gy read-write (they may mask it in place): it cannot also be bound
    // as x or the ReLU's y.
    if gy.same_storage(x) || (relu && gy.same_storage(y)) {
        return Err(Error::shape(
            op,
            "gy must not share a buffer with x or y (the backward may write over gy)",
        ));
    }
    expect_channel_vectors(
        op,
        ("x", x),
        d.c,
        &[
            ("gamma", gamma),
            ("saved mean", &saved.mean),
            ("saved invstd", &saved.invstd),
        ],
    )?;
    let gpu = x.gpu();
    let mask = gy_use == GyUse::Mask && relu;
    let p = d.params(0.0, 0.0);
    // Without the ReLU mask y is never read; bind x in its place (not gy, which the in-place
    // kernels write).
    let y = if relu { y } else { x };
    let groups = d.c * d.chunks();
    let partials = Tensor::uninit(gpu, &[groups * 2], DType::F32, op)?;
    let (pp, vec4) = d.partials(p);
    let mut buffers = vec![
        x.buffer(),
        y.buffer(),
        gy.buffer(),
        saved.mean.buffer(),
        saved.invstd.buffer(),
        partials.buffer(),
    ];
    if !vec4 {
        // The pooled variant's indices: not read here (the vec4 kernel has no such binding).
        buffers.push(x.buffer());
    }
    let kernel = if vec4 {
        &BACKWARD_PARTIAL4
    } else {
        &BACKWARD_PARTIAL
    };
    let masks = [flag("RELU", relu), flag("MASK_OUT", mask)];
    gpu.dispatch_with(kernel, &masks, &pp, &buffers, grid_1d(groups as u32))?;
    let [ggamma, gbeta, coef, coef2] = finalize_backward(op, &p, eval, &partials, gamma, saved)?;
    // gx over gy (the in-place kernel writes binding 3), or into a tensor of its own at 6.
    // Masked in place, gy needs no mask here.
    let (pe, quad, grid) = d.elements(p);
    let over_gy = gy_use == GyUse::Overwrite;
    let (kernel, gx) = if over_gy {
        (&BACKWARD_INPUT_INPLACE, gy.clone())
    } else {
        let gx = Tensor::uninit(gpu, x.shape(), DType::F32, op)?;
        (&BACKWARD_INPUT, gx)
    };
    let mut buffers = vec![
        x.buffer(),
        y.buffer(),
        gy.buffer(),
        coef.buffer(),
        coef2.buffer(),
    ];
    if !over_gy {
        buffers.push(gx.buffer());
    }
    let choices = [flag("RELU", relu && !mask), ("QUAD_CHANNELS", quad)];
    gpu.dispatch_with(kernel, &choices, &pe, &buffers, grid)?;
    Ok((gx, ggamma, gbeta))
}

/// The backward of a batch norm followed by a max pool with a ReLU after it
/// ([`Var::batch_norm_max_pool_relu`]), from the batch norm's input `x` (`[N, C, H, W]`), the
/// pool's output `y`, its gradient `gy` and argmax `indices` (`[N, C, OH, OW]`) and the
/// forward's statistics: `(gx, ggamma, gbeta)`. The batch norm's output gradient is nonzero
/// only at the windows' argmax elements, so the reductions run over the pooled outputs and gx
/// gathers it per element, as the max pool's backward does, without ever holding it whole; gx
/// is written over `x` (over a copy when another handle shares `x`).
#[allow(clippy::too_many_arguments)]
fn pooled_backward(
    x: Tensor,
    y: &Tensor,
    gy: &Tensor,
    indices: &Tensor,
    gamma: &Tensor,
    saved: &BnSaved,
    eval: bool,
    [kernel, stride, padding]: [usize; 3],
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "batch_norm_max_pool_relu_backward";
    let [n, c, h, w] = x.nchw(OP, "x")?;
    let (oh, ow) = (
        (h + 2 * padding - kernel) / stride + 1,
        (w + 2 * padding - kernel) / stride + 1,
    );
    for (name, t) in [("y", y), ("gy", gy)] {
        t.expect_f32_shape(OP, name, "the pooled output's", &[n, c, oh, ow])?;
        x.expect_same_gpu(OP, t)?;
    }
    crate::ops::pool::expect_indices(OP, indices, gy)?;
    expect_channel_vectors(
        OP,
        ("x", &x),
        c,
        &[
            ("gamma", gamma),
            ("saved mean", &saved.mean),
            ("saved invstd", &saved.invstd),
        ],
    )?;
    let gpu = x.gpu().clone();
    let planes = |p: Params| Params {
        in_h: h as u32,
        in_w: w as u32,
        out_h: oh as u32,
        out_w: ow as u32,
        ..p
    };
    // The sums over dy's nonzeros: backward_partial walking the pooled outputs.
    let pooled = Dims { n, c, hw: oh * ow };
    let groups = c * pooled.chunks();
    let partials = Tensor::uninit(&gpu, &[groups * 2], DType::F32, OP)?;
    gpu.dispatch_with(
        &BACKWARD_PARTIAL,
        &[("POOLED", 1.0), ("RELU", 1.0)],
        &planes(pooled.params(0.0, 0.0)),
        &[
            x.buffer(),
            y.buffer(),
            gy.buffer(),
            saved.mean.buffer(),
            saved.invstd.buffer(),
            partials.buffer(),
            indices.buffer(),
        ],
        grid_1d(groups as u32),
    )?;
    // The per-channel coefficients over the batch norm's N * H * W values.
    let full = Dims { n, c, hw: h * w };
    let p = Params {
        chunks: pooled.chunks() as u32,
        ..planes(full.params(0.0, 0.0))
    };
    let [ggamma, gbeta, coef, coef2] = finalize_backward(OP, &p, eval, &partials, gamma, saved)?;
    let gx = if x.is_unique() { x } else { x.deep_clone()? };
    gpu.dispatch_bound(
        &POOLED_BACKWARD_INPUT,
        &[
            ("PK", kernel as f64),
            ("PS", stride as f64),
            ("PP", padding as f64),
        ],
        &p,
        &[
            (1, gx.buffer()),
            (2, y.buffer()),
            (3, gy.buffer()),
            (4, coef.buffer()),
            (5, coef2.buffer()),
            (7, indices.buffer()),
        ],
        grid_for_elements(gx.numel().div_ceil(4)),
    )?;
    Ok((gx, ggamma, gbeta))
}

/// Backward of [`batch_norm_train`]: gradients `(gx, ggamma, gbeta)` from the forward's input
/// `x`, output `y` (read only for the ReLU mask), upstream gradient `gy` and saved statistics.
///
/// `gx = gamma * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat))`, `ggamma = sum(dy * xhat)`,
/// `gbeta = sum(dy)`, per channel over `M = N * H * W` values; `dy = gy` when `relu` zeroed where
/// `y <= 0` (as PyTorch's ReLU backward: a NaN `y` passes the gradient). `gy` must not share a
/// buffer with `x` (nor with `y` when `relu`).
pub fn batch_norm_backward(
    x: &Tensor,
    y: &Tensor,
    gy: &Tensor,
    gamma: &Tensor,
    saved: &BnSaved,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    backward(
        "batch_norm_backward",
        x,
        y,
        gy,
        gamma,
        saved,
        relu,
        false,
        GyUse::Read,
    )
}

/// Backward of eval-mode batch norm (fixed statistics, e.g. fine-tuning with a frozen backbone's
/// running stats): `gx = dy * gamma * invstd`, `ggamma = sum(dy * xhat)`, `gbeta = sum(dy)`, with
/// `saved` from [`batch_norm_eval_stats`].
pub fn batch_norm_eval_backward(
    x: &Tensor,
    y: &Tensor,
    gy: &Tensor,
    gamma: &Tensor,
    saved: &BnSaved,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    backward(
        "batch_norm_eval_backward",
        x,
        y,
        gy,
        gamma,
        saved,
        relu,
        true,
        GyUse::Read,
    )
}

impl Var {
    /// Batch norm of `self` (`[N, C, H, W]`) with learnable `gamma`, `beta` (`[C]`) and running
    /// statistics (`[C]`, updated in place in training mode), optionally fused with a ReLU.
    /// Records a backward for `self`, `gamma` and `beta`; saves tensors only when one is tracked.
    pub fn batch_norm(
        &self,
        gamma: &Var,
        beta: &Var,
        running_mean: &Tensor,
        running_var: &Tensor,
        opts: BatchNorm,
    ) -> Result<Var> {
        batch_norm_var(self, gamma, beta, running_mean, running_var, opts, None)
    }

    /// Batch norm of `self` (`[N, C, H, W]`), a ReLU and a `kernel` x `kernel` max pool: a
    /// ResNet stem's `max_pool(relu(bn(x)))`, computed as [`max_pool2d_relu`] of the batch
    /// norm's output (the ReLU commutes with the pool), the pool normalizing as it reads: the
    /// batch norm's full-size output is never written. `opts.relu` must be off: the ReLU is
    /// part of the op. The backward keeps `self`, the pooled output and the argmax indices,
    /// and never holds the pool's full-size input gradient either (see `pooled_backward` in
    /// `src/ops/batchnorm.rs`).
    ///
    /// [`max_pool2d_relu`]: crate::ops::max_pool2d_relu
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_max_pool_relu(
        &self,
        gamma: &Var,
        beta: &Var,
        running_mean: &Tensor,
        running_var: &Tensor,
        opts: BatchNorm,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Var> {
        const OP: &str = "batch_norm_max_pool_relu";
        if opts.relu {
            return Err(Error::shape(
                OP,
                "the ReLU follows the max pool in this op: leave BatchNorm's relu off",
            ));
        }
        let inputs = [self, gamma, beta];
        let (x, g, b) = (self.tensor(), gamma.tensor(), beta.tensor());
        let d = Dims::of(OP, x)?;
        let s = if opts.training {
            let (m, e) = (opts.momentum, opts.eps);
            train_stats(OP, x, d, g, b, running_mean, running_var, m, e)?.0
        } else {
            expect_bn_vectors(OP, x, d.c, [g, b, running_mean, running_var])?;
            batch_norm_eval_stats(running_mean, running_var, opts.eps)?
        };
        let bn = [&s.mean, &s.invstd, g, b];
        let (y, idx) = crate::ops::pool::max_pool2d_bn_relu(x, bn, kernel, stride, padding)?;
        let keep = Var::any_tracked(&inputs).then(|| (x.clone(), g.clone(), s, y.clone(), idx));
        Var::record(OP, &inputs, y, move |gy| {
            let (x, g, s, y, idx) = keep.expect("saved when tracked");
            let window = [kernel, stride, padding];
            let (gx, gg, gb) = pooled_backward(x, &y, &gy, &idx, &g, &s, !opts.training, window)?;
            Ok(vec![Some(gx), Some(gg), Some(gb)])
        })
    }

    /// Batch norm of `self` plus `residual` (of `self`'s shape), then the ReLU when `opts.relu`:
    /// a residual block's last step (`relu(bn(x) + identity)`) in one kernel, without writing
    /// the batch norm's output for a separate add to read back. Records a backward for `self`,
    /// `gamma`, `beta` and `residual`.
    pub fn batch_norm_add(
        &self,
        gamma: &Var,
        beta: &Var,
        running_mean: &Tensor,
        running_var: &Tensor,
        opts: BatchNorm,
        residual: &Var,
    ) -> Result<Var> {
        batch_norm_var(
            self,
            gamma,
            beta,
            running_mean,
            running_var,
            opts,
            Some(residual),
        )
    }
}

/// [`Var::batch_norm`], and with `residual` [`Var::batch_norm_add`].
fn batch_norm_var(
    xv: &Var,
    gamma: &Var,
    beta: &Var,
    running_mean: &Tensor,
    running_var: &Tensor,
    opts: BatchNorm,
    residual: Option<&Var>,
) -> Result<Var> {
    const OP: &str = "batch_norm";
    let mut inputs = vec![xv, gamma, beta];
    inputs.extend(residual);
    let tracked = Var::any_tracked(&inputs);
    let (x, g, b) = (xv.tensor(), gamma.tensor(), beta.tensor());
    let r = residual.map(Var::tensor);
    let d = Dims::of(OP, x)?;
    if let Some(r) = r {
        r.expect_f32_shape(OP, "residual", "x's", x.shape())?;
        x.expect_same_gpu(OP, r)?;
    }
    // The statistics to normalize with, as the records `normalize` reads: the batch's in
    // training, the running ones in eval mode; and the statistics the backward needs, saved in
    // training and, when tracked, in eval mode (the running ones as the training path saves
    // them).
    let (stats, record) = if opts.training {
        let (m, e) = (opts.momentum, opts.eps);
        let (s, record) = train_stats(OP, x, d, g, b, running_mean, running_var, m, e)?;
        (Some(s), record)
    } else {
        expect_bn_vectors(OP, x, d.c, [g, b, running_mean, running_var])?;
        let eval_stats = || batch_norm_eval_stats(running_mean, running_var, opts.eps);
        let stats = tracked.then(eval_stats).transpose()?;
        let running = [running_mean, running_var, g, b];
        (stats, channel_record(OP, running, opts.eps)?)
    };
    let y = normalize(x, d, &record, opts.relu, r, OP)?;
    let saved = stats.filter(|_| tracked);
    // The backward reads the output for the ReLU's mask.
    let keep = saved.map(|s| (x.clone(), g.clone(), opts.relu.then(|| y.clone()), s));
    let with_residual = residual.is_some();
    Var::record(OP, &inputs, y, move |gy| {
        let (x, g, y, s) = keep.expect("saved when tracked");
        let (op, eval) = if opts.training {
            ("batch_norm_backward", false)
        } else {
            ("batch_norm_eval_backward", true)
        };
        if !with_residual {
            // gx replaces gy when nothing else holds it.
            let gy_use = if gy.is_unique() {
                GyUse::Overwrite
            } else {
                GyUse::Read
            };
            let y = y.as_ref().unwrap_or(&x);
            let (gx, gg, gb) = backward(op, &x, y, &gy, &g, &s, opts.relu, eval, gy_use)?;
            return Ok(vec![Some(gx), Some(gg), Some(gb)]);
        }
        // relu(bn(x) + r): both terms receive the gradient masked by the ReLU. The residual
        // keeps the masked gradient (masked over gy when nothing else holds it), so gx gets a
        // buffer of its own.
        let (masked, gy_use, y) = match &y {
            Some(y) if gy.is_unique() => (gy, GyUse::Mask, y),
            Some(y) => (crate::ops::relu_backward(y, &gy)?, GyUse::Read, &x),
            None => (gy, GyUse::Read, &x),
        };
        let relu = gy_use == GyUse::Mask;
        let (gx, gg, gb) = backward(op, &x, y, &masked, &g, &s, relu, eval, gy_use)?;
        Ok(vec![Some(gx), Some(gg), Some(gb), Some(masked)])
    })
}
