//! The f16 tensor-core conv engine (`ConvPrecision::F16`, shaders/conv_mma.wgsl) against the CPU
//! reference computed from the same f16-rounded operands.
//!
//! Where the adapter has no usable cooperative-matrix configuration (Debian 12's lavapipe, the
//! browsers), the tests check that asking for F16 fails with a message that says why. Set
//! `RESNET_WGPU_EXPECT_TENSOR_CORES=1` to make that a failure instead: CI does so when it runs
//! this file on Mesa 26's lavapipe, which has 8x8x8 f16 fragments (scripts/tensor-cores/).

mod common;
use common::*;
use resnet_wgpu::ops::{ConvPass, ConvTile, GemmTile, MmaTile};
use resnet_wgpu::{
    ConvAlgo, ConvPrecision, ConvStaging, Gpu, GpuOptions, MmaConfig, Tape, Tensor, ops, reference,
};

/// A device opened asking for tensor cores, with F16 convolutions selected; None (after checking
/// the error) where the adapter has none.
fn f16_gpu() -> Option<Gpu> {
    let gpu = Gpu::with_options(GpuOptions {
        tensor_cores: true,
        ..Default::default()
    })
    .expect("no GPU adapter");
    match gpu.set_conv_precision(ConvPrecision::F16) {
        Ok(()) => {
            let config = gpu.mma_config().expect("F16 was accepted");
            eprintln!("{}: f16 engine with {config:?}", gpu.info());
            Some(gpu)
        }
        Err(e) => {
            let expected = std::env::var("RESNET_WGPU_EXPECT_TENSOR_CORES").is_ok_and(|v| v == "1");
            assert!(
                !expected,
                "RESNET_WGPU_EXPECT_TENSOR_CORES=1 but {}: {e}",
                gpu.info()
            );
            let msg = e.to_string();
            assert!(
                msg.contains("ConvPrecision::F16") && msg.contains("cooperative-matrix"),
                "{msg}"
            );
            // It lists the configurations the engine has kernels for.
            for config in MmaConfig::supported() {
                assert!(msg.contains(&config.to_string()), "{msg}");
            }
            assert!(
                msg.contains("16x16x16 f16 x f16 + f32 fragments with subgroups of 32"),
                "{msg}"
            );
            assert_eq!(gpu.conv_precision(), ConvPrecision::F32);
            None
        }
    }
}

fn rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| reference::round_f16(x)).collect()
}

fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt()
}

/// f32 accumulation of f16 products, in an order unlike the reference's: a relative error of
/// about 1e-6 per term, and the driver's f32 -> f16 conversion may round toward zero where
/// the reference rounds to nearest (one f16 ulp, 2^-11 relative, on some operands).
#[track_caller]
/// That the f16 engine really ran: `actual` differs from the `exact` f32 convolution by the
/// operands' rounding (about 1e-4 of the outputs' size), far more than f32 sums do (about 1e-7
/// to 1e-6).
fn assert_f16_ran(actual: &[f32], exact: &[f32], what: &str) {
    let off = actual
        .iter()
        .zip(exact)
        .fold(0f32, |m, (a, e)| m.max((a - e).abs()));
    assert!(
        off > 1e-5 * rms(exact),
        "{what} equals the exact f32 result (largest difference {off})"
    );
}

fn close_f16(actual: &[f32], expected: &[f32], what: &str) {
    let atol = 2e-3 * rms(expected);
    assert_close(actual, expected, 2e-3, atol, what);
}

struct Case {
    x: [usize; 4],
    w: [usize; 4],
    stride: usize,
    pad: usize,
    /// Magnitude of the output gradient (small values test the gradient scaling).
    gy_scale: f32,
}

/// The f32 tiles that select each f16 tile ([`MmaTile::for_f32_tile`]): 64 x 64, 128 x 64 and
/// 128 x 128.
const F16_TILES: [ConvTile; 3] = [ConvTile::T64x64, ConvTile::T128x64, ConvTile::T128x128];

fn check(gpu: &Gpu, c: &Case, seed: u64) {
    for tile in F16_TILES {
        check_tile(gpu, c, seed, tile);
    }
}

fn check_tile(gpu: &Gpu, c: &Case, seed: u64, tile: ConvTile) {
    let xv = random_vec(c.x.iter().product(), seed);
    let wv: Vec<f32> = random_vec(c.w.iter().product(), seed + 1)
        .iter()
        .map(|v| v * 0.25)
        .collect();
    let bv = random_vec(c.w[0], seed + 2);
    let x = Tensor::from_slice(gpu, &c.x, &xv).unwrap();
    let w = Tensor::from_slice(gpu, &c.w, &wv).unwrap();
    let b = Tensor::from_slice(gpu, &[c.w[0]], &bv).unwrap();
    let what = format!(
        "x {:?} w {:?} stride {} pad {}, tile {tile:?}",
        c.x, c.w, c.stride, c.pad
    );
    let t = Some(tile);

    let y = ops::conv2d_tiled(&x, &w, Some(&b), c.stride, c.pad, t).unwrap();
    let (ry, ys) = reference::conv2d(
        &rounded(&xv),
        c.x,
        &rounded(&wv),
        c.w,
        Some(&bv),
        c.stride,
        c.pad,
    );
    assert_eq!(y.shape(), ys);
    let yv = y.to_vec().unwrap();
    close_f16(&yv, &ry, &format!("{what}: forward"));
    let (exact, _) = reference::conv2d(&xv, c.x, &wv, c.w, Some(&bv), c.stride, c.pad);
    assert_f16_ran(&yv, &exact, &format!("{what}: forward"));

    // Inference's fused conv + eval batch norm + residual + ReLU runs on the same engine.
    let k = c.w[0];
    let bnv: Vec<Vec<f32>> = (0..4u64)
        .map(|i| random_vec(k, seed + 10 + i))
        .map(|v| v.iter().map(|x| x * 0.5 + 1.0).collect())
        .collect();
    let bn_t = channel_tensors(gpu, &bnv);
    let rv = random_vec(ys.iter().product(), seed + 4);
    let r = Tensor::from_slice(gpu, &ys, &rv).unwrap();
    let bn = eval_bn(&bn_t, 1e-5);
    let yf = ops::conv2d_bn_eval_tiled(&x, &w, c.stride, c.pad, &bn, Some(&r), true, t).unwrap();
    let (ryf, _) = reference::conv2d_bn_eval(
        &rounded(&xv),
        c.x,
        &rounded(&wv),
        c.w,
        c.stride,
        c.pad,
        [&bnv[0], &bnv[1], &bnv[2], &bnv[3]],
        1e-5,
        Some(&rv),
        true,
    );
    close_f16(
        &yf.to_vec().unwrap(),
        &ryf,
        &format!("{what}: fused forward with eval batch norm"),
    );

    let gyv: Vec<f32> = random_vec(ys.iter().product(), seed + 3)
        .iter()
        .map(|v| v * c.gy_scale)
        .collect();
    let gy = Tensor::from_slice(gpu, &ys, &gyv).unwrap();
    let gy16 = reference::round_f16_scaled(&gyv);
    let gx = ops::conv2d_backward_input_tiled(&gy, &w, c.x, c.stride, c.pad, t).unwrap();
    let rgx = reference::conv2d_backward_input(&gy16, &rounded(&wv), c.w, c.x, c.stride, c.pad);
    close_f16(
        &gx.to_vec().unwrap(),
        &rgx,
        &format!("{what}: input gradient"),
    );
    let gw = ops::conv2d_backward_weight_tiled(&x, &gy, c.w, c.stride, c.pad, t).unwrap();
    let rgw = reference::conv2d_backward_weight(&rounded(&xv), c.x, &gy16, c.w, c.stride, c.pad);
    close_f16(
        &gw.to_vec().unwrap(),
        &rgw,
        &format!("{what}: weight gradient"),
    );
}

#[test]
fn f16_engine_matches_the_reference_on_f16_operands() {
    let Some(gpu) = f16_gpu() else { return };
    // Every f16 tile runs here: the largest needs more workgroup memory than some adapters give.
    let limit = gpu.limits().max_compute_workgroup_storage_size as u64;
    let fragment = gpu.mma_config().unwrap().fragment as usize;
    assert!(
        limit >= MmaTile::T128x128.workgroup_bytes(fragment, 1),
        "{} allows {limit} bytes of workgroup memory",
        gpu.info()
    );
    let case = |x, w, stride, pad, gy_scale| Case {
        x,
        w,
        stride,
        pad,
        gy_scale,
    };
    // Ragged edges against the 64 x 64 tile, several 32-deep chunks, a strided conv with four
    // input-gradient phases, 1x1 and 7x7 kernels, split-K weight gradients, a split-K forward
    // (few output tiles), gradients of 1e-6, which f16 alone would flush to subnormals,
    // split-K input gradients (one phase; four phases with 4, 2, 2 and 1 taps) and a 3x3
    // kernel on 1x1 maps, which runs on its centre tap.
    let cases = [
        case([2, 19, 13, 11], [131, 19, 3, 3], 1, 1, 1.0),
        case([1, 21, 17, 15], [70, 21, 3, 3], 2, 1, 1.0),
        case([2, 35, 9, 9], [129, 35, 1, 1], 2, 0, 1.0),
        case([1, 3, 23, 21], [66, 3, 7, 7], 2, 3, 1.0),
        case([1, 64, 5, 5], [20, 64, 3, 3], 1, 1, 1.0),
        case([2, 16, 12, 12], [32, 16, 3, 3], 1, 1, 1e-6),
        case([2, 64, 4, 4], [64, 64, 3, 3], 1, 1, 1.0),
        case([2, 16, 5, 5], [136, 16, 3, 3], 2, 1, 1.0),
        case([3, 8, 1, 1], [6, 8, 3, 3], 1, 1, 1.0),
        // Channels that run every pass taps outer (ConvOrder::Rsc), plain and strided.
        case([2, 128, 6, 5], [96, 128, 3, 3], 1, 1, 1.0),
        case([1, 128, 9, 9], [64, 128, 3, 3], 2, 1, 1.0),
    ];
    // Taps outer wherever the channels allow, however few the GEMM's columns: the cases with
    // channels in multiples of the chunk (64, 128) run it, the others channel-major.
    gpu.set_conv_weight_copy_min_columns(0);
    for c in &cases[9..] {
        for tile in F16_TILES {
            let taps = ops::conv2d_taps_outer(&gpu, c.x, c.w, c.stride, c.pad, Some(tile)).unwrap();
            assert_eq!(taps, [true; 3], "{:?} {tile:?}: taps outer", c.x);
            // One input-gradient GEMM: the strided one's four phases in one dispatch.
            let gemms =
                ops::conv2d_input_grad_gemms(&gpu, c.x, c.w, c.stride, c.pad, Some(tile)).unwrap();
            assert_eq!(gemms, 1, "{:?} {tile:?}", c.x);
        }
    }
    for c in &cases[6..8] {
        let splits = ops::conv2d_input_grad_splits(&gpu, c.x, c.w, c.stride, c.pad).unwrap();
        assert!(splits > 1, "{:?}: expected a split input gradient", c.x);
    }
    assert_eq!(
        ops::conv2d_taps(cases[8].x, cases[8].w, 1, 1).unwrap(),
        (1, 1)
    );
    for (i, c) in cases.iter().enumerate() {
        check(&gpu, c, 900 + 10 * i as u64);
    }
}

/// A device opened by an application (not by this crate), with the f16 engine's features
/// where `with_engine_features` and the adapter has them, handed in with its adapter.
fn application_gpu(with_engine_features: bool) -> Gpu {
    let engine = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
        | wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP;
    let (adapter, device, queue) = application_device(|adapter, d| {
        d.required_limits = adapter.limits();
        if with_engine_features && adapter.features().contains(engine) {
            d.required_features = engine;
            // SAFETY: only this crate's f16 engine uses the feature, as with
            // GpuOptions::tensor_cores.
            d.experimental_features = unsafe { wgpu::ExperimentalFeatures::enabled() };
        }
    });
    Gpu::from_adapter_device(&adapter, device, queue)
}

#[test]
fn an_application_s_device_runs_the_f16_engine_when_opened_for_it() {
    // Opened without the engine's features: F16 says what the device lacks, on any adapter.
    let plain = application_gpu(false);
    let e = plain
        .set_conv_precision(ConvPrecision::F16)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not opened for it") && e.contains("EXPERIMENTAL_COOPERATIVE_MATRIX"),
        "{e}"
    );
    // Opened with them where the adapter has them: the same engine as a device this crate
    // opens with GpuOptions::tensor_cores, or the same error where there is none.
    let ours = f16_gpu();
    let app = application_gpu(true);
    assert_eq!(app.mma_config(), ours.as_ref().and_then(Gpu::mma_config));
    if ours.is_none() {
        assert!(app.set_conv_precision(ConvPrecision::F16).is_err());
        return;
    }
    app.set_conv_precision(ConvPrecision::F16).unwrap();
    let c = Case {
        x: [2, 19, 13, 11],
        w: [131, 19, 3, 3],
        stride: 1,
        pad: 1,
        gy_scale: 1.0,
    };
    check(&app, &c, 4200);
}

#[test]
fn f16_stagings_give_the_same_bits() {
    let Some(gpu) = f16_gpu() else { return };
    assert_eq!(gpu.f16_staging(), ConvStaging::Single, "the default");
    // Two copies of the staged operands (`Gpu::set_f16_staging`) change where a chunk waits in
    // workgroup memory, not which products are summed in which order: the same bits as one
    // copy (the default) on every f16 tile and pass. Cases: ragged edges with several chunks;
    // a strided conv with four input-gradient phases; a split-K weight gradient; channels that
    // run taps outer.
    let cases = [
        ([2, 19, 13, 11], [131, 19, 3, 3], 1, 1),
        ([1, 21, 17, 15], [70, 21, 3, 3], 2, 1),
        ([2, 64, 4, 4], [64, 64, 3, 3], 1, 1),
        ([2, 128, 6, 5], [96, 128, 3, 3], 1, 1),
    ];
    let run = |c: &([usize; 4], [usize; 4], usize, usize), seed: u64, tile: ConvTile| {
        let (xs, ws, stride, pad) = *c;
        let x = Tensor::from_slice(&gpu, &xs, &random_vec(xs.iter().product(), seed)).unwrap();
        let w = Tensor::from_slice(&gpu, &ws, &random_vec(ws.iter().product(), seed + 1)).unwrap();
        let t = Some(tile);
        let y = ops::conv2d_tiled(&x, &w, None, stride, pad, t).unwrap();
        let gy = Tensor::from_slice(&gpu, y.shape(), &random_vec(y.numel(), seed + 2)).unwrap();
        let gx = ops::conv2d_backward_input_tiled(&gy, &w, xs, stride, pad, t).unwrap();
        let gw = ops::conv2d_backward_weight_tiled(&x, &gy, ws, stride, pad, t).unwrap();
        [y, gx, gw].map(|t| t.to_vec().unwrap())
    };
    for tile in F16_TILES {
        let mma = MmaTile::for_f32_tile(tile);
        gpu.set_f16_staging(ConvStaging::Single);
        assert_eq!(ops::mma_stages(&gpu, mma), 1, "{mma:?}");
        let single: Vec<_> = (0..)
            .zip(&cases)
            .map(|(i, c)| run(c, 2000 + 10 * i, tile))
            .collect();
        // lavapipe's workgroup memory (32 KiB) holds every f16 tile twice.
        gpu.set_f16_staging(ConvStaging::Double);
        assert_eq!(ops::mma_stages(&gpu, mma), 2, "{mma:?}");
        for (i, c) in cases.iter().enumerate() {
            let double = run(c, 2000 + 10 * i as u64, tile);
            let what = format!("{c:?} {mma:?}, two copies against one");
            assert_same_pass_bits(&double, &single[i], &what);
        }
    }
}

#[test]
fn f16_input_gradient_adds_to_the_gradient_so_far() {
    let Some(gpu) = f16_gpu() else { return };
    // The f16 engine's GEMMs end in conv.wgsl's epilogues: with a sum, they add to it as they
    // write gx, with the bits of axpy after, on every f16 tile, split or not; and so does
    // Winograd's output transform after the f16 engine's GEMMs.
    let cases = [
        ([2, 19, 13, 11], [131, 19, 3, 3], 1, 1),
        ([1, 21, 17, 15], [70, 21, 3, 3], 2, 1),
        ([2, 64, 4, 4], [64, 64, 3, 3], 1, 1),
    ];
    let splits = |c: &([usize; 4], [usize; 4], usize, usize)| {
        ops::conv2d_input_grad_splits(&gpu, c.0, c.1, c.2, c.3).unwrap()
    };
    assert!(splits(&cases[2]) > 1, "a split input gradient");
    gpu.set_conv_algo(ConvAlgo::Direct);
    for tile in F16_TILES {
        for (i, &(x, w, stride, pad)) in cases.iter().enumerate() {
            let what = format!("{x:?} {w:?} stride {stride} {tile:?}");
            let seed = 2100 + 10 * i as u64;
            let extra = input_grad_add_dispatches(&gpu, x, w, stride, pad, Some(tile), seed, &what);
            assert_eq!(extra, 0, "{what}: no dispatch of the sum's own");
        }
    }
    gpu.set_conv_algo(ConvAlgo::Winograd);
    let (x, w) = ([2, 32, 8, 8], [48, 32, 3, 3]);
    let extra = input_grad_add_dispatches(&gpu, x, w, 1, 1, None, 2200, "f16 Winograd");
    assert_eq!(extra, 0, "f16 Winograd: no dispatch of the sum's own");
}

#[test]
fn f16_winograd_tracks_the_exact_convolution() {
    let Some(gpu) = f16_gpu() else { return };
    gpu.set_conv_algo(ConvAlgo::Winograd);
    // Winograd's GEMMs on the f16 engine: the transformed operands rounded to f16 (gy's scaled
    // by a quarter of the direct passes' scale), so against the exact f32 convolution, at
    // about f16's precision. Ragged planes and tiles, channels on and off the chunk, and
    // gradients of 1e-6, which f16 alone would flush to subnormals.
    let cases: [([usize; 4], usize, f32); 3] = [
        ([2, 64, 6, 5], 32, 1.0),
        ([1, 19, 7, 9], 24, 1.0),
        ([2, 16, 12, 12], 32, 1e-6),
    ];
    for (i, (xs, k, gy_scale)) in cases.into_iter().enumerate() {
        let ws = [k, xs[1], 3, 3];
        let what = format!("x {xs:?} w {ws:?} gy x {gy_scale}");
        assert_eq!(
            ops::conv2d_winograd(&gpu, xs, ws, 1, 1).unwrap(),
            [true; 3],
            "{what}"
        );
        let seed = 700 + 10 * i as u64;
        let xv = random_vec(xs.iter().product(), seed);
        let wv: Vec<f32> = random_vec(ws.iter().product(), seed + 1)
            .iter()
            .map(|v| v * 0.25)
            .collect();
        let x = Tensor::from_slice(&gpu, &xs, &xv).unwrap();
        let w = Tensor::from_slice(&gpu, &ws, &wv).unwrap();
        let (ry, ys) = reference::conv2d(&xv, xs, &wv, ws, None, 1, 1);
        let y = ops::conv2d(&x, &w, None, 1, 1).unwrap().to_vec().unwrap();
        let close = |a: &[f32], e: &[f32], pass: &str| {
            assert_close(a, e, 1e-2, 1e-2 * rms(e), &format!("{what}: {pass}"))
        };
        close(&y, &ry, "forward");
        assert_f16_ran(&y, &ry, &format!("{what}: forward"));
        let gyv: Vec<f32> = random_vec(ys.iter().product(), seed + 3)
            .iter()
            .map(|v| v * gy_scale)
            .collect();
        let gy = Tensor::from_slice(&gpu, &ys, &gyv).unwrap();
        let gx = ops::conv2d_backward_input(&gy, &w, xs, 1, 1).unwrap();
        let rgx = reference::conv2d_backward_input(&gyv, &wv, ws, xs, 1, 1);
        close(&gx.to_vec().unwrap(), &rgx, "input gradient");
        let gw = ops::conv2d_backward_weight(&x, &gy, ws, 1, 1).unwrap();
        let rgw = reference::conv2d_backward_weight(&xv, xs, &gyv, ws, 1, 1);
        close(&gw.to_vec().unwrap(), &rgw, "weight gradient");
    }
}

#[test]
fn f16_autotune_times_both_engines_and_runs_its_choice() {
    let Some(gpu) = f16_gpu() else { return };
    gpu.set_conv_autotune(true).unwrap();
    let passes = [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad];
    // A stride-1 3x3 conv (Winograd a candidate too) and a strided one.
    let cases = [([2, 16, 10, 10], 1), ([2, 16, 9, 9], 2)];
    for (i, &(x, stride)) in cases.iter().enumerate() {
        let w = [24, 16, 3, 3];
        let what = format!("x {x:?} stride {stride}");
        let seed = 600 + 10 * i as u64;
        let xt = Tensor::from_slice(&gpu, &x, &random_vec(x.iter().product(), seed)).unwrap();
        let wt = Tensor::from_slice(&gpu, &w, &random_vec(w.iter().product(), seed + 1)).unwrap();
        let ys = [x[0], w[0], (x[2] - 1) / stride + 1, (x[3] - 1) / stride + 1];
        let gyv = random_vec(ys.iter().product(), seed + 2);
        let gy = Tensor::from_slice(&gpu, &ys, &gyv).unwrap();
        let run = |pass, tile| conv_pass(pass, [&xt, &wt, &gy], stride, tile);
        let routed: Vec<Vec<f32>> = passes.iter().map(|&p| run(p, None)).collect();
        let tuned = gpu.tuned_convs();
        for (p, &pass) in passes.iter().enumerate() {
            let t = tuned
                .iter()
                .find(|t| t.key.pass == pass && t.key.x == x)
                .unwrap_or_else(|| panic!("{what} {pass:?} not tuned: {tuned:#?}"));
            let what = format!("{what} {pass:?}: {t:?}");
            assert_eq!(t.key.precision, ConvPrecision::F16, "{what}");
            // Both engines' tiles timed; the model's choice is the f16 engine's.
            let ms = t.f16_millis.expect("f16 tiles timed under F16");
            assert!(ms.iter().chain(&t.millis).all(|&ms| ms > 0.0), "{what}");
            let tiles = ConvTile::ALL.len() + MmaTile::ALL.len();
            assert_eq!(t.direct_millis().len(), tiles, "{what}");
            assert!(matches!(t.model, GemmTile::F16(_)), "{what}");
            // Winograd on both engines where the shape takes it (both tiles on the f32 one).
            let both = [stride == 1; 2];
            assert_eq!(t.winograd_millis.map(|ms| ms.is_some()), both, "{what}");
            assert_eq!(t.f16_winograd_millis.is_some(), stride == 1, "{what}");
            // The same bits as the chosen engine and tile forced: an f16 tile through the f32
            // tile that selects it, an f32 one (and Winograd on the f32 engine, with its tile)
            // at F32 precision, Winograd untuned.
            let at = |precision, tile| {
                gpu.set_conv_precision(precision).unwrap();
                let v = run(pass, tile);
                gpu.set_conv_precision(ConvPrecision::F16).unwrap();
                v
            };
            let forced = match (t.winograd, t.tile) {
                (true, _) => {
                    gpu.set_conv_algo(ConvAlgo::Winograd);
                    gpu.set_winograd_tile(Some(t.winograd_tile));
                    let engine = if t.winograd_f16 {
                        ConvPrecision::F16
                    } else {
                        ConvPrecision::F32
                    };
                    let v = at(engine, None);
                    gpu.set_conv_algo(ConvAlgo::Auto);
                    gpu.set_winograd_tile(None);
                    v
                }
                (false, GemmTile::F16(tile)) => run(pass, Some(selecting(tile))),
                (false, GemmTile::F32(tile)) => at(ConvPrecision::F32, Some(tile)),
            };
            assert_eq!(routed[p], forced, "{what}");
        }
    }
    assert_eq!(
        gpu.tuned_convs().len(),
        3 * cases.len(),
        "nothing tuned twice"
    );
    // A shape tuned under F16 is tuned again under F32, where the f16 engine is no candidate.
    gpu.set_conv_precision(ConvPrecision::F32).unwrap();
    let (x, stride) = cases[1];
    let xt = Tensor::from_slice(&gpu, &x, &random_vec(x.iter().product(), 1)).unwrap();
    let wt = Tensor::from_slice(&gpu, &[24, 16, 3, 3], &random_vec(24 * 16 * 9, 2)).unwrap();
    ops::conv2d(&xt, &wt, None, stride, 1).unwrap();
    let tuned = gpu.tuned_convs();
    assert_eq!(tuned.len(), 3 * cases.len() + 1);
    let t = tuned.last().unwrap();
    assert_eq!(t.key.precision, ConvPrecision::F32, "{t:?}");
    assert!(
        t.f16_millis.is_none() && matches!(t.tile, GemmTile::F32(_)),
        "{t:?}"
    );
}

/// The f32 tile that selects the f16 engine's `tile` ([`MmaTile::for_f32_tile`]).
fn selecting(tile: MmaTile) -> ConvTile {
    F16_TILES
        .into_iter()
        .find(|&t| MmaTile::for_f32_tile(t) == tile)
        .unwrap()
}

#[test]
fn f16_scale_is_the_power_of_two_the_engine_uses() {
    let gpu = gpu();
    for (values, expected) in [
        (vec![0.0f32, 0.0], 1.0f32),
        (vec![1.0, -0.5], 8192.0),
        (vec![3e-7, -1e-6], 2f32.powi(13 + 20)),
        (vec![-40000.0, 2.0], 0.25),
    ] {
        let mut long = values.clone();
        long.resize(100_000, 0.0); // several partial maxima
        // Past the first pass's 4,096 x 256 threads: the threads loop, the values at the end.
        let mut longer = vec![0.0; 1_100_000 - values.len()];
        longer.extend(&values);
        for v in [values, long, longer] {
            let t = Tensor::from_slice(&gpu, &[v.len()], &v).unwrap();
            let s = ops::f16_scale(&t).unwrap().to_vec().unwrap();
            assert_eq!(s, [expected], "{:?} of {}", &v[v.len() - 2..], v.len());
            assert_eq!(
                reference::f16_scale(&v),
                expected,
                "reference {:?} of {}",
                &v[v.len() - 2..],
                v.len()
            );
        }
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// A small ResNet-18 training step (forward and backward, batch norm in training mode) with F16
/// convolutions against the same step in F32. Errors of the operands' rounding (2^-11) grow
/// through the backward pass, most where batch norm's backward subtracts nearly equal terms:
/// the loss and the classifier's gradient agree closely, the earliest layers' only in direction.
#[test]
fn f16_resnet_step_tracks_the_f32_one() {
    let Some(gpu) = f16_gpu() else { return };
    use resnet_wgpu::Rng;
    use resnet_wgpu::nn::{ResNet, ResNetConfig, Stem};
    let config = ResNetConfig::resnet18(10)
        .with_widths(vec![8, 16, 16, 32])
        .with_stem(Stem::Cifar);
    let n = 8;
    let x = Tensor::from_slice(&gpu, &[n, 3, 16, 16], &random_vec(n * 3 * 16 * 16, 77)).unwrap();
    let y = Tensor::from_u32(&gpu, &[n], &[3, 7, 0, 9, 1, 1, 4, 2]).unwrap();
    let mut results = Vec::new();
    for precision in [ConvPrecision::F32, ConvPrecision::F16] {
        gpu.set_conv_precision(precision).unwrap();
        let mut net = ResNet::new(&gpu, config.clone(), &mut Rng::new(5)).unwrap();
        let tape = Tape::new();
        let (logits, binds) = net.forward_train(&tape, &x, |_| true).unwrap();
        let loss = logits.cross_entropy(&y, 0.0).unwrap();
        let grads = tape.backward(&loss).unwrap();
        let named = named_gradients(&net, &binds, &grads);
        // Inference after the forward pass moved the running statistics: the fused kernels.
        let eval = net.infer(&x).unwrap().to_vec().unwrap();
        results.push((loss.tensor().to_vec().unwrap()[0], named, eval));
    }
    let (l32, g32, e32) = &results[0];
    let (l16, g16, e16) = &results[1];
    assert_close(e16, e32, 1e-2, 1e-2 * rms(e32), "eval logits, f16 vs f32");
    assert!(
        (l32 - l16).abs() < 2e-3 * l32.abs(),
        "loss f32 {l32}, f16 {l16}"
    );
    let (mut all32, mut all16) = (Vec::new(), Vec::new());
    for ((name, a), (_, b)) in g32.iter().zip(g16) {
        let c = cosine(a, b);
        eprintln!("{name}: cosine {c:.4}");
        if name.starts_with("fc.") {
            assert_close(
                b,
                a,
                1e-2,
                1e-2 * rms(a),
                &format!("{name} gradient, f16 vs f32"),
            );
        }
        assert!(c > 0.97, "{name}: gradient cosine f16 vs f32 {c}");
        all32.extend_from_slice(a);
        all16.extend_from_slice(b);
    }
    let c = cosine(&all32, &all16);
    assert!(c > 0.99, "whole gradient: cosine f16 vs f32 {c}");
}
