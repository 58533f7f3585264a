//! A convolution's geometry and plans: the validated shapes ([`Geometry`]), the tap windows of
//! small inputs, the input gradient's sub-pixel phases, each pass's route (direct or Winograd,
//! tuned or not), and the GEMM grids.

use super::*;
use crate::WinogradTile;

/// Whether a conv GEMM on `gpu` reduces taps outer ([`ConvOrder::Rsc`]): over `channels` in
/// chunks of `chunk` (the tile's BK; for the weight gradient, whose columns hold the taps, its
/// BN), every chunk must lie in one tap.
pub(super) fn taps_outer(gpu: &Gpu, channels: usize, chunk: usize) -> bool {
    gpu.conv_order() == ConvOrder::Rsc && channels.is_multiple_of(chunk)
}

/// Taps outer, the forward and input-gradient GEMMs of kernels larger than 1x1 read a
/// `[K, R, S, C]` copy of the weights, which moves 8 bytes per weight, while the GEMM does one
/// multiply-add per weight and column. At an H200's ratio (about 15 T multiply-adds/s in these
/// kernels to 4.8 TB/s) the copy costs 25 / columns of the GEMM's time: these many columns
/// keep it near 2%, below what the order saves. GEMMs with fewer (layer2-4 at batch 1) keep
/// the channel-major order, which reads the weights as they lie.
pub(crate) const WEIGHT_COPY_MIN_COLUMNS: usize = 1024;

/// Largest grid dimension allowed by WebGPU.
pub(super) const MAX_GRID: usize = 65_535;
/// Split-K of the weight gradient (aiming at [`TileModel`]'s target of workgroups) gives each
/// split at least this much of the reduction...
pub(super) const SPLIT_MIN_CHUNK: usize = 256;
/// ...and keep the partial results below this many elements.
pub(super) const SPLIT_MAX_PARTIAL: usize = 1 << 25;

/// Output height and width of a convolution: `((h + 2p - kernel) / stride + 1, ...)`, 0 where
/// the kernel does not fit the padded input or the stride is 0.
pub fn conv2d_output_size(
    h: usize,
    w: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> (usize, usize) {
    let one = |size: usize| {
        let padded = size + 2 * padding;
        if stride == 0 || padded < kernel {
            0
        } else {
            (padded - kernel) / stride + 1
        }
    };
    (one(h), one(w))
}

/// Validated geometry of one convolution.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    pub(super) x: [usize; 4],
    pub(super) w: [usize; 4],
    pub(super) oh: usize,
    pub(super) ow: usize,
    pub(super) stride: usize,
    pub(super) padding: usize,
}

impl Geometry {
    pub(super) fn new(
        op: &'static str,
        x: [usize; 4],
        w: [usize; 4],
        stride: usize,
        padding: usize,
    ) -> Result<Geometry> {
        let [n, c, h, wd] = x;
        let [k, c2, r, s] = w;
        let shapes = || format!("x {x:?}, w {w:?}, stride {stride}, padding {padding}");
        if stride == 0 {
            return Err(Error::shape(
                op,
                format!("stride must be at least 1 ({})", shapes()),
            ));
        }
        if c != c2 {
            return Err(Error::shape(
                op,
                format!(
                    "input has {c} channels but the weights expect {c2} ({})",
                    shapes()
                ),
            ));
        }
        if x.contains(&0) || w.contains(&0) {
            return Err(Error::shape(op, format!("empty dimension ({})", shapes())));
        }
        if h + 2 * padding < r || wd + 2 * padding < s {
            return Err(Error::shape(
                op,
                format!(
                    "kernel {r}x{s} is larger than the padded input {}x{} ({})",
                    h + 2 * padding,
                    wd + 2 * padding,
                    shapes()
                ),
            ));
        }
        let oh = (h + 2 * padding - r) / stride + 1;
        let ow = (wd + 2 * padding - s) / stride + 1;
        let g = Geometry {
            x,
            w,
            oh,
            ow,
            stride,
            padding,
        };
        // Every flat index the shaders form must fit in u32.
        let limit = u32::MAX as usize - 2 * 128;
        let extents = [
            n * c * h * wd,
            k * c * r * s,
            n * k * oh * ow,
            padding + h.max(wd) + r.max(s),
            stride * oh.max(ow),
        ];
        if extents.iter().any(|&e| e > limit)
            || padding > i32::MAX as usize / 4
            || stride > i32::MAX as usize / 4
        {
            return Err(Error::shape(
                op,
                format!("problem exceeds the u32 index range ({})", shapes()),
            ));
        }
        Ok(g)
    }

    /// The shader's overridable kernel size.
    pub(super) fn kernel_size(&self) -> [(&'static str, f64); 2] {
        [("KH", self.w[2] as f64), ("KW", self.w[3] as f64)]
    }

    /// The overridable constants of a GEMM pass: the kernel size and the reduction order.
    pub(super) fn gemm_constants(&self, taps_outer: bool) -> [(&'static str, f64); 3] {
        let [kh, kw] = self.kernel_size();
        [kh, kw, flag("TAPS_OUTER", taps_outer)]
    }

    /// Whether the forward pass on `gpu` reduces taps outer with tiles of `dims`.
    pub(super) fn forward_taps_outer(&self, gpu: &Gpu, dims: (usize, usize, usize)) -> bool {
        taps_outer(gpu, self.x[1], dims.2) && self.weight_copy_pays(gpu, self.forward_gemm().1)
    }

    /// Whether an input-gradient phase on `gpu` reduces taps outer.
    pub(super) fn input_taps_outer(&self, gpu: &Gpu, ph: &InputPhase) -> bool {
        taps_outer(gpu, self.w[0], ph.engine.dims.2) && self.weight_copy_pays(gpu, ph.cols)
    }

    /// Whether a GEMM of `columns` amortizes the weights' taps-outer copy (none for 1x1
    /// kernels, whose weights lie the same in both orders): [`WEIGHT_COPY_MIN_COLUMNS`].
    pub(super) fn weight_copy_pays(&self, gpu: &Gpu, columns: usize) -> bool {
        self.w[2] * self.w[3] == 1 || columns >= gpu.conv_weight_copy_min_columns()
    }

    /// The copy of `w` that the forward and input-gradient GEMMs read when `taps_outer`:
    /// `[K, R, S, C]`. None where they read `w` itself (channel-major, or a 1x1 kernel, whose
    /// weights lie the same in both orders).
    pub(super) fn weights_copy(
        &self,
        op: &'static str,
        w: &Tensor,
        taps_outer: bool,
    ) -> Result<Option<Tensor>> {
        let [k, c, r, s] = self.w;
        if !taps_outer || r * s == 1 {
            return Ok(None);
        }
        let out = Tensor::uninit(w.gpu(), &[k, r, s, c], DType::F32, op)?;
        w.gpu().dispatch_with(
            &WEIGHTS_RSC,
            &self.kernel_size(),
            &self.params(false, 0, 1),
            &[w.buffer(), out.buffer()],
            crate::gpu::grid_for_elements(w.numel()),
        )?;
        Ok(Some(out))
    }

    pub(super) fn y_shape(&self) -> [usize; 4] {
        [self.x[0], self.w[0], self.oh, self.ow]
    }

    pub(super) fn params(&self, has_bias: bool, chunk: usize, splits: usize) -> Params {
        let [n, c, h, w] = self.x;
        let [k, _, r, s] = self.w;
        Params {
            batch: n as u32,
            in_c: c as u32,
            in_h: h as u32,
            in_w: w as u32,
            out_c: k as u32,
            out_h: self.oh as u32,
            out_w: self.ow as u32,
            kh: r as u32,
            kw: s as u32,
            stride: self.stride as u32,
            pad: self.padding as u32,
            has_bias: has_bias as u32,
            chunk: chunk as u32,
            splits: splits as u32,
            r0: 0,
            s0: 0,
            nr: r as u32,
            ns: s as u32,
            h0: 0,
            w0: 0,
            hc: h as u32,
            wc: w as u32,
            scaled: 0,
            epilogue: 0,
            eps: 0.0,
            reduce_len: 0,
            batched: 0,
            z_base: 0,
        }
    }

    /// Split-K plan of the forward pass with tiles of `dims`: (chunk, splits); one split unless
    /// the output tiles alone are too few to fill the GPU and the reduction is long.
    pub(super) fn forward_splits(
        &self,
        model: &TileModel,
        dims: (usize, usize, usize),
    ) -> (usize, usize) {
        let [n, c, _, _] = self.x;
        let [k, _, r, s] = self.w;
        let (tile_m, tile_n, tile_k) = dims;
        let tiles = k.div_ceil(tile_m) * (n * self.oh * self.ow).div_ceil(tile_n);
        let crs = c * r * s;
        let splits = model.fill_splits(tiles, crs);
        if splits == 1 {
            return (crs, 1);
        }
        let chunk = crs.div_ceil(splits).next_multiple_of(tile_k);
        (chunk, crs.div_ceil(chunk))
    }

    /// The forward GEMM's rows (output channels) and columns (output pixels of the batch).
    pub(super) fn forward_gemm(&self) -> (usize, usize) {
        (self.w[0], self.x[0] * self.oh * self.ow)
    }

    /// Tile of the forward pass.
    pub(super) fn forward_tile(&self, model: &TileModel) -> ConvTile {
        let (m, n) = self.forward_gemm();
        model.choose(m, n, 1)
    }

    /// Fail unless `gy` has the shape of this convolution's output (the backward passes).
    pub(super) fn expect_y_shape(&self, op: &'static str, gy: [usize; 4]) -> Result<()> {
        if gy != self.y_shape() {
            return Err(Error::shape(
                op,
                format!(
                    "gy has shape {gy:?} but x {:?} and w {:?} give outputs {:?}",
                    self.x,
                    self.w,
                    self.y_shape()
                ),
            ));
        }
        Ok(())
    }

    /// Tile of the weight gradient: split-K can fill the grid, so only the chunks' minimum
    /// length limits the third axis.
    pub(super) fn weight_tile(&self, model: &TileModel) -> ConvTile {
        let [n, c, _, _] = self.x;
        let [k, _, r, s] = self.w;
        model.choose(
            k,
            c * r * s,
            (n * self.oh * self.ow).div_ceil(SPLIT_MIN_CHUNK),
        )
    }

    /// Split-K plan of the weight gradient with tiles of `dims`: (chunk, splits).
    pub(super) fn weight_splits(
        &self,
        model: &TileModel,
        dims: (usize, usize, usize),
    ) -> (usize, usize) {
        let [n, c, _, _] = self.x;
        let [k, _, r, s] = self.w;
        let (tile_m, tile_n, tile_k) = dims;
        let total = n * self.oh * self.ow;
        let tiles = k.div_ceil(tile_m) * (c * r * s).div_ceil(tile_n);
        let partial = k * c * r * s;
        let splits = model.weight_grad_splits(tiles, total, partial, SPLIT_MAX_PARTIAL, MAX_GRID);
        let chunk = total.div_ceil(splits).next_multiple_of(tile_k);
        (chunk, total.div_ceil(chunk))
    }
}

/// The taps of a kernel that reach the input, when some never do (the input is smaller than
/// the kernel's reach: a 3x3 kernel with padding 1 on a 1x1 map reads only padding with all but
/// its centre tap). The convolution is then the one of that window of taps with `padding` less
/// `first` and the same output size, and its GEMMs skip reductions over zeros (8/9 of
/// ResNet-18's layer4 3x3 convs on 32x32 images). See "tap windows" in `shaders/conv.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct TapWindow {
    /// First tap of the window, along both axes.
    pub(super) first: usize,
    /// Window size (rows, columns of taps).
    pub(super) taps: (usize, usize),
    /// The smaller convolution's padding.
    pub(super) padding: usize,
}

impl Geometry {
    /// The geometry whose GEMMs a convolution runs: that of its window of taps where it has
    /// one ([`Geometry::tap_window`]), else its own (for the functions that report a plan).
    pub(super) fn windowed(
        op: &'static str,
        x_shape: [usize; 4],
        w_shape: [usize; 4],
        stride: usize,
        padding: usize,
    ) -> Result<Geometry> {
        let g = Geometry::new(op, x_shape, w_shape, stride, padding)?;
        let Some(win) = g.tap_window() else {
            return Ok(g);
        };
        let [k, c, _, _] = w_shape;
        let window = [k, c, win.taps.0, win.taps.1];
        Geometry::new(op, x_shape, window, stride, win.padding)
    }

    /// The window of taps that reach the input, if it is smaller than the kernel and the
    /// smaller convolution has this one's output size with symmetric padding (the same first
    /// tap along both axes).
    pub(super) fn tap_window(&self) -> Option<TapWindow> {
        let [_, _, h, wd] = self.x;
        let [_, _, r, s] = self.w;
        let (stride, padding) = (self.stride, self.padding);
        // Taps t reach input row oh * stride - padding + t inside [0, size) for some output oh.
        // None where no tap does (outputs of padding only, which the full kernel handles).
        let axis = |size: usize, taps: usize, out: usize| {
            let first = padding.saturating_sub((out - 1) * stride);
            let last = (taps - 1).min(size - 1 + padding);
            let count = (last + 1).checked_sub(first).filter(|&n| n > 0)?;
            Some((first, count))
        };
        let (r0, nr) = axis(h, r, self.oh)?;
        let (s0, ns) = axis(wd, s, self.ow)?;
        if r0 != s0 || (nr, ns) == (r, s) {
            return None;
        }
        let padding = padding - r0;
        let oh = (h + 2 * padding).checked_sub(nr)? / stride + 1;
        let ow = (wd + 2 * padding).checked_sub(ns)? / stride + 1;
        ((oh, ow) == (self.oh, self.ow)).then_some(TapWindow {
            first: r0,
            taps: (nr, ns),
            padding,
        })
    }

    /// Params of the tap-window copies: the kernel, the window, and the K*C rows to copy.
    pub(super) fn window_params(&self, win: TapWindow) -> Params {
        let [k, c, _, _] = self.w;
        let len = k * c;
        let mut p = self.params(false, 0, 1);
        (p.r0, p.s0) = (win.first as u32, win.first as u32);
        (p.nr, p.ns) = (win.taps.0 as u32, win.taps.1 as u32);
        p.reduce_len = len as u32;
        p
    }

    /// `w` cut to the window's taps: `[K, C, nr, ns]`.
    pub(super) fn crop_taps(&self, op: &'static str, w: &Tensor, win: TapWindow) -> Result<Tensor> {
        let [k, c, _, _] = self.w;
        self.copy_taps(op, &TAPS_CROP, w, [k, c, win.taps.0, win.taps.1], win)
    }

    /// The window's weight gradient `[K, C, nr, ns]` placed in the kernel's `[K, C, R, S]`,
    /// zeros at the taps that reach no input.
    pub(super) fn expand_taps(
        &self,
        op: &'static str,
        gw: &Tensor,
        win: TapWindow,
    ) -> Result<Tensor> {
        self.copy_taps(op, &TAPS_EXPAND, gw, self.w, win)
    }

    /// Run a tap-window copy `kernel` from `src` into a new tensor of `shape`.
    pub(super) fn copy_taps(
        &self,
        op: &'static str,
        kernel: &Kernel,
        src: &Tensor,
        shape: [usize; 4],
        win: TapWindow,
    ) -> Result<Tensor> {
        let [k, c, _, _] = self.w;
        let out = Tensor::uninit(src.gpu(), &shape, DType::F32, op)?;
        src.gpu().dispatch(
            kernel,
            &self.window_params(win),
            &[src.buffer(), out.buffer()],
            grid_1d((k * c).div_ceil(256) as u32),
        )?;
        Ok(out)
    }
}

/// The taps of each kernel axis the GEMMs of [`conv2d`] and its gradients run over for these
/// shapes: the kernel's, or fewer when some taps reach no input (for tests and benchmarks).
pub fn conv2d_taps(
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    stride: usize,
    padding: usize,
) -> Result<(usize, usize)> {
    let g = Geometry::new("conv2d", x_shape, w_shape, stride, padding)?;
    Ok(g.tap_window()
        .map_or((w_shape[2], w_shape[3]), |win| win.taps))
}

/// One sub-pixel phase of the input gradient (see the shader's header): its first tap and tap
/// counts, its first pixel and pixel counts, its GEMM, multiply engine and split-K chunk.
pub(super) struct InputPhase {
    pub(super) r0: usize,
    pub(super) s0: usize,
    pub(super) nr: usize,
    pub(super) ns: usize,
    pub(super) h0: usize,
    pub(super) w0: usize,
    pub(super) hc: usize,
    pub(super) wc: usize,
    /// GEMM rows (input channels) and columns (this phase's pixels of the batch).
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) engine: Engine,
    /// Reduction indices per split (the whole reduction without split-K).
    pub(super) chunk: usize,
}

/// How a pass of a convolution runs ([`Geometry::route`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// Winograd ([`winograd`]), its GEMMs on the f16 engine where `f16` (F(2x2, 3x3)), else on
    /// the f32 one (the gpu's [`crate::WinogradTile`]).
    Winograd { f16: bool, tile: WinogradTile },
    /// The direct GEMM, with this engine and tile (None: the model's plan on the gpu's engine).
    Direct(Option<GemmTile>),
    /// The direct convolution on the GEMMs without barriers ([`lanes`]), where
    /// [`lanes::takes`] the pass and no tile is forced: untuned, or where tuning chose it.
    Lanes,
}

/// The input gradient's dispatches: the phases that taps reach, their common number of splits,
/// and whether some pixels are reached by no tap (and only hold zeros).
pub(super) struct InputPlan {
    pub(super) phases: Vec<InputPhase>,
    pub(super) splits: usize,
    pub(super) skips_pixels: bool,
}

impl InputPlan {
    /// The model's tile for the first phase (the tuner's baseline for the whole gradient, on
    /// the gpu's engine).
    pub(super) fn model_tile(&self, model: &TileModel) -> ConvTile {
        self.phases
            .first()
            .map_or(ConvTile::T64x64, |ph| model.choose(ph.rows, ph.cols, 1))
    }

    /// Whether the phases run as one dispatch (conv.wgsl's MERGED): every one of the stride's
    /// phases (at least two) reduces taps outer on the same tile, so that the shader can
    /// derive each workgroup's phase from grid x, which interleaves them (column tile times the
    /// phases plus the phase, within one grid dimension).
    /// One after another, each phase's GEMM must fill the device on its own, with the short
    /// reductions of the lightest phases (a quarter of the taps of a 3x3 stride-2 kernel's
    /// heaviest) and a drain between phases; together the phases' workgroups share it.
    pub(super) fn merges(&self, g: &Geometry, gpu: &Gpu) -> bool {
        let Some(first) = self.phases.first() else {
            return false;
        };
        let dims = first.engine.dims;
        self.phases.len() >= 2
            && self.phases.len() == g.stride * g.stride
            && self.phases.iter().all(|ph| {
                ph.engine.dims == dims
                    && ph.cols.div_ceil(dims.1) * self.phases.len() <= MAX_GRID
                    && ph.rows.div_ceil(dims.0) <= MAX_GRID
                    && g.input_taps_outer(gpu, ph)
            })
    }
}

impl Geometry {
    /// How one pass runs: the direct GEMM with `given` when the caller forces a tile; else with
    /// autotuning on (and no tile forced by `RESNET_WGPU_CONV_TILE`) the tuned algorithm,
    /// engine and tile, tuning them now if this shape and pass are new (`model` gives the
    /// model's tile, which the gpu's engine runs, and `trial` runs the pass once as a
    /// candidate); else Winograd where the shape fits it and [`winograd::by_rule`] says so, the
    /// GEMMs without barriers where [`lanes::takes`] the pass and no tile is forced, and the
    /// model's plan otherwise. [`crate::ConvAlgo::Winograd`] runs Winograd wherever the
    /// shape fits it, untuned.
    pub(super) fn route(
        &self,
        gpu: &Gpu,
        pass: ConvPass,
        given: Option<GemmTile>,
        model: impl FnOnce() -> ConvTile,
        trial: impl FnMut(Candidate) -> Result<()>,
    ) -> Result<Route> {
        if given.is_some() {
            return Ok(Route::Direct(given));
        }
        let fits = self.winograd_fits(gpu, pass);
        if !self.tuned_here(gpu, fits) {
            return Ok(self.untuned_route(gpu, fits, pass));
        }
        let plan = fits.then(|| tune::WinogradPlan {
            rule: winograd::auto_rule(gpu, self),
            model_tile: winograd::tile_for(gpu, false, self, pass),
            tiles: winograd::f32_tiles(gpu),
        });
        let model = || GemmTile::on(gpu, model());
        let lanes = lanes::takes(gpu, self, pass);
        let tuned = tune::tuned(gpu, self.key(gpu, pass), model, lanes, plan, trial)?;
        Ok(self.tuned_route(gpu, &tuned))
    }

    /// The route of a pass as [`Geometry::route`] would take it, without tuning: a tuned
    /// shape's tuned route, else the rule's (for [`conv2d_winograd`]).
    pub(super) fn known_route(&self, gpu: &Gpu, pass: ConvPass) -> Route {
        let fits = self.winograd_fits(gpu, pass);
        match gpu.tuned_conv(&self.key(gpu, pass)) {
            Some(t) if self.tuned_here(gpu, fits) => self.tuned_route(gpu, &t),
            _ => self.untuned_route(gpu, fits, pass),
        }
    }

    /// Whether `pass` can run Winograd ([`winograd::fits`]).
    pub(super) fn winograd_fits(&self, gpu: &Gpu, pass: ConvPass) -> bool {
        winograd::fits(gpu, self)
            && (pass != ConvPass::WeightGrad || winograd::weight_grad_fits(gpu, self))
    }

    /// Whether a pass (that `fits` Winograd or not) is tuned: autotuning on, no tile forced,
    /// and not a Winograd-shaped pass under [`ConvAlgo::Winograd`], which runs it untuned.
    pub(super) fn tuned_here(&self, gpu: &Gpu, fits: bool) -> bool {
        gpu.conv_autotune()
            && forced_tile().is_none()
            && !(fits && gpu.conv_algo() == ConvAlgo::Winograd)
    }

    pub(super) fn untuned_route(&self, gpu: &Gpu, fits: bool, pass: ConvPass) -> Route {
        if fits && winograd::by_rule(gpu, self) {
            let f16 = f16_kernels(gpu).is_some();
            Route::Winograd {
                f16,
                tile: winograd::tile_for(gpu, f16, self, pass),
            }
        } else if forced_tile().is_none() && lanes::takes(gpu, self, pass) {
            Route::Lanes
        } else {
            Route::Direct(None)
        }
    }

    pub(super) fn tuned_route(&self, gpu: &Gpu, tuned: &TunedConv) -> Route {
        if tuned.winograd && gpu.conv_algo() == ConvAlgo::Auto {
            let f16 = tuned.winograd_f16;
            Route::Winograd {
                f16,
                tile: if f16 {
                    winograd::F16_TILE
                } else {
                    tuned.winograd_tile
                },
            }
        } else if tuned.lanes {
            Route::Lanes
        } else {
            Route::Direct(Some(tuned.tile))
        }
    }

    /// The tuning key of `pass` under `gpu`'s settings: a shape tuned under one precision,
    /// order, staging, Winograd tile or read width of the GEMMs without barriers is tuned again
    /// under another, whose candidates differ.
    pub(super) fn key(&self, gpu: &Gpu, pass: ConvPass) -> ConvKey {
        let precision = gpu.conv_precision();
        ConvKey {
            pass,
            x: self.x,
            w: self.w,
            stride: self.stride,
            padding: self.padding,
            precision,
            order: gpu.conv_order(),
            staging: gpu.conv_staging(),
            f16_staging: (precision == ConvPrecision::F16).then(|| gpu.f16_staging()),
            winograd_tile: gpu.winograd_tile(),
            wide_reads: super::conv_gemm_wide_reads(gpu),
        }
    }

    /// Plan the input gradient: one GEMM per sub-pixel phase, on `tile`'s engine and tile
    /// unless the model chooses (on the gpu's engine). Pixels h with (h + padding) % stride == a
    /// meet exactly the taps r with r % stride == a.
    pub(super) fn input_plan(
        &self,
        gpu: &Gpu,
        model: &TileModel,
        tile: Option<GemmTile>,
    ) -> InputPlan {
        let [n, c, h, wd] = self.x;
        let [k, _, r, s] = self.w;
        let (stride, padding) = (self.stride, self.padding);
        // (first pixel, pixel count, tap count) of phase a along an axis.
        let phase = |a: usize, size: usize, taps: usize| {
            let first = (a + stride - padding % stride) % stride;
            let count = if first < size {
                (size - first).div_ceil(stride)
            } else {
                0
            };
            let ntaps = if a < taps {
                (taps - a).div_ceil(stride)
            } else {
                0
            };
            (first, count, ntaps)
        };
        let mut phases = Vec::new();
        let mut skips_pixels = false;
        for a in 0..stride {
            for b in 0..stride {
                let ((h0, hc, nr), (w0, wc, ns)) = (phase(a, h, r), phase(b, wd, s));
                if hc == 0 || wc == 0 {
                    continue;
                }
                if nr * ns == 0 {
                    skips_pixels = true;
                    continue;
                }
                let cols = n * hc * wc;
                let engine = Engine::for_gpu(gpu, tile, || model.choose(c, cols, 1));
                phases.push(InputPhase {
                    r0: a,
                    s0: b,
                    nr,
                    ns,
                    h0,
                    w0,
                    hc,
                    wc,
                    rows: c,
                    cols,
                    engine,
                    chunk: k * nr * ns,
                });
            }
        }
        // The phases write one gx (or one set of partials), so they run one after the other:
        // each must fill the GPU on its own, splitting its reduction when its tiles are too few.
        // They share one number of splits, that of the phase that wants most, so that one
        // reduce sums all pixels; a phase with fewer taps gets shorter chunks (or empty ones,
        // which write zeros).
        let wanted = phases
            .iter()
            .map(|ph| {
                let (bm, bn, _) = ph.engine.dims;
                model.fill_splits(ph.rows.div_ceil(bm) * ph.cols.div_ceil(bn), ph.chunk)
            })
            .max()
            .unwrap_or(1);
        let splits = wanted.min((SPLIT_MAX_PARTIAL / (n * c * h * wd)).max(1));
        if splits > 1 {
            for ph in &mut phases {
                ph.chunk = ph.chunk.div_ceil(splits).next_multiple_of(ph.engine.dims.2);
            }
        }
        InputPlan {
            phases,
            splits,
            skips_pixels,
        }
    }
}

/// Grid for a GEMM of `m` rows and `n` columns in tiles of `dims`: column tiles over x (and z
/// past 65,535), row tiles over y.
pub(super) fn gemm_grid(
    op: &'static str,
    m: usize,
    n: usize,
    dims: (usize, usize, usize),
) -> Result<[u32; 3]> {
    let (tile_m, tile_n, _) = dims;
    let col_tiles = n.div_ceil(tile_n);
    let row_tiles = m.div_ceil(tile_m);
    let x = col_tiles.min(MAX_GRID);
    let z = col_tiles.div_ceil(x);
    if row_tiles > MAX_GRID || z > MAX_GRID {
        return Err(Error::shape(
            op,
            format!("a {m} x {n} GEMM needs too many workgroups"),
        ));
    }
    Ok([x as u32, row_tiles as u32, z as u32])
}
