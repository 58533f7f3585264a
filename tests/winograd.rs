//! Winograd F(2x2, 3x3) convolutions (the three passes of 3x3 stride-1 padding-1
//! convolutions): PyTorch goldens, the CPU twin of the transforms, the direct reference, chunks
//! of images, and which shapes take it.

mod common;
use common::*;
use resnet_wgpu::ops::{ConvPass, ConvTile, GemmTile, TunedConv};
use resnet_wgpu::{ConvAlgo, Gpu, PlanFor, Tape, Tensor, WinogradTile, ops, reference};

/// The conv goldens' tolerance (tests/conv.rs).
const RTOL: f32 = 1e-4;
const ATOL: f32 = 1e-5;

/// A device of its own running Winograd on every 3x3 stride-1 padding-1 convolution.
fn winograd_gpu() -> Gpu {
    let gpu = new_gpu();
    gpu.set_conv_algo(ConvAlgo::Winograd);
    gpu
}

#[test]
fn goldens_through_winograd() {
    each_tile(goldens_with);
}

/// The conv goldens through `gpu`'s Winograd tile, at the goldens' tolerance.
fn goldens_with(gpu: &Gpu) {
    let g = Golden::open("ops.safetensors");
    // c0: 3 -> 4 channels on 8x8 with a bias; c4: 16 -> 16 on 5x5 (odd: ragged tiles), bias.
    for name in ["c0", "c4"] {
        let cfg = g.i64(&format!("{name}.cfg"));
        let u = |i: usize| cfg[i] as usize;
        let (xs, ws) = ([u(0), u(1), u(2), u(3)], [u(4), u(1), u(5), u(5)]);
        assert_eq!(
            ops::conv2d_winograd(gpu, xs, ws, u(6), u(7)).unwrap(),
            [true; 3],
            "{name} runs Winograd"
        );
        let t = |s: &str| g.tensor(gpu, &format!("{name}.{s}"));
        let f = |s: &str| g.f32(&format!("{name}.{s}"));
        let tape = Tape::new();
        let x = tape.leaf(t("x"));
        let w = tape.leaf(t("w"));
        let b = (u(8) != 0).then(|| tape.leaf(t("b")));
        let y = x.conv2d(&w, b.as_ref(), u(6), u(7)).unwrap();
        let what = |s: &str| format!("{:?} {name} {s}", gpu.winograd_tile());
        assert_close(
            &y.tensor().to_vec().unwrap(),
            &f("y"),
            RTOL,
            ATOL,
            &what("y"),
        );
        let grads = tape.backward_with(&y, t("gy")).unwrap();
        let gx = grads.get(&x).unwrap().to_vec().unwrap();
        assert_close(&gx, &f("gx"), RTOL, ATOL, &what("gx"));
        let gw = grads.get(&w).unwrap().to_vec().unwrap();
        assert_close(&gw, &f("gw"), RTOL, ATOL, &what("gw"));
    }
}

/// Checks `actual` against `expected` (the CPU twin or the direct reference): F(2x2, 3x3)
/// element by element within `rtol` and `atol`; F(4x4, 3x3) within `rtol` and `f4_scale`
/// times the RMS of `expected`. F(4x4, 3x3)'s transforms mix each tile's values with
/// coefficients up to 8 (and 1/15), so its rounding errors scale with the whole output: on
/// outputs near zero they are large next to the element itself.
fn assert_tile_close(
    tile: WinogradTile,
    actual: &[f32],
    expected: &[f32],
    [rtol, atol]: [f32; 2],
    f4_scale: f32,
    what: &str,
) {
    let what = format!("{tile} {what}");
    match tile {
        WinogradTile::F2 => assert_close(actual, expected, rtol, atol, &what),
        WinogradTile::F4 => assert_close_to_scale(actual, expected, rtol, f4_scale, &what),
    }
}

/// The three passes of one case against the CPU twin (the same transforms and sums; the two
/// differ by f32 rounding, on lavapipe by up to about as much as each differs from the exact
/// sums) and the direct f64 reference, with `gpu`'s Winograd tile.
fn check(gpu: &Gpu, x: [usize; 4], k: usize, bias: bool, seed: u64) {
    let tile = gpu.winograd_tile().expect("a tile set");
    let w = [k, x[1], 3, 3];
    let what = format!("x {x:?} w {w:?} bias {bias}");
    assert_eq!(
        ops::conv2d_winograd(gpu, x, w, 1, 1).unwrap(),
        [true; 3],
        "{what}: runs Winograd"
    );
    let xv = random_vec(x.iter().product(), seed);
    let wv = random_vec(w.iter().product(), seed + 1);
    let bv = random_vec(k, seed + 2);
    let xt = Tensor::from_slice(gpu, &x, &xv).unwrap();
    let wt = Tensor::from_slice(gpu, &w, &wv).unwrap();
    let bt = Tensor::from_slice(gpu, &[k], &bv).unwrap();
    let b = bias.then_some(bv.as_slice());
    let close = |actual: &[f32], expected: &[f32], tol, f4_scale, against: &str| {
        let what = format!("{what}: {against}");
        assert_tile_close(tile, actual, expected, tol, f4_scale, &what);
    };
    let y = ops::conv2d(&xt, &wt, bias.then_some(&bt), 1, 1).unwrap();
    let y = y.to_vec().unwrap();
    let twin = reference::conv2d_winograd(tile, &xv, x, &wv, w, b);
    close(&y, &twin, [1e-5, 1e-5], TWIN_SCALE, "forward, CPU twin");
    let (direct, ys) = reference::conv2d(&xv, x, &wv, w, b, 1, 1);
    close(&y, &direct, [RTOL, 1e-4], DIRECT_SCALE, "forward, direct");
    let gyv = random_vec(direct.len(), seed + 3);
    let gy = Tensor::from_slice(gpu, &ys, &gyv).unwrap();
    let gx = ops::conv2d_backward_input(&gy, &wt, x, 1, 1).unwrap();
    let gx = gx.to_vec().unwrap();
    let twin = reference::conv2d_backward_input_winograd(tile, &gyv, &wv, w, x);
    close(&gx, &twin, [1e-5, 1e-5], TWIN_SCALE, "gx, CPU twin");
    let direct = reference::conv2d_backward_input(&gyv, &wv, w, x, 1, 1);
    close(&gx, &direct, [RTOL, 1e-4], DIRECT_SCALE, "gx, direct");
    // Sums over every tile of the batch, in splits: the twin's single sum in another order.
    let gw = ops::conv2d_backward_weight(&xt, &gy, w, 1, 1).unwrap();
    let gw = gw.to_vec().unwrap();
    let twin = reference::conv2d_backward_weight_winograd(tile, &xv, x, &gyv, w);
    close(&gw, &twin, [1e-5, 1e-4], TWIN_SCALE, "gw, CPU twin");
    let direct = reference::conv2d_backward_weight(&xv, x, &gyv, w, 1, 1);
    close(&gw, &direct, [RTOL, 1e-3], DIRECT_SCALE, "gw, direct");
}

/// F(4x4, 3x3)'s tolerances, times the output's RMS: against the CPU twin and against the
/// direct reference.
/// lavapipe's worst over the random shapes: 5.9e-6 and 1.1e-5 (F(2x2, 3x3): 1.3e-6 and
/// 2.7e-6).
const TWIN_SCALE: f32 = 1.5e-5;
const DIRECT_SCALE: f32 = 3e-5;

/// A Winograd device ([`winograd_gpu`]) with each tile in turn.
fn each_tile(mut test: impl FnMut(&Gpu)) {
    for tile in [WinogradTile::F2, WinogradTile::F4] {
        let gpu = winograd_gpu();
        gpu.set_winograd_tile(Some(tile));
        test(&gpu);
    }
}

#[test]
fn random_shapes_match_the_twin_and_the_direct_reference() {
    // Even and odd planes (ragged last tiles: F(4x4)'s with 1, 2 and 3 rows or columns), 1xN
    // and 2x2 planes, channels off the GEMM tiles' multiples (the channel-major GEMM), and a
    // few hundred tiles.
    let cases: [([usize; 4], usize, bool); 8] = [
        ([2, 16, 8, 8], 32, true),
        ([1, 19, 7, 5], 23, false),
        ([3, 8, 2, 2], 5, true),
        ([2, 32, 1, 9], 16, false),
        ([1, 5, 13, 11], 131, true),
        ([2, 64, 14, 14], 64, false),
        ([1, 48, 30, 26], 24, true),
        ([1, 128, 10, 6], 96, false),
    ];
    each_tile(|gpu| {
        for (i, &(x, k, bias)) in cases.iter().enumerate() {
            check(gpu, x, k, bias, 40 + 10 * i as u64);
        }
    });
}

#[test]
fn chunks_of_images_give_the_same_bits() {
    // Chunks of one, two and three images (a ragged last chunk of 5 images) against the whole
    // batch at once: only offsets differ, not the sums.
    // 32 x 19 planes (F(2x2): 16 x 10 tiles, F(4x4): 8 x 5, the last column of tiles partly
    // outside), so that the weight gradient's partial results (α² x 12 x 8 per chunk) fit the
    // cap of one image's V (α² x 12 x tiles) even with a partial result per image.
    let x = [5, 8, 32, 19];
    let w = [12, 8, 3, 3];
    let ys = [5, 12, 32, 19];
    let xv = random_vec(x.iter().product(), 7);
    let wv = random_vec(w.iter().product(), 8);
    let gyv = random_vec(ys.iter().product(), 9);
    for tile in [WinogradTile::F2, WinogradTile::F4] {
        let run = |chunk: Option<usize>| {
            let gpu = winograd_gpu();
            gpu.set_winograd_tile(Some(tile));
            if let Some(images) = chunk {
                // V and M hold α² values per tile and channel (12 channels at most).
                let tiles = 32usize.div_ceil(tile.m()) * 19usize.div_ceil(tile.m());
                gpu.set_winograd_chunk_elements(images * tile.positions() * 12 * tiles);
            }
            let xt = Tensor::from_slice(&gpu, &x, &xv).unwrap();
            let wt = Tensor::from_slice(&gpu, &w, &wv).unwrap();
            let gy = Tensor::from_slice(&gpu, &ys, &gyv).unwrap();
            assert_eq!(
                ops::conv2d_winograd(&gpu, x, w, 1, 1).unwrap(),
                [true; 3],
                "{tile} {chunk:?}"
            );
            let before = gpu.dispatch_count();
            let y = ops::conv2d(&xt, &wt, None, 1, 1).unwrap().to_vec().unwrap();
            let dispatches = gpu.dispatch_count() - before;
            let gx = ops::conv2d_backward_input(&gy, &wt, x, 1, 1).unwrap();
            let before = gpu.dispatch_count();
            let gw = ops::conv2d_backward_weight(&xt, &gy, w, 1, 1).unwrap();
            let gw_dispatches = gpu.dispatch_count() - before;
            let gw = gw.to_vec().unwrap();
            (y, gx.to_vec().unwrap(), gw, [dispatches, gw_dispatches])
        };
        let (y, gx, gw, dispatches) = run(None);
        // The weights' transform, then the input transform, the GEMMs and the output
        // transform; for gw both transforms, the GEMMs, the sum of their partial results and
        // gw's transform. On lavapipe the GEMMs of one chunk without barriers
        // (shaders/gemm_lanes.wgsl: all tile counts here are multiples of 4) write dU whole,
        // with nothing to sum.
        let lanes = gemms_without_barriers_expected(&winograd_gpu());
        assert_eq!(
            dispatches,
            [4, 5 - usize::from(lanes) as u64],
            "{tile}, one chunk"
        );
        for images in [1, 2, 3] {
            let chunks = 5usize.div_ceil(images) as u64;
            let (yc, gxc, gwc, d) = run(Some(images));
            let what = format!("{tile}, chunks of {images}");
            assert_eq!(d, [1 + 3 * chunks, 2 + 3 * chunks], "{what}");
            assert_eq!(yc, y, "forward, {what}");
            assert_eq!(gxc, gx, "input gradient, {what}");
            // The weight gradient sums the chunks' partial results: the same products, added
            // in another order.
            let what = format!("weight gradient, {what}");
            assert_tile_close(tile, &gwc, &gw, [1e-5, 1e-4], TWIN_SCALE, &what);
        }
    }
}

#[test]
fn which_convolutions_take_it() {
    let gpu = new_gpu();
    let x = [8, 128, 14, 14];
    let w = [128, 128, 3, 3];
    let takes = |x, w, stride, pad| {
        let passes = ops::conv2d_winograd(&gpu, x, w, stride, pad).unwrap();
        assert!(
            passes[0] == passes[1] && passes[1] == passes[2],
            "{passes:?}"
        );
        passes[0]
    };
    assert_eq!(gpu.conv_algo(), ConvAlgo::Auto, "the default");
    assert!(takes(x, w, 1, 1), "128 channels, 3x3, stride 1, padding 1");
    assert!(!takes(x, w, 2, 1), "stride 2");
    assert!(!takes(x, w, 1, 0), "padding 0");
    assert!(!takes(x, [128, 128, 1, 1], 1, 0), "1x1");
    assert!(
        !takes([2, 128, 1, 1], w, 1, 1),
        "a 1x1 plane: the centre tap alone"
    );
    // Auto leaves direct: fewer than 64 or 128 channels in a GPU's plan (by the tile; 16 in a
    // CPU adapter's, such as lavapipe's); GEMMs that, padded to their tiles, would do more
    // than 3/4 of the direct GEMM's multiply-adds (padded likewise); and on GPUs batches of
    // fewer than 1,024 output pixels.
    let cpu = gpu.plan_for() == PlanFor::Cpu;
    assert!(!takes([2, 8, 14, 14], [8, 8, 3, 3], 1, 1));
    assert_eq!(takes([2, 32, 24, 24], [32, 32, 3, 3], 1, 1), cpu);
    assert!(takes([2, 64, 24, 24], [64, 64, 3, 3], 1, 1), "1,152 pixels");
    assert_eq!(
        takes([1, 64, 24, 24], [64, 64, 3, 3], 1, 1),
        cpu,
        "576 pixels"
    );
    let w512 = [512, 512, 3, 3];
    assert!(takes([32, 512, 7, 7], w512, 1, 1), "1,568 pixels");
    // 392 pixels: 128 tiles of 2x2, GEMMs of 0.44 times the direct GEMM's multiply-adds.
    assert_eq!(takes([8, 512, 7, 7], w512, 1, 1), cpu, "392 pixels");
    // 98 pixels: 32 tiles of 2x2 padded to a GEMM tile of 64 columns, 0.89 times.
    assert!(!takes([2, 512, 7, 7], w512, 1, 1), "98 pixels");
    // Narrow layers pad the direct GEMM's rows as much as Winograd's: 16 channels at 14x14
    // and batch 32 (the training test's layer2) take it on CPU adapters, but for the weight
    // gradient where the GEMMs without barriers do not run (no subgroups): the narrow kernels
    // take it there (src/ops/conv/narrow.rs).
    let narrow = ops::conv2d_winograd(&gpu, [32, 16, 14, 14], [16, 16, 3, 3], 1, 1).unwrap();
    let lanes = gpu.conv_gemm_lanes().is_some();
    assert_eq!(narrow, [cpu, cpu, cpu && lanes], "16 channels");
    gpu.set_conv_algo(ConvAlgo::Winograd);
    assert!(takes([2, 8, 14, 14], [8, 8, 3, 3], 1, 1), "forced");
    // The weight gradient stays direct where even one partial result per chunk of images
    // would exceed the transforms' cap of 2^24 values (512 channels at 56x56, batch 128: 64
    // chunks of 4M).
    let wide = ops::conv2d_winograd(&gpu, [128, 512, 56, 56], [512, 512, 3, 3], 1, 1).unwrap();
    assert_eq!(wide, [true, true, false]);
    // No pass where one image's transformed tensors alone exceed the cap (16 x 512 x 112 x 112
    // values for 512 channels at 224x224).
    let huge = ops::conv2d_winograd(&gpu, [1, 512, 224, 224], [512, 512, 3, 3], 1, 1).unwrap();
    assert_eq!(huge, [false; 3]);
    gpu.set_conv_algo(ConvAlgo::Direct);
    assert!(!takes(x, w, 1, 1), "direct");
    assert_eq!("winograd".parse::<ConvAlgo>().unwrap(), ConvAlgo::Winograd);
    assert_eq!(" Direct".parse::<ConvAlgo>().unwrap(), ConvAlgo::Direct);
    let err = "fft".parse::<ConvAlgo>().unwrap_err().to_string();
    assert!(err.contains("fft") && err.contains("winograd"), "{err}");
}

#[test]
fn the_tile_follows_the_gemms() {
    // Unless set, each pass runs the tile whose GEMMs do fewer multiply-adds, counting the
    // padding of their last column tile: F(4x4, 3x3) but where its output tiles leave most of
    // a column tile empty (the forward pass and input gradient of 7x7 planes at batch 8: 32
    // tiles, against F(2x2, 3x3)'s 128); the weight gradient reduces over the tiles.
    let gpu = winograd_gpu();
    assert_eq!(gpu.winograd_tile(), None, "the default: per convolution");
    let (f2, f4) = (Some(WinogradTile::F2), Some(WinogradTile::F4));
    let tiles = |x: [usize; 4]| {
        let w = [x[1], x[1], 3, 3];
        ops::conv2d_winograd_tiles(&gpu, x, w, 1, 1).unwrap()
    };
    assert_eq!(tiles([8, 64, 56, 56]), [f4; 3], "layer1 at batch 8");
    assert_eq!(tiles([8, 256, 14, 14]), [f4; 3], "layer3 at batch 8");
    assert_eq!(tiles([8, 512, 7, 7]), [f2, f2, f4], "layer4 at batch 8");
    assert_eq!(tiles([128, 512, 7, 7]), [f4; 3], "layer4 at batch 128");
    assert_eq!(
        tiles([1, 16, 2, 2]),
        [f2; 3],
        "one tile either way: 16 GEMMs, not 36"
    );
    for tile in [WinogradTile::F2, WinogradTile::F4] {
        gpu.set_winograd_tile(Some(tile));
        assert_eq!(tiles([8, 512, 7, 7]), [Some(tile); 3], "{tile} set");
        assert_eq!(tiles([8, 64, 56, 56]), [Some(tile); 3], "{tile} set");
    }
    assert_eq!(
        WinogradTile::parse_choice(" Auto").unwrap(),
        None,
        "auto: per convolution"
    );
    assert_eq!(WinogradTile::parse_choice("4x4").unwrap(), f4);
    assert_eq!(WinogradTile::parse_choice("2").unwrap(), f2);
    let err = WinogradTile::parse_choice("6").unwrap_err().to_string();
    assert!(err.contains("\"6\"") && err.contains("auto"), "{err}");
    assert_eq!(WinogradTile::F4.to_string(), "F(4x4, 3x3)");
    assert_eq!(WinogradTile::F2.positions(), 16);
    assert_eq!(WinogradTile::F4.positions(), 36);
}

/// The f32 tile of a pass tuned under `ConvPrecision::F32`.
fn f32_tile(t: &TunedConv) -> ConvTile {
    match t.tile {
        GemmTile::F32(tile) => tile,
        GemmTile::F16(_) => panic!("an f16 tile tuned under ConvPrecision::F32: {t:?}"),
    }
}

#[test]
fn autotune_times_winograd_and_runs_its_choice() {
    // A device of its own: the test turns tuning on.
    let gpu = new_gpu();
    assert_eq!(gpu.conv_algo(), ConvAlgo::Auto, "the default");
    gpu.set_conv_autotune(true).unwrap();
    let passes = [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad];
    // (x, stride): Auto's rule runs the first direct (fewer than 1,024 output pixels) and the
    // second Winograd on CPU adapters (from 16 channels); the stride-2 conv cannot run it.
    let cases = [
        ([2, 16, 10, 10], 1),
        ([4, 16, 16, 16], 1),
        ([2, 16, 10, 10], 2),
    ];
    for (i, &(x, stride)) in cases.iter().enumerate() {
        let w = [16, 16, 3, 3];
        let what = format!("x {x:?} stride {stride}");
        // Not tuned yet: the rule's route.
        let rule = ops::conv2d_winograd(&gpu, x, w, stride, 1).unwrap();
        let seed = 900 + 10 * i as u64;
        let xt = Tensor::from_slice(&gpu, &x, &random_vec(x.iter().product(), seed)).unwrap();
        let wt = Tensor::from_slice(&gpu, &w, &random_vec(w.iter().product(), seed + 1)).unwrap();
        // Each pass: through the tuned route, then the route it reports forced.
        let run = |pass, tile| {
            let y = ops::conv2d_tiled(&xt, &wt, None, stride, 1, None).unwrap();
            let gy = Tensor::from_slice(&gpu, y.shape(), &random_vec(y.numel(), seed + 2)).unwrap();
            conv_pass(pass, [&xt, &wt, &gy], stride, tile)
        };
        // The direct route tuning chose, forced: the GEMMs without barriers untuned (where
        // tuning kept them, on CPU adapters), else the tuned tile.
        let direct = |t: &TunedConv| {
            if !t.lanes {
                return run(t.key.pass, Some(f32_tile(t)));
            }
            let algo = gpu.conv_algo();
            gpu.set_conv_autotune(false).unwrap();
            gpu.set_conv_algo(ConvAlgo::Direct);
            let v = run(t.key.pass, None);
            gpu.set_conv_algo(algo);
            gpu.set_conv_autotune(true).unwrap();
            v
        };
        let routed: Vec<Vec<f32>> = passes.iter().map(|&p| run(p, None)).collect();
        let tuned = gpu.tuned_convs();
        let now = ops::conv2d_winograd(&gpu, x, w, stride, 1).unwrap();
        for (p, &pass) in passes.iter().enumerate() {
            let t = tuned
                .iter()
                .find(|t| t.key.pass == pass && t.key.x == x && t.key.stride == stride)
                .unwrap_or_else(|| panic!("{what} {pass:?} not tuned: {tuned:#?}"));
            let what = format!("{what} {pass:?}: {t:?}");
            // Both tiles timed where the shape takes Winograd.
            let both = [stride == 1; 2];
            assert_eq!(t.winograd_millis.map(|ms| ms.is_some()), both, "{what}");
            assert!(
                t.winograd_millis.iter().flatten().all(|&ms| ms > 0.0),
                "{what}"
            );
            assert_eq!(t.model_winograd, rule[p], "{what}");
            assert!(stride == 1 || !t.winograd, "{what}");
            assert_eq!(
                now[p], t.winograd,
                "{what}: conv2d_winograd reports the tuned route"
            );
            // The same bits as the chosen route forced: Winograd untuned with the tuned
            // Winograd tile, or the tuned direct route.
            let forced = if t.winograd {
                gpu.set_conv_algo(ConvAlgo::Winograd);
                gpu.set_winograd_tile(Some(t.winograd_tile));
                let v = run(pass, None);
                gpu.set_conv_algo(ConvAlgo::Auto);
                gpu.set_winograd_tile(None);
                v
            } else {
                direct(t)
            };
            assert_eq!(routed[p], forced, "{what}");
        }
        // Under ConvAlgo::Direct the tuned direct routes run, never Winograd.
        gpu.set_conv_algo(ConvAlgo::Direct);
        assert_eq!(
            ops::conv2d_winograd(&gpu, x, w, stride, 1).unwrap(),
            [false; 3]
        );
        let t = tuned
            .iter()
            .find(|t| t.key.x == x && t.key.stride == stride)
            .unwrap();
        assert_eq!(run(t.key.pass, None), direct(t), "{what}");
        gpu.set_conv_algo(ConvAlgo::Auto);
    }
    assert_eq!(
        gpu.tuned_convs().len(),
        3 * cases.len(),
        "nothing tuned twice"
    );
}

#[test]
fn inference_block_matches_the_separate_kernels() {
    each_tile(inference_block_with);
}

/// An eval-mode batch norm's gamma, beta, running mean and running variance for `k` channels
/// (`eval_bn`'s order), drawn from seeds `seed` to `seed + 3`: gamma and the variance in [0.5, 1.5), beta and the
/// mean in [-0.5, 0.5).
fn bn_channels(gpu: &Gpu, k: usize, seed: u64) -> [Tensor; 4] {
    [(0, 0.5), (1, -0.5), (2, -0.5), (3, 0.5)].map(|(i, lo): (u64, f32)| {
        let v: Vec<f32> = random_vec(k, seed + i)
            .iter()
            .map(|v| lo + v.abs())
            .collect();
        Tensor::from_slice(gpu, &[k], &v).unwrap()
    })
}

/// conv + eval batch norm (+ residual) (+ ReLU) through `gpu`'s Winograd tile: the output
/// transform applies the batch norm as the separate kernel would after Winograd's convolution.
fn inference_block_with(gpu: &Gpu) {
    let x = [2, 24, 9, 10];
    let k = 40;
    let w = [k, 24, 3, 3];
    let xt = Tensor::from_slice(gpu, &x, &random_vec(x.iter().product(), 61)).unwrap();
    let wt = Tensor::from_slice(gpu, &w, &random_vec(w.iter().product(), 62)).unwrap();
    let ys = [2, k, 9, 10];
    let res = Tensor::from_slice(gpu, &ys, &random_vec(ys.iter().product(), 63)).unwrap();
    let channels = bn_channels(gpu, k, 64);
    let bn = eval_bn(&channels, 1e-5);
    for (residual, relu) in [(false, false), (false, true), (true, false), (true, true)] {
        let what = format!("{:?} residual {residual} relu {relu}", gpu.winograd_tile());
        let r = residual.then_some(&res);
        let before = gpu.dispatch_count();
        let fused = ops::conv2d_bn_eval(&xt, &wt, 1, 1, &bn, r, relu).unwrap();
        // The weights' transform, the input transform, the GEMMs, the output transform.
        assert_eq!(gpu.dispatch_count() - before, 4, "{what}: dispatches");
        let apart = ops::conv2d_bn_eval_unfused(&xt, &wt, 1, 1, &bn, r, relu).unwrap();
        let (fused, apart) = (fused.to_vec().unwrap(), apart.to_vec().unwrap());
        assert_close(&fused, &apart, 1e-6, 1e-6, &what);
    }
}

#[test]
fn the_gemms_without_barriers_match_the_tiled_gemms() {
    // On a CPU adapter's plan with subgroups (lavapipe, SwiftShader), Winograd's f32 GEMMs
    // run shaders/gemm_lanes.wgsl, which reads its operands straight from memory, and
    // F(4x4, 3x3)'s transforms move vec4s by quads of lanes (shaders/winograd_quads.wgsl, the
    // _rows kernels on planes whose width is a multiple of 4); with subgroups off, the tiled
    // conv_forward and conv_backward_weight and winograd.wgsl's transforms (also where
    // subgroups have 4 lanes, which move values by quads slower). The forward pass
    // and input gradient sum each output in ascending order with one fused multiply-add per
    // term either way: the same bits. The weight gradient sums a chunk's tiles in one run
    // instead of the tiled kernel's splits: close. Cases: rows off the lanes' 32 (40 output
    // channels, 24 input channels for gx), columns over several workgroups of 4 per lane and
    // ending in a partial one (F(2x2): 400 tiles, F(4x4): 100), tile counts that are not a
    // multiple of 4 (F(4x4)'s 3 x 5 in case 1: the tiled GEMMs and the plain transforms
    // either way), 14 x 14 planes (F(4x4)'s quads without rows) and 10 x 12 planes (rows,
    // the last tiles' partly outside the plane; quads across rows of tiles and images).
    // Inference's fused pass (conv2d_bn_eval) too, whose output transform applies the batch
    // norm, with a residual in cases 0 and 2 and the ReLU in all but case 3: the same bits.
    // Where the device has 64-bit integers (lavapipe), the GEMMs without barriers read A and B
    // 32 bytes at a time where the depth is a multiple of 8 (the forward passes' 24, 16 and 8
    // input channels, the input gradients' 40 and 8 output channels, some chunks' tiles; not
    // 12 or 100; B's rows of the forward passes and input gradients only where the tiles are a
    // multiple of 8 too), and give the same bits with 16-byte reads.
    let cases: [([usize; 4], usize); 4] = [
        ([4, 24, 20, 20], 40),
        ([1, 16, 12, 20], 8),
        ([4, 8, 14, 14], 12),
        ([4, 8, 10, 12], 8),
    ];
    each_tile(|gpu| {
        // Subgroups back on (this loop's last case turned them off), where there are any.
        let _ = gpu.set_subgroup_reductions(true);
        let lanes = gemms_without_barriers_expected(gpu);
        assert_eq!(
            ops::conv_gemms_without_barriers(gpu),
            lanes,
            "{}",
            gpu.info()
        );
        let tile = gpu.winograd_tile().unwrap();
        for (i, &(x, k)) in cases.iter().enumerate() {
            let w = [k, x[1], 3, 3];
            let xv = random_vec(x.iter().product(), 900 + i as u64);
            let wv = random_vec(w.iter().product(), 901 + i as u64);
            let xt = Tensor::from_slice(gpu, &x, &xv).unwrap();
            let wt = Tensor::from_slice(gpu, &w, &wv).unwrap();
            let ys = [x[0], k, x[2], x[3]];
            let gyv = random_vec(ys.iter().product(), 902 + i as u64);
            let gy = Tensor::from_slice(gpu, &ys, &gyv).unwrap();
            let channels = bn_channels(gpu, k, 903 + 10 * i as u64);
            let bn = eval_bn(&channels, 1e-5);
            // The residual: gy's values.
            let (residual, relu) = ((i % 2 == 0).then_some(&gy), i != 3);
            // The quads' kernels these planes take (the _rows ones where the width is a
            // multiple of 4).
            let kind = if x[3] % 4 == 0 { "rows" } else { "quads" };
            let quads = ["input", "gy", "output", "output_bn"].map(|t| format!("wino4_{t}_{kind}"));
            // The three passes and inference's, how many GEMMs ran on gemm_lanes and
            // gemm_lanes_nt, and how many input, gy, output and batch-norm output transforms by
            // quads.
            let run = || {
                gpu.start_profiling().unwrap();
                let y = ops::conv2d(&xt, &wt, None, 1, 1).unwrap();
                let gx = ops::conv2d_backward_input(&gy, &wt, x, 1, 1).unwrap();
                let gw = ops::conv2d_backward_weight(&xt, &gy, w, 1, 1).unwrap();
                let eval = ops::conv2d_bn_eval(&xt, &wt, 1, 1, &bn, residual, relu).unwrap();
                let kernels = gpu.finish_profiling().unwrap();
                let count = |entry: &str| kernels.iter().filter(|t| t.entry == entry).count();
                let passes = [y, gx, gw, eval].map(|t| t.to_vec().unwrap());
                let gemms = [count("gemm_lanes"), count("gemm_lanes_nt")];
                (passes, gemms, quads.each_ref().map(|e| count(e)))
            };
            let what = format!("x {x:?} w {w:?} {tile}");
            let same = |a: &[f32], b: &[f32]| {
                a.len() == b.len() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits())
            };
            let wide = wide_reads_expected(gpu);
            assert_eq!(gpu.conv_wide_reads(), wide, "{}", gpu.info());
            let ([y, gx, gw, eval], on_lanes, by_quads) = run();
            if wide {
                gpu.set_conv_wide_reads(false).unwrap();
                let (narrow, ..) = run();
                gpu.set_conv_wide_reads(true).unwrap();
                let all_same = [&y, &gx, &gw, &eval]
                    .iter()
                    .zip(&narrow)
                    .all(|(a, b)| same(a, b));
                assert!(all_same, "{what}: 32-byte reads change the bits");
            }
            let tiles = x[0] * x[2].div_ceil(tile.m()) * x[3].div_ceil(tile.m());
            let lanes_take_it = lanes && tiles % 4 == 0;
            let expected = match lanes_take_it {
                true => [3, 1],
                false => [0, 0],
            };
            assert_eq!(on_lanes, expected, "{what}: GEMMs on gemm_lanes(_nt)");
            // x's transform in the forward passes and the weight gradient, gy's as the input
            // gradient's input and for the weight gradient; the output transforms of y and gx;
            // inference's.
            let by_quads_here = ops::winograd_transforms_by_quads(gpu);
            let expected = match lanes_take_it && by_quads_here && tile == WinogradTile::F4 {
                true => [4, 1, 2, 1],
                false => [0, 0, 0, 0],
            };
            assert_eq!(by_quads, expected, "{what}: {quads:?}");
            // On subgroups of 8 or more lanes (lavapipe's, not SwiftShader's 4).
            let eight = gpu.conv_gemm_lanes().is_some_and(|n| n >= 8);
            assert_eq!(by_quads_here, lanes && eight, "{}", gpu.info());
            gpu.set_subgroup_reductions(false).unwrap();
            let ([y_tiled, gx_tiled, gw_tiled, eval_tiled], none, plain) = run();
            assert_eq!((none, plain), ([0, 0], [0; 4]), "{what}: subgroups off");
            assert!(same(&y, &y_tiled), "{what}: the forward pass differs");
            assert!(same(&gx, &gx_tiled), "{what}: the input gradient differs");
            assert!(same(&eval, &eval_tiled), "{what}: inference's pass differs");
            let what = format!("{what}: weight gradient");
            assert_tile_close(tile, &gw, &gw_tiled, [1e-5, 1e-4], TWIN_SCALE, &what);
            if lanes {
                gpu.set_subgroup_reductions(true).unwrap();
            }
        }
    });
}
