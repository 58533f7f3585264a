//! Convolution: PyTorch goldens, random shapes against the CPU reference, errors and a gradient
//! check through the tape.

mod common;
use common::*;
use resnet_wgpu::ops::{ConvPass, ConvTile, GemmTile, MmaTile, TileModel};
use resnet_wgpu::{
    ConvAlgo, ConvOrder, ConvStaging, Gpu, PlanFor, Tape, Tensor, Var, WinogradTile, ops, reference,
};

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

const RTOL: f32 = 1e-4;
const ATOL: f32 = 1e-5;

#[derive(Debug)]
struct Case {
    x: [usize; 4],
    w: [usize; 4],
    stride: usize,
    pad: usize,
    bias: bool,
}

fn golden_case(g: &Golden, name: &str) -> Case {
    let cfg = g.i64(&format!("{name}.cfg"));
    let u = |i: usize| cfg[i] as usize;
    Case {
        x: [u(0), u(1), u(2), u(3)],
        w: [u(4), u(1), u(5), u(5)],
        stride: u(6),
        pad: u(7),
        bias: u(8) != 0,
    }
}

/// The goldens' tolerance: about what PyTorch's own f32 kernels would pass.
fn close(actual: &[f32], expected: &[f32], what: &str) {
    assert_close(actual, expected, RTOL, ATOL, what);
}

#[test]
fn golden_tensor_level() {
    // Every golden conv has at most 16 output channels: on a CPU adapter Auto runs the narrow
    // kernels on most passes, so the GEMMs are checked again under ConvAlgo::Direct.
    let direct = new_gpu();
    direct.set_conv_algo(ConvAlgo::Direct);
    for gpu in [gpu(), direct] {
        golden_convs(&gpu);
    }
}

fn golden_convs(gpu: &Gpu) {
    let g = Golden::open("ops.safetensors");
    for name in ["c0", "c1", "c2", "c3", "c4", "c5"] {
        let c = golden_case(&g, name);
        let t = |s: &str| g.tensor(gpu, &format!("{name}.{s}"));
        let f = |s: &str| g.f32(&format!("{name}.{s}"));
        let (x, w, gy) = (t("x"), t("w"), t("gy"));
        assert_eq!(x.shape(), c.x, "{name} x shape");
        assert_eq!(w.shape(), c.w, "{name} w shape");
        let b = c.bias.then(|| t("b"));
        let y = ops::conv2d(&x, &w, b.as_ref(), c.stride, c.pad).unwrap();
        assert_eq!(
            y.shape(),
            g.shape(&format!("{name}.y")).as_slice(),
            "{name} y shape"
        );
        close(&y.to_vec().unwrap(), &f("y"), &format!("{name} forward"));
        let gx = ops::conv2d_backward_input(&gy, &w, c.x, c.stride, c.pad).unwrap();
        close(
            &gx.to_vec().unwrap(),
            &f("gx"),
            &format!("{name} input gradient"),
        );
        let gw = ops::conv2d_backward_weight(&x, &gy, c.w, c.stride, c.pad).unwrap();
        close(
            &gw.to_vec().unwrap(),
            &f("gw"),
            &format!("{name} weight gradient"),
        );
        if c.bias {
            let gb = ops::sum_channels(&gy).unwrap();
            close(
                &gb.to_vec().unwrap(),
                &f("gb"),
                &format!("{name} bias gradient"),
            );
        }
    }
}

#[test]
fn golden_through_the_tape() {
    let gpu = gpu();
    let g = Golden::open("ops.safetensors");
    for name in ["c0", "c1", "c2", "c3", "c4", "c5"] {
        let c = golden_case(&g, name);
        let t = |s: &str| g.tensor(&gpu, &format!("{name}.{s}"));
        let f = |s: &str| g.f32(&format!("{name}.{s}"));
        let tape = Tape::new();
        let x = tape.leaf(t("x"));
        let w = tape.leaf(t("w"));
        let b = c.bias.then(|| tape.leaf(t("b")));
        let y = x.conv2d(&w, b.as_ref(), c.stride, c.pad).unwrap();
        close(
            &y.tensor().to_vec().unwrap(),
            &f("y"),
            &format!("{name} tape forward"),
        );
        let grads = tape.backward_with(&y, t("gy")).unwrap();
        close(
            &grads.get(&x).unwrap().to_vec().unwrap(),
            &f("gx"),
            &format!("{name} tape gx"),
        );
        close(
            &grads.get(&w).unwrap().to_vec().unwrap(),
            &f("gw"),
            &format!("{name} tape gw"),
        );
        if let Some(b) = &b {
            close(
                &grads.get(b).unwrap().to_vec().unwrap(),
                &f("gb"),
                &format!("{name} tape gb"),
            );
        }
    }
}

/// Compare all three passes with the CPU reference on one random case.
fn check_random(gpu: &Gpu, c: &Case, seed: u64) {
    check_random_tiled(gpu, c, seed, None)
}

/// The CPU reference's three passes on one random case: the inputs and what each pass gives.
struct Expected {
    xv: Vec<f32>,
    wv: Vec<f32>,
    bv: Vec<f32>,
    gyv: Vec<f32>,
    y: Vec<f32>,
    y_shape: [usize; 4],
    gx: Vec<f32>,
    gw: Vec<f32>,
}

/// [`Expected`] by case (its `Debug` text) and seed.
type Memo = HashMap<(String, u64), Arc<Expected>>;

/// The reference's passes on `c`'s inputs drawn from `seed`, computed once per case and seed:
/// the tests that loop over tiles, orders and stagings check the same cases against each, and
/// the reference's direct loops took about 40% of such a test's time.
fn expected(c: &Case, seed: u64) -> Arc<Expected> {
    static MEMO: LazyLock<Mutex<Memo>> = LazyLock::new(Mutex::default);
    let key = (format!("{c:?}"), seed);
    if let Some(e) = MEMO.lock().unwrap().get(&key) {
        return e.clone();
    }
    let xv = random_vec(c.x.iter().product(), seed);
    let wv = random_vec(c.w.iter().product(), seed + 1);
    let bv = random_vec(c.w[0], seed + 2);
    let b = c.bias.then_some(bv.as_slice());
    let (y, y_shape) = reference::conv2d(&xv, c.x, &wv, c.w, b, c.stride, c.pad);
    let gyv = random_vec(y.len(), seed + 3);
    let gx = reference::conv2d_backward_input(&gyv, &wv, c.w, c.x, c.stride, c.pad);
    let gw = reference::conv2d_backward_weight(&xv, c.x, &gyv, c.w, c.stride, c.pad);
    let e = Arc::new(Expected {
        xv,
        wv,
        bv,
        gyv,
        y,
        y_shape,
        gx,
        gw,
    });
    MEMO.lock().unwrap().insert(key, e.clone());
    e
}

/// [`check_random`] with a forced tile (None: the tile the ops choose).
fn check_random_tiled(gpu: &Gpu, c: &Case, seed: u64, tile: Option<ConvTile>) {
    let what = format!(
        "x {:?} w {:?} stride {} pad {} bias {} tile {tile:?}",
        c.x, c.w, c.stride, c.pad, c.bias
    );
    let e = expected(c, seed);
    let x = Tensor::from_slice(gpu, &c.x, &e.xv).unwrap();
    let w = Tensor::from_slice(gpu, &c.w, &e.wv).unwrap();
    let b = Tensor::from_slice(gpu, &[c.w[0]], &e.bv).unwrap();
    let ys = e.y_shape;
    let y = ops::conv2d_tiled(&x, &w, c.bias.then_some(&b), c.stride, c.pad, tile).unwrap();
    assert_eq!(y.shape(), ys, "{what}: output shape");
    let (oh, ow) = ops::conv2d_output_size(c.x[2], c.x[3], c.w[2], c.stride, c.pad);
    if c.w[2] == c.w[3] {
        assert_eq!([oh, ow], [ys[2], ys[3]], "{what}: conv2d_output_size");
    }
    // Sums of up to a few thousand products of values in [-1, 1]: allow f32 rounding.
    let atol = 1e-4;
    assert_close(
        &y.to_vec().unwrap(),
        &e.y,
        RTOL,
        atol,
        &format!("{what}: forward"),
    );
    let gy = Tensor::from_slice(gpu, &ys, &e.gyv).unwrap();
    let gx = ops::conv2d_backward_input_tiled(&gy, &w, c.x, c.stride, c.pad, tile).unwrap();
    assert_close(
        &gx.to_vec().unwrap(),
        &e.gx,
        RTOL,
        atol,
        &format!("{what}: input gradient"),
    );
    let gw = ops::conv2d_backward_weight_tiled(&x, &gy, c.w, c.stride, c.pad, tile).unwrap();
    assert_close(
        &gw.to_vec().unwrap(),
        &e.gw,
        RTOL,
        1e-3,
        &format!("{what}: weight gradient"),
    );
}

fn case(
    x: [usize; 4],
    k: usize,
    r: usize,
    s: usize,
    stride: usize,
    pad: usize,
    bias: bool,
) -> Case {
    Case {
        x,
        w: [k, x[1], r, s],
        stride,
        pad,
        bias,
    }
}

#[test]
fn random_shapes_match_reference() {
    let gpu = gpu();
    let cases = [
        case([1, 3, 9, 7], 5, 3, 3, 1, 1, true),
        case([1, 13, 11, 11], 67, 3, 3, 2, 1, false),
        case([2, 5, 13, 9], 13, 1, 1, 1, 0, true),
        case([2, 67, 7, 5], 3, 1, 1, 2, 0, false),
        case([1, 3, 19, 17], 5, 7, 7, 2, 3, true),
        case([2, 5, 8, 10], 7, 7, 7, 1, 3, false),
        case([1, 4, 6, 6], 3, 3, 5, 1, 0, true), // non-square kernel
        case([1, 3, 4, 4], 2, 3, 3, 3, 2, false), // stride larger than kernel overlap
        case([1, 2, 5, 5], 3, 5, 5, 1, 0, false), // kernel as large as the input: 1x1 output
        case([1, 3, 3, 3], 2, 3, 3, 1, 3, true), // padding equal to the kernel size
    ];
    for (i, c) in cases.iter().enumerate() {
        check_random(&gpu, c, 100 + 10 * i as u64);
    }
}

#[test]
fn multi_tile_and_split_k() {
    let gpu = gpu();
    // M = 70 and N = 2 * 17 * 17 = 578 exceed one 64 x 64 tile, the reduction 67 * 9 = 603 spans
    // many 16-deep chunks, and the weight gradient (reduction 578) runs over several splits.
    let c = case([2, 67, 17, 17], 70, 3, 3, 1, 1, true);
    let splits = ops::conv2d_weight_grad_splits(&gpu, c.x, c.w, c.stride, c.pad).unwrap();
    assert!(splits >= 2, "expected several split-K chunks, got {splits}");
    check_random(&gpu, &c, 7);
    // A longer weight-gradient reduction with few output tiles: many splits, ragged last chunk.
    let c = case([3, 3, 31, 29], 5, 3, 3, 1, 0, false);
    let splits = ops::conv2d_weight_grad_splits(&gpu, c.x, c.w, c.stride, c.pad).unwrap();
    assert!(splits >= 5, "expected several split-K chunks, got {splits}");
    check_random(&gpu, &c, 9);
}

#[test]
fn narrow_layers_run_their_own_kernels() {
    let gpu = new_gpu();
    let cpu = gpu.plan_for() == PlanFor::Cpu;
    let lanes = gpu.conv_gemm_lanes().is_some();
    // (case, passes on the narrow kernels in a CPU adapter's plan, without and with the GEMMs
    // without barriers): at most 16 channels written (K in the forward pass and the weight
    // gradient, C in the input gradient, which also needs stride 1), or whatever K a shallow
    // convolution's forward pass and weight gradient (at most 32 taps C x R x S) where those
    // GEMMs do not take it (taps a multiple of 4 and K too); Winograd's passes stay Winograd's,
    // its weight gradient too where those GEMMs run it. Ragged channel groups (12: three vec4s,
    // 5, 3), more taps than one workgroup (16 x 5 x 5), a strided 7x7 stem, enough pixels to
    // split the weight gradient, and shallow ones of several channel groups (40 = 16 + 16 + 8):
    // a 3x3 stem on three channels (27 taps), 1x1s of 4 and 32 channels, and one tap past the
    // limit; a 16-channel conv that Winograd takes.
    let cases = [
        (case([2, 3, 9, 7], 12, 3, 3, 1, 1, true), [[true; 3]; 2]),
        (case([1, 16, 6, 6], 5, 5, 5, 1, 2, false), [[true; 3]; 2]),
        (
            case([2, 3, 23, 21], 16, 7, 7, 2, 3, true),
            [[true, false, true]; 2],
        ),
        (case([4, 8, 28, 28], 8, 3, 3, 1, 1, false), [[true; 3]; 2]),
        (
            case([1, 20, 5, 5], 4, 3, 3, 1, 1, false),
            [[true, false, true]; 2],
        ),
        (
            case([1, 4, 5, 5], 20, 1, 1, 1, 0, true),
            [[true; 3], [false, true, false]],
        ),
        (
            case([2, 3, 11, 9], 40, 3, 3, 1, 1, true),
            [[true, true, true]; 2],
        ),
        (
            case([2, 32, 9, 9], 40, 1, 1, 2, 0, false),
            [[true, false, true], [false; 3]],
        ),
        (case([1, 33, 5, 5], 20, 1, 1, 1, 0, false), [[false; 3]; 2]),
        (
            case([4, 16, 16, 16], 16, 3, 3, 1, 1, false),
            [[false, false, true], [false; 3]],
        ),
    ];
    for (i, (c, narrow)) in cases.iter().enumerate() {
        let routes = ops::conv2d_narrow(&gpu, c.x, c.w, c.stride, c.pad).unwrap();
        assert_eq!(routes, narrow[lanes as usize].map(|n| n && cpu), "{c:?}");
        check_random(&gpu, c, 400 + 10 * i as u64);
    }
    // The GEMMs alone under ConvAlgo::Direct, and while autotuning times them.
    let c = &cases[0].0;
    gpu.set_conv_algo(ConvAlgo::Direct);
    assert_eq!(
        ops::conv2d_narrow(&gpu, c.x, c.w, 1, 1).unwrap(),
        [false; 3]
    );
    gpu.set_conv_algo(ConvAlgo::Auto);
    gpu.set_conv_autotune(true).unwrap();
    assert_eq!(
        ops::conv2d_narrow(&gpu, c.x, c.w, 1, 1).unwrap(),
        [false; 3]
    );
}

#[test]
fn narrow_kernels_give_the_same_bits_through_lanes() {
    // On a CPU adapter with subgroups of 4 to 16 consecutive lanes (lavapipe's 8, or 16 with
    // LP_NATIVE_VECTOR_WIDTH=512 as .ci/run also runs it; SwiftShader's 4), the narrow kernels
    // read the operand that every thread shares (the weights; gy in the weight gradient) once
    // per block of lanes and broadcast it (conv_narrow.wgsl's OP_LANES); with the subgroups off
    // each thread reads it itself. The same multiply-adds in the same order: the same bits.
    // Cases, each on the narrow kernels in all three passes both ways: 27 taps (three full
    // blocks of 8 lanes and a ragged one of 3; of 4 lanes, six and a ragged 3), ragged channel
    // groups (12, 5),
    // 400 taps of a 5x5 in one workgroup's reduction, a 3x3 stem on one channel (9 taps) whose
    // weight gradient splits its pixels into chunks that end mid-block, 40 channels in three
    // groups, and a 1x1 of 4 taps, whose weight gradient's workgroup (8 threads) is half of a
    // subgroup of 16 lanes.
    let gpu = new_gpu();
    let lanes = gpu.set_subgroup_reductions(true).is_ok();
    if gpu.info().name.contains("llvmpipe") {
        assert!(
            lanes,
            "lavapipe's subgroups are runs of consecutive threads"
        );
    }
    let cases = [
        case([2, 3, 9, 7], 12, 3, 3, 1, 1, true),
        case([1, 16, 6, 6], 5, 5, 5, 1, 2, false),
        case([3, 1, 29, 27], 16, 3, 3, 1, 1, true),
        case([2, 3, 11, 9], 40, 3, 3, 1, 1, true),
        case([2, 4, 5, 5], 6, 1, 1, 1, 0, true),
    ];
    let cpu = gpu.plan_for() == PlanFor::Cpu;
    let run = |gpu: &Gpu| -> Vec<[Vec<f32>; 3]> {
        (0..)
            .zip(&cases)
            .map(|(i, c)| {
                let routes = ops::conv2d_narrow(gpu, c.x, c.w, c.stride, c.pad).unwrap();
                assert_eq!(routes, [cpu; 3], "{c:?}");
                run_passes(gpu, c, 1900 + 10 * i, None)
            })
            .collect()
    };
    let shared = run(&gpu);
    gpu.set_subgroup_reductions(false).unwrap();
    assert_eq!(gpu.conv_gemm_lanes(), None);
    for ((c, shared), own) in cases.iter().zip(&shared).zip(run(&gpu)) {
        let what = format!("{c:?}, lanes' shared reads against each thread's own");
        assert_same_pass_bits(shared, &own, &what);
    }
}

#[test]
fn every_tile_matches_reference() {
    let gpu = gpu();
    // Edges ragged against every tile (M = 131, N = 2 * 13 * 11 = 286), several reduction chunks,
    // a strided case with four input-gradient phases, a 1x1 and a 7x7 kernel, split-K in the
    // weight gradient and (last case, a reduction of 576 over one tile) in the forward pass.
    let cases = [
        case([2, 19, 13, 11], 131, 3, 3, 1, 1, true),
        case([1, 21, 17, 15], 70, 3, 3, 2, 1, false),
        case([2, 35, 9, 9], 129, 1, 1, 2, 0, false),
        case([1, 3, 23, 21], 66, 7, 7, 2, 3, true),
        case([1, 64, 5, 5], 20, 3, 3, 1, 1, true), // few output tiles: split-K forward
    ];
    let last = cases.last().unwrap();
    let splits = ops::conv2d_forward_splits(&gpu, last.x, last.w, last.stride, last.pad).unwrap();
    assert!(
        splits > 1,
        "expected a split forward reduction, got {splits}"
    );
    for tile in ConvTile::ALL {
        for (i, c) in cases.iter().enumerate() {
            check_random_tiled(&gpu, c, 300 + 10 * i as u64, Some(tile));
        }
    }
}

#[test]
fn both_reduction_orders_match_reference() {
    // A device of its own: the order is a device-wide setting. The direct GEMM everywhere, so
    // that the untiled runs (tile None) check the orders too where Auto would run Winograd.
    let gpu = new_gpu();
    gpu.set_conv_algo(ConvAlgo::Direct);
    // Channels in multiples of 16 (and of 128 where the weight gradient's 128-column tiles
    // should run taps outer too), so that the taps-outer order runs on every pass, and for
    // kernels larger than 1x1 GEMMs of at least 1,024 columns, which amortize the weights'
    // copy: ragged edges against the tiles; a strided 3x3 with four input-gradient phases of
    // 1,056 pixels; a 5x5; 1x1 kernels, which read the weights as they lie, with a split-K
    // forward and a split-K input gradient (few output tiles); a 3x3 on 1x1 maps, which runs
    // its centre tap only; and a 3x3 GEMM of 16 columns, too few for the copy, whose forward
    // and input gradient stay channel-major. With the expected [forward, input gradient].
    let cases = [
        (case([2, 128, 24, 22], 80, 3, 3, 1, 1, true), [true, true]),
        (case([1, 64, 66, 64], 48, 3, 3, 2, 1, false), [true, true]),
        (case([1, 16, 33, 32], 32, 5, 5, 1, 2, true), [true, true]),
        (case([1, 512, 4, 4], 64, 1, 1, 1, 0, false), [true, true]),
        (case([1, 64, 4, 4], 512, 1, 1, 1, 0, true), [true, true]),
        (case([2, 64, 1, 1], 64, 3, 3, 1, 1, false), [true, true]),
        (case([1, 64, 4, 4], 64, 3, 3, 1, 1, false), [false, false]),
    ];
    let splits = |c: &Case| {
        [
            ops::conv2d_forward_splits(&gpu, c.x, c.w, c.stride, c.pad).unwrap(),
            ops::conv2d_input_grad_splits(&gpu, c.x, c.w, c.stride, c.pad).unwrap(),
        ]
    };
    assert!(splits(&cases[3].0)[0] > 1, "a split forward");
    assert!(splits(&cases[4].0)[1] > 1, "a split input gradient");
    for order in [ConvOrder::Rsc, ConvOrder::Crs] {
        gpu.set_conv_order(order);
        let tiles = ConvTile::ALL.iter().copied().map(Some);
        for tile in std::iter::once(None).chain(tiles) {
            for (i, (c, expected)) in cases.iter().enumerate() {
                let what = format!("{c:?} tile {tile:?} {order:?}");
                let taps = ops::conv2d_taps_outer(&gpu, c.x, c.w, c.stride, c.pad, tile).unwrap();
                if order == ConvOrder::Crs {
                    assert_eq!(taps, [false; 3], "{what}");
                } else {
                    // The channels divide every tile's chunk; the weight gradient needs C a
                    // multiple of the tile's columns.
                    assert_eq!(taps[..2], expected[..], "{what}: forward, input gradient");
                    if let Some(t) = tile {
                        let weight = c.x[1] % t.dims().1 == 0;
                        assert_eq!(taps[2], weight, "{what}: weight gradient");
                    }
                }
                check_random_tiled(&gpu, c, 1200 + 10 * i as u64, tile);
            }
        }
    }
    // Split-K 3x3 GEMMs, whose later splits start past the first tap, have too few columns
    // for the weights' copy on any device: with the copy allowed for any GEMM.
    gpu.set_conv_order(ConvOrder::Rsc);
    gpu.set_conv_weight_copy_min_columns(0);
    let c = &cases[6].0;
    assert!(
        splits(c).iter().all(|&s| s > 1),
        "split forward and input gradient"
    );
    let tiles = ConvTile::ALL.iter().copied().map(Some);
    for tile in std::iter::once(None).chain(tiles) {
        let taps = ops::conv2d_taps_outer(&gpu, c.x, c.w, c.stride, c.pad, tile).unwrap();
        assert_eq!(taps[..2], [true, true], "{c:?} tile {tile:?}");
        check_random_tiled(&gpu, c, 1300, tile);
    }
}

/// The three passes of case `c` on `tile` (None: the kernels `Auto` routes them to), from
/// random x, w, bias and gy (seeds `seed` .. `seed + 3`): y, gx and gw.
fn run_passes(gpu: &Gpu, c: &Case, seed: u64, tile: Option<ConvTile>) -> [Vec<f32>; 3] {
    let x = Tensor::from_slice(gpu, &c.x, &random_vec(c.x.iter().product(), seed)).unwrap();
    let w = Tensor::from_slice(gpu, &c.w, &random_vec(c.w.iter().product(), seed + 1)).unwrap();
    let b = Tensor::from_slice(gpu, &[c.w[0]], &random_vec(c.w[0], seed + 2)).unwrap();
    let y = ops::conv2d_tiled(&x, &w, c.bias.then_some(&b), c.stride, c.pad, tile).unwrap();
    let gy = Tensor::from_slice(gpu, y.shape(), &random_vec(y.numel(), seed + 3)).unwrap();
    let gx = ops::conv2d_backward_input_tiled(&gy, &w, c.x, c.stride, c.pad, tile).unwrap();
    let gw = ops::conv2d_backward_weight_tiled(&x, &gy, c.w, c.stride, c.pad, tile).unwrap();
    [y, gx, gw].map(|t| t.to_vec().unwrap())
}

#[test]
fn every_staging_gives_the_same_bits() {
    // A device of its own: the staging is a device-wide setting. Double staging changes where
    // a chunk waits in workgroup memory, and shallow staging how deep each chunk is, not what
    // is multiplied in which order: all give the same bits on every pass and tile. Cases:
    // ragged edges, taps outer; a strided 3x3 with four input-gradient phases, channel-major;
    // 1x1 kernels with a split-K forward and a split-K input gradient; a 5x5 with padding 2;
    // and (with the weights' taps-outer copy at any size) a strided 3x3 whose four phases
    // run as one split-K dispatch, where the shader plans the splits itself: a phase of 80
    // reduction steps over two splits is cut at 48, in the usual chunks of 16, not at 40.
    let gpu = new_gpu();
    // The last case on a device that copies the weights taps outer whatever their size.
    let copying = new_gpu();
    copying.set_conv_weight_copy_min_columns(0);
    let cases = [
        (&gpu, case([2, 32, 13, 11], 48, 3, 3, 1, 1, true)),
        (&gpu, case([1, 24, 34, 32], 40, 3, 3, 2, 1, false)),
        (&gpu, case([1, 512, 4, 4], 64, 1, 1, 1, 0, false)),
        (&gpu, case([1, 64, 4, 4], 512, 1, 1, 1, 0, true)),
        (&gpu, case([1, 16, 21, 20], 32, 5, 5, 1, 2, true)),
        (&copying, case([1, 16, 4, 4], 80, 3, 3, 2, 1, false)),
    ];
    let merged = &cases[5].1;
    for tile in ConvTile::ALL {
        let gemms = ops::conv2d_input_grad_gemms(&copying, merged.x, merged.w, 2, 1, Some(tile));
        assert_eq!(gemms.unwrap(), 1, "{tile:?}: the phases merge");
    }
    let splits = ops::conv2d_input_grad_splits(&copying, merged.x, merged.w, 2, 1).unwrap();
    assert_eq!(splits, 2, "the merged input gradient splits");
    let set_staging = |staging| {
        gpu.set_conv_staging(staging);
        copying.set_conv_staging(staging);
    };
    for tile in ConvTile::ALL {
        set_staging(ConvStaging::Single);
        assert_eq!(ops::conv_stages(&gpu, tile), 1, "{tile:?}");
        let single: Vec<_> = (0..)
            .zip(&cases)
            .map(|(i, (gpu, c))| run_passes(gpu, c, 1600 + 10 * i, Some(tile)))
            .collect();
        // lavapipe's workgroup memory (32 KiB) holds every tile twice.
        for (staging, stages) in [(ConvStaging::Double, 2), (ConvStaging::Shallow, 1)] {
            set_staging(staging);
            assert_eq!(ops::conv_stages(&gpu, tile), stages, "{tile:?}");
            for (i, (gpu, c)) in cases.iter().enumerate() {
                let other = run_passes(gpu, c, 1600 + 10 * i as u64, Some(tile));
                let what = format!("{c:?} tile {tile:?}, {staging:?} against Single");
                assert_same_pass_bits(&other, &single[i], &what);
            }
        }
    }
    // WebGPU's default 16 KiB of workgroup memory holds no tile twice: one copy everywhere.
    let small = Gpu::with_options(resnet_wgpu::GpuOptions {
        default_limits: true,
        ..Default::default()
    })
    .expect("a device with default limits");
    small.set_conv_staging(ConvStaging::Double);
    for tile in ConvTile::ALL {
        assert!(tile.workgroup_bytes(1) <= 16 << 10, "{tile:?}");
        assert_eq!(ops::conv_stages(&small, tile), 1, "{tile:?}");
    }
    let c = &cases[0].1;
    check_random_tiled(&small, c, 1700, Some(ConvTile::T128x64));
}

#[test]
fn subgroups_sharing_a_give_the_same_bits() {
    // On a CPU adapter's plan with subgroups of 4 to 16 consecutive lanes (lavapipe's 8, or 16
    // with LP_NATIVE_VECTOR_WIDTH=512 as .ci/run also runs it, SwiftShader's 4 once asked for),
    // the f32 GEMMs run tiles whose subgroups read each quad of A once for one or more
    // reduction steps and broadcast it (conv_fma.wgsl's SHARED_A); with the reductions'
    // subgroups off they run the usual tiles. The same multiply-adds in the same order: the
    // same bits, on every tile and pass. Cases: ragged rows and columns (lanes of one subgroup
    // with and without outputs, which multiply together), a strided 3x3 with four
    // input-gradient phases, a 1x1 with split-K.
    let gpu = new_gpu();
    let lanes = gpu.set_subgroup_reductions(true).is_ok();
    let shares = lanes && gpu.plan_for() == resnet_wgpu::PlanFor::Cpu;
    if gpu.info().name.contains("llvmpipe") {
        assert!(
            lanes,
            "lavapipe's subgroups are runs of consecutive threads"
        );
    }
    assert_eq!(ops::conv_shares_a(&gpu), shares, "{}", gpu.info());
    let cases = [
        case([2, 32, 13, 11], 44, 3, 3, 1, 1, true),
        case([1, 24, 17, 16], 40, 3, 3, 2, 1, false),
        case([1, 256, 4, 4], 72, 1, 1, 1, 0, false),
    ];
    for tile in ConvTile::ALL {
        let shared: Vec<_> = (0..)
            .zip(&cases)
            .map(|(i, c)| run_passes(&gpu, c, 1800 + 10 * i, Some(tile)))
            .collect();
        gpu.set_subgroup_reductions(false).unwrap();
        assert!(!ops::conv_shares_a(&gpu));
        for (i, c) in cases.iter().enumerate() {
            let own = run_passes(&gpu, c, 1800 + 10 * i as u64, Some(tile));
            let what = format!("{c:?} tile {tile:?}, shared A against each thread's own");
            assert_same_pass_bits(&shared[i], &own, &what);
        }
        if lanes {
            gpu.set_subgroup_reductions(true).unwrap();
        }
    }
}

#[test]
fn a_cpu_adapter_in_a_browser_stages_shallow_chunks() {
    // A browser's WebGPU zero-fills workgroup memory, which Chromium's CPU adapter does per
    // element in every subgroup: one shallow copy there, two everywhere else (unless
    // RESNET_WGPU_CONV_STAGING says otherwise, which the tests do not set).
    let info = |backend, device_type| resnet_wgpu::GpuInfo {
        name: "adapter".into(),
        backend,
        driver: String::new(),
        device_type,
    };
    use ConvStaging::{Double, Shallow};
    use wgpu::{Backend, DeviceType};
    let expected = [
        (Backend::BrowserWebGpu, DeviceType::Cpu, Shallow),
        (Backend::BrowserWebGpu, DeviceType::DiscreteGpu, Double),
        (Backend::BrowserWebGpu, DeviceType::Other, Double),
        (Backend::Vulkan, DeviceType::Cpu, Double),
        (Backend::Metal, DeviceType::IntegratedGpu, Double),
    ];
    for (backend, device_type, staging) in expected {
        assert_eq!(
            ConvStaging::for_adapter(&info(backend, device_type)),
            staging,
            "{backend:?} {device_type:?}"
        );
    }
    // A native CPU adapter (lavapipe here) keeps two copies.
    assert_eq!(new_gpu().conv_staging(), Double);
}

#[test]
fn the_tape_reads_the_forward_weights_copy() {
    // A device of its own, for counting dispatches. Direct convolutions (Winograd reads the
    // weights through its own transforms).
    let gpu = new_gpu();
    gpu.set_conv_algo(ConvAlgo::Direct);
    // The tiled plan's kernels: on a CPU adapter with subgroups (lavapipe, SwiftShader)
    // the direct passes would run the GEMMs without barriers (shaders/gemm_lanes.wgsl), which
    // the subgroups switch turns off with the tiles' shared A.
    let _ = gpu.set_subgroup_reductions(false);
    // 1,056 output pixels: both the forward and the input gradient read the weights' taps-
    // outer copy. Through the tape the input gradient reads the forward's.
    let c = case([2, 64, 24, 22], 48, 3, 3, 1, 1, false);
    let taps = ops::conv2d_taps_outer(&gpu, c.x, c.w, c.stride, c.pad, None).unwrap();
    assert_eq!(taps[..2], [true, true]);
    let x = Tensor::from_slice(&gpu, &c.x, &random_vec(c.x.iter().product(), 1500)).unwrap();
    let w = Tensor::from_slice(&gpu, &c.w, &random_vec(c.w.iter().product(), 1501)).unwrap();
    let ys = [2, 48, 24, 22];
    let gy = Tensor::from_slice(&gpu, &ys, &random_vec(ys.iter().product(), 1502)).unwrap();
    let before = gpu.dispatch_count();
    let gx = ops::conv2d_backward_input(&gy, &w, c.x, c.stride, c.pad).unwrap();
    let gw = ops::conv2d_backward_weight(&x, &gy, c.w, c.stride, c.pad).unwrap();
    let apart = gpu.dispatch_count() - before;
    let tape = Tape::new();
    let (xv, wv) = (tape.leaf(x), tape.leaf(w));
    let y = xv.conv2d(&wv, None, c.stride, c.pad).unwrap();
    let before = gpu.dispatch_count();
    let grads = tape.backward_with(&y, gy).unwrap();
    assert_eq!(
        gpu.dispatch_count() - before,
        apart - 1,
        "one weights copy fewer"
    );
    // The same kernels on the same values.
    assert_eq!(
        grads.get(&xv).unwrap().to_vec().unwrap(),
        gx.to_vec().unwrap()
    );
    assert_eq!(
        grads.get(&wv).unwrap().to_vec().unwrap(),
        gw.to_vec().unwrap()
    );
}

#[test]
fn the_weight_gradient_reads_the_forward_laid_out_input() {
    // A device of its own: the test sets the algorithm, the chunk cap and the keeping. On a CPU
    // adapter with subgroups (lavapipe, SwiftShader) a training forward pass whose GEMM runs
    // without barriers keeps x as it laid it out, Winograd's transform V or a direct
    // convolution's columns, where the batch is one chunk; the tape's weight gradient reads it
    // instead of laying x out again (Gpu::set_conv_keep_laid_out). The same bits as the passes
    // apart, which keep nothing; one layout of x fewer in the backward where kept; as many where
    // the batch is chunked, with keeping off, or on other plans.
    let gpu = new_gpu();
    let lanes = gemms_without_barriers_expected(&gpu);
    let cases = [
        // 16 tiles of 4x4; chunks of one image: 4 tiles each.
        (
            ConvAlgo::Winograd,
            case([4, 20, 8, 8], 24, 3, 3, 1, 1, false),
        ),
        // A strided 3x3 on ragged planes, a 1x1 stride-2 shortcut.
        (
            ConvAlgo::Direct,
            case([3, 12, 13, 11], 20, 3, 3, 2, 1, false),
        ),
        (
            ConvAlgo::Direct,
            case([2, 16, 9, 10], 36, 1, 1, 2, 0, false),
        ),
    ];
    // The backward's layouts of x or gy: im2col's columns, Winograd's input transforms (of gy
    // for the input gradient, of x for the weight gradient).
    let layouts = |kernels: &[resnet_wgpu::gpu::KernelTime]| {
        kernels
            .iter()
            .filter(|k| {
                k.entry == "im2col" || k.entry.starts_with("wino") && k.entry.contains("_input")
            })
            .count()
    };
    // The CPU plan's tile for the main job; per pass the plan may choose F(2x2, 3x3) on small
    // batches, and the forward pass keeps V only for a weight gradient of its tile.
    gpu.set_winograd_tile(Some(WinogradTile::F4));
    for (i, (algo, c)) in cases.iter().enumerate() {
        gpu.set_conv_algo(*algo);
        let seed = 2700 + 10 * i as u64;
        let xv = random_vec(c.x.iter().product(), seed);
        let wv = random_vec(c.w.iter().product(), seed + 1);
        let x = Tensor::from_slice(&gpu, &c.x, &xv).unwrap();
        let w = Tensor::from_slice(&gpu, &c.w, &wv).unwrap();
        let ys = ops::conv2d(&x, &w, None, c.stride, c.pad)
            .unwrap()
            .shape()
            .to_vec();
        let gy = Tensor::from_slice(&gpu, &ys, &random_vec(ys.iter().product(), seed + 2));
        let gy = gy.unwrap();
        if *algo == ConvAlgo::Winograd {
            let runs = ops::conv2d_winograd(&gpu, c.x, c.w, c.stride, c.pad).unwrap();
            assert_eq!(runs, [true; 3], "{c:?}: Winograd");
        }
        // One chunk, then chunks of one image (direct: C R S rows of its pixels, rounded up to
        // 4; Winograd: 36 positions of the wider side's channels over its tiles).
        let one_image = match algo {
            ConvAlgo::Winograd => 36 * c.w[0].max(c.w[1]) * (c.x[2] / 4) * (c.x[3] / 4),
            _ => c.w[1] * c.w[2] * c.w[3] * (ys[2] * ys[3] + 4),
        };
        for (cap, keep) in [(None, true), (Some(one_image), true), (None, false)] {
            let what = format!("{algo:?} {c:?}, chunk cap {cap:?}, keep {keep}");
            gpu.set_winograd_chunk_elements(
                cap.unwrap_or(resnet_wgpu::ops::WINOGRAD_CHUNK_ELEMENTS),
            );
            gpu.set_conv_keep_laid_out(keep);
            gpu.start_profiling().unwrap();
            let gx = ops::conv2d_backward_input(&gy, &w, c.x, c.stride, c.pad).unwrap();
            let gw = ops::conv2d_backward_weight(&x, &gy, c.w, c.stride, c.pad).unwrap();
            let apart = layouts(&gpu.finish_profiling().unwrap());
            let tape = Tape::new();
            let (xt, wt) = (tape.leaf(x.clone()), tape.leaf(w.clone()));
            let y = xt.conv2d(&wt, None, c.stride, c.pad).unwrap();
            gpu.start_profiling().unwrap();
            let grads = tape.backward_with(&y, gy.clone()).unwrap();
            let through_tape = layouts(&gpu.finish_profiling().unwrap());
            let kept = lanes && keep && cap.is_none();
            assert_eq!(through_tape + kept as usize, apart, "{what}: layouts of x");
            assert_eq!(bits(grads.get(&xt).unwrap()), bits(&gx), "{what}: gx");
            assert_eq!(bits(grads.get(&wt).unwrap()), bits(&gw), "{what}: gw");
        }
    }
}

#[test]
fn the_tape_adds_a_second_input_gradient_as_the_conv_writes_it() {
    // A device of its own, for counting dispatches: without the layouts of x that the
    // convolutions would keep on a CPU adapter's plan (each one dispatch fewer in the backward;
    // the_weight_gradient_reads_the_forward_laid_out_input counts those).
    let gpu = new_gpu();
    gpu.set_conv_keep_laid_out(false);
    // x feeds two 1x1 convs (no weights' copy to count), whose outputs are added: the conv
    // replayed second adds its input gradient to the first one's as it writes it, with the
    // bits of axpy after the two, and without axpy's dispatch.
    let (xs, ws, ys) = ([2, 32, 5, 5], [40, 32, 1, 1], [2, 40, 5, 5]);
    let x = Tensor::from_slice(&gpu, &xs, &random_vec(2 * 32 * 25, 1600)).unwrap();
    let w1 = Tensor::from_slice(&gpu, &ws, &random_vec(40 * 32, 1601)).unwrap();
    let w2 = Tensor::from_slice(&gpu, &ws, &random_vec(40 * 32, 1602)).unwrap();
    let gy = Tensor::from_slice(&gpu, &ys, &random_vec(2 * 40 * 25, 1603)).unwrap();
    let before = gpu.dispatch_count();
    let gx = ops::conv2d_backward_input(&gy, &w2, xs, 1, 0).unwrap();
    let gw2 = ops::conv2d_backward_weight(&x, &gy, ws, 1, 0).unwrap();
    let gx1 = ops::conv2d_backward_input(&gy, &w1, xs, 1, 0).unwrap();
    let gw1 = ops::conv2d_backward_weight(&x, &gy, ws, 1, 0).unwrap();
    ops::axpy(&gx, 1.0, &gx1).unwrap();
    let apart = gpu.dispatch_count() - before;
    let tape = Tape::new();
    let (xv, w1v, w2v) = (tape.leaf(x), tape.leaf(w1), tape.leaf(w2));
    let a = xv.conv2d(&w1v, None, 1, 0).unwrap();
    let b = xv.conv2d(&w2v, None, 1, 0).unwrap();
    let y = a.add(&b).unwrap();
    let before = gpu.dispatch_count();
    let grads = tape.backward_with(&y, gy).unwrap();
    assert_eq!(gpu.dispatch_count() - before, apart - 1, "no axpy");
    assert!(bits(grads.get(&xv).unwrap()) == bits(&gx), "x's gradient");
    assert!(
        bits(grads.get(&w1v).unwrap()) == bits(&gw1),
        "w1's gradient"
    );
    assert!(
        bits(grads.get(&w2v).unwrap()) == bits(&gw2),
        "w2's gradient"
    );
}

/// Case `c`'s input gradient: w and gy of random values (seeds `seeds`) and the reference gx.
fn input_grad_problem(gpu: &Gpu, c: &Case, seeds: (u64, u64)) -> (Tensor, Tensor, Vec<f32>) {
    let (oh, ow) = ops::conv2d_output_size(c.x[2], c.x[3], c.w[2], c.stride, c.pad);
    let ys = [c.x[0], c.w[0], oh, ow];
    let wv = random_vec(c.w.iter().product(), seeds.0);
    let gyv = random_vec(ys.iter().product(), seeds.1);
    let w = Tensor::from_slice(gpu, &c.w, &wv).unwrap();
    let gy = Tensor::from_slice(gpu, &ys, &gyv).unwrap();
    let expected = reference::conv2d_backward_input(&gyv, &wv, c.w, c.x, c.stride, c.pad);
    (w, gy, expected)
}

/// Leave buffers of these shapes full of NaN in `gpu`'s pool, for the next allocations of
/// their sizes to reuse: an op that relies on a buffer's old contents then fails.
fn leave_nan_buffers(gpu: &Gpu, shapes: &[&[usize]]) {
    let dirty: Vec<Tensor> = shapes
        .iter()
        .map(|s| Tensor::full(gpu, s, f32::NAN).unwrap())
        .collect();
    gpu.synchronize().unwrap();
    drop(dirty);
}

#[test]
fn input_gradient_zeroes_pixels_no_tap_reaches() {
    // A device of its own, so that gx comes from a pool buffer this test has just dirtied.
    let gpu = new_gpu();
    // 1x1 kernels with stride 2 and 3 reach one pixel in four; the other three phases hold
    // zeros, which the op writes with one clear instead of a dispatch each.
    let c = case([2, 6, 7, 8], 5, 1, 1, 2, 0, false);
    let (w, gy, expected) = input_grad_problem(&gpu, &c, (41, 42));
    let xs = c.x;
    for tile in [None, Some(ConvTile::T64x64)] {
        leave_nan_buffers(&gpu, &[&xs]);
        let before = gpu.dispatch_count();
        let gx = ops::conv2d_backward_input_tiled(&gy, &w, xs, 2, 0, tile).unwrap();
        assert_eq!(
            gpu.dispatch_count() - before,
            1,
            "one GEMM dispatch: the phase that the tap reaches"
        );
        assert_close(
            &gx.to_vec().unwrap(),
            &expected,
            RTOL,
            ATOL,
            &format!("1x1 stride-2 input gradient, tile {tile:?}"),
        );
    }
}

#[test]
fn input_gradient_phases_in_one_dispatch() {
    // A device of its own: the test allows the weights' taps-outer copy on small GEMMs, so
    // that these reduce taps outer, and changes the order.
    let gpu = new_gpu();
    gpu.set_conv_weight_copy_min_columns(0);
    // The tiled plan's kernels: on a CPU adapter with subgroups (lavapipe, SwiftShader)
    // the direct passes would run the GEMMs without barriers (shaders/gemm_lanes.wgsl), which
    // the subgroups switch turns off with the tiles' shared A.
    let _ = gpu.set_subgroup_reductions(false);
    // Strided kernels whose phases all reduce taps outer (output channels in multiples of 16)
    // run their phases in one dispatch: a 3x3/2 on ragged planes (phases of 1, 2, 2 and 4
    // taps over unequal pixel counts), a 5x5/2 (2 or 3 taps per axis), a 3x3/3 (nine phases of
    // one tap) and a split-K 3x3/2 (few tiles, 144 output channels: 4 splits on 2 cores),
    // whose lighter phases get shorter chunks (the one-tap phase's rounded up from 36 to 48
    // reduction indices, leaving its last split empty, which must write zeros).
    let cases = [
        case([2, 24, 17, 19], 32, 3, 3, 2, 1, false),
        case([1, 16, 17, 18], 32, 5, 5, 2, 2, false),
        case([2, 16, 20, 19], 32, 3, 3, 3, 1, false),
        case([1, 16, 9, 9], 144, 3, 3, 2, 1, false),
    ];
    let splits = |c: &Case| ops::conv2d_input_grad_splits(&gpu, c.x, c.w, c.stride, c.pad).unwrap();
    assert!(splits(&cases[3]) > 1, "a split input gradient");
    for (i, c) in cases.iter().enumerate() {
        let (w, gy, expected) = input_grad_problem(&gpu, c, (1500 + i as u64, 1510 + i as u64));
        let len: usize = c.x.iter().product();
        let tiles = ConvTile::ALL.iter().copied().map(Some);
        for tile in std::iter::once(None).chain(tiles) {
            let what = format!("{c:?} tile {tile:?}");
            let gemms =
                ops::conv2d_input_grad_gemms(&gpu, c.x, c.w, c.stride, c.pad, tile).unwrap();
            assert_eq!(gemms, 1, "{what}: one GEMM dispatch for all phases");
            leave_nan_buffers(&gpu, &[&c.x, &[splits(c), len]]);
            let before = gpu.dispatch_count();
            let gx = ops::conv2d_backward_input_tiled(&gy, &w, c.x, c.stride, c.pad, tile).unwrap();
            if tile.is_none() {
                // The weights' copy, the GEMM and, split, the reduce.
                let reduce = (splits(c) > 1) as u64;
                assert_eq!(gpu.dispatch_count() - before, 2 + reduce, "{what}");
            }
            assert_close(&gx.to_vec().unwrap(), &expected, RTOL, 1e-4, &what);
        }
    }
    // Channel-major, a dispatch per phase.
    gpu.set_conv_order(ConvOrder::Crs);
    let c = &cases[2];
    let gemms = ops::conv2d_input_grad_gemms(&gpu, c.x, c.w, c.stride, c.pad, None).unwrap();
    assert_eq!(gemms, 9);
}

#[test]
fn input_gradient_split_k() {
    // A device of its own, so that gx and the partial results come from pool buffers this test
    // has just dirtied. Direct convolutions (Winograd's input gradient does not split).
    let gpu = new_gpu();
    gpu.set_conv_algo(ConvAlgo::Direct);
    // The tiled plan's kernels: on a CPU adapter with subgroups (lavapipe, SwiftShader)
    // the direct passes would run the GEMMs without barriers (shaders/gemm_lanes.wgsl), which
    // the subgroups switch turns off with the tiles' shared A.
    let _ = gpu.set_subgroup_reductions(false);
    // Input gradients whose tiles alone leave the device idle (small batches, late layers)
    // split their reduction: one 3x3 stride-1 phase; four stride-2 phases with 4, 2, 2 and 1
    // taps, whose lightest phases get shorter chunks and (136 output channels, 4 splits on 2
    // cores: chunks of 48) an empty last split, which must write zeros; a 1x1 stride-2 kernel
    // that reaches one pixel in four, whose partial results must hold zeros at the other three.
    let cases = [
        case([2, 64, 4, 4], 64, 3, 3, 1, 1, false),
        case([2, 16, 5, 5], 136, 3, 3, 2, 1, false),
        case([2, 8, 5, 6], 512, 1, 1, 2, 0, false),
    ];
    for (i, c) in cases.iter().enumerate() {
        let splits = ops::conv2d_input_grad_splits(&gpu, c.x, c.w, c.stride, c.pad).unwrap();
        assert!(
            splits > 1,
            "{c:?}: expected a split input gradient, got {splits}"
        );
        let (w, gy, expected) = input_grad_problem(&gpu, c, (700 + i as u64, 710 + i as u64));
        let len: usize = c.x.iter().product();
        let tiles = ConvTile::ALL.iter().copied().map(Some);
        for tile in std::iter::once(None).chain(tiles) {
            // gx's and the partial results' sizes.
            leave_nan_buffers(&gpu, &[&c.x, &[splits, len]]);
            let before = gpu.dispatch_count();
            let gx = ops::conv2d_backward_input_tiled(&gy, &w, c.x, c.stride, c.pad, tile).unwrap();
            let what = format!("{c:?} tile {tile:?}");
            if tile.is_none() {
                // One GEMM per phase that taps reach (or one for all, merged), then the reduce
                // (after the weights' taps-outer copy, where the GEMMs read one).
                let phases = (c.stride * c.stride).min(c.w[2] * c.w[3]);
                let gemms =
                    ops::conv2d_input_grad_gemms(&gpu, c.x, c.w, c.stride, c.pad, None).unwrap();
                assert!(gemms == phases || gemms == 1, "{what}: {gemms} GEMMs");
                let taps = ops::conv2d_taps_outer(&gpu, c.x, c.w, c.stride, c.pad, None).unwrap();
                let copy = taps[1] && c.w[2] * c.w[3] > 1;
                assert_eq!(
                    gpu.dispatch_count() - before,
                    gemms as u64 + 1 + copy as u64,
                    "{what}: dispatches"
                );
            }
            assert_close(&gx.to_vec().unwrap(), &expected, RTOL, 1e-4, &what);
        }
    }
}

/// [`input_grad_add_dispatches`] on `c`, whose kernels add as they write where `fused`.
fn check_input_grad_add(gpu: &Gpu, c: &Case, seed: u64, tile: Option<ConvTile>, fused: bool) {
    let what = format!("{c:?} tile {tile:?} algo {:?}", gpu.conv_algo());
    let extra = input_grad_add_dispatches(gpu, c.x, c.w, c.stride, c.pad, tile, seed, &what);
    assert_eq!(extra, !fused as u64, "{what}: dispatches of the sum's own");
}

#[test]
fn input_gradient_adds_to_the_gradient_so_far() {
    // A device of its own: the test sets the algorithm and the weights' copy.
    let gpu = new_gpu();
    gpu.set_conv_weight_copy_min_columns(0);
    // The direct plans: one phase, merged strided phases, a 1x1 stride-2 kernel whose three
    // unreached phases keep the sum's values, split-K (its reduction adds, on vec4s and, with
    // 425 values, on scalars) with and without unreached phases, and a kernel larger than its
    // 1x1 input (a window of taps).
    let direct = [
        case([2, 32, 9, 9], 32, 3, 3, 1, 1, false),
        case([2, 24, 17, 19], 32, 3, 3, 2, 1, false),
        case([2, 32, 7, 8], 32, 1, 1, 2, 0, false),
        case([2, 64, 4, 4], 64, 3, 3, 1, 1, false),
        case([1, 17, 5, 5], 136, 3, 3, 2, 1, false),
        case([2, 32, 5, 6], 512, 1, 1, 2, 0, false),
        case([2, 32, 1, 1], 32, 3, 3, 1, 1, false),
    ];
    gpu.set_conv_algo(ConvAlgo::Direct);
    for (i, c) in direct.iter().enumerate() {
        let tiles = ConvTile::ALL.iter().copied().map(Some);
        for tile in std::iter::once(None).chain(tiles) {
            check_input_grad_add(&gpu, c, 1700 + 10 * i as u64, tile, true);
        }
    }
    for i in [3, 4, 5] {
        let c = &direct[i];
        let splits = ops::conv2d_input_grad_splits(&gpu, c.x, c.w, c.stride, c.pad).unwrap();
        assert!(splits > 1, "{c:?}: expected a split input gradient");
    }
    // Winograd's output transform adds, with either tile, on even and ragged planes.
    gpu.set_conv_algo(ConvAlgo::Winograd);
    for tile in [WinogradTile::F2, WinogradTile::F4] {
        gpu.set_winograd_tile(Some(tile));
        for (i, c) in [
            case([2, 32, 8, 8], 48, 3, 3, 1, 1, false),
            case([3, 40, 7, 9], 32, 3, 3, 1, 1, false),
        ]
        .iter()
        .enumerate()
        {
            check_input_grad_add(&gpu, c, 1800 + 10 * i as u64, None, true);
        }
    }
    // Narrow layers on CPU adapters run kernels of their own, then axpy.
    gpu.set_winograd_tile(None);
    gpu.set_conv_algo(ConvAlgo::Auto);
    let c = case([2, 8, 6, 6], 8, 3, 3, 1, 1, false);
    let narrow = ops::conv2d_narrow(&gpu, c.x, c.w, c.stride, c.pad).unwrap()[1];
    assert_eq!(narrow, gpu.plan_for() == PlanFor::Cpu);
    check_input_grad_add(&gpu, &c, 1900, None, !narrow);
}

#[test]
fn conv_tuning_saves_and_loads_for_the_same_adapter() {
    let gpu = new_gpu();
    gpu.set_conv_autotune(true).unwrap();
    let (xs, ws) = ([2, 8, 9, 9], [12, 8, 3, 3]);
    let x = Tensor::from_slice(&gpu, &xs, &random_vec(xs.iter().product(), 1)).unwrap();
    let w = Tensor::from_slice(&gpu, &ws, &random_vec(ws.iter().product(), 2)).unwrap();
    let y = ops::conv2d(&x, &w, None, 2, 1).unwrap().to_vec().unwrap();
    let tuned = gpu.tuned_convs();
    assert_eq!(tuned.len(), 1, "{tuned:#?}");
    let dir = std::env::temp_dir().join(format!("resnet-wgpu-tuning-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tuning.json");
    gpu.save_conv_tuning(&path).unwrap();

    // Another device on the same adapter runs the saved choice without timing anything.
    let other = new_gpu();
    other.set_conv_autotune(true).unwrap();
    assert_eq!(other.load_conv_tuning(&path).unwrap(), 1);
    assert_eq!(other.tuned_convs(), tuned);
    let x2 = Tensor::from_slice(&other, &xs, &x.to_vec().unwrap()).unwrap();
    let w2 = Tensor::from_slice(&other, &ws, &w.to_vec().unwrap()).unwrap();
    let before = other.submit_count();
    let y2 = ops::conv2d(&x2, &w2, None, 2, 1).unwrap();
    assert_eq!(
        other.submit_count(),
        before,
        "tuning would have submitted its trials"
    );
    assert_eq!(y2.to_vec().unwrap(), y);
    assert_eq!(other.tuned_convs(), tuned, "nothing tuned again");

    // Files it cannot use: named, with what is wrong.
    let err = |file: &std::path::Path| other.load_conv_tuning(file).unwrap_err().to_string();
    let missing = dir.join("missing.json");
    assert!(err(&missing).contains("missing.json"), "{}", err(&missing));
    let text = std::fs::read_to_string(&path).unwrap();
    let elsewhere = dir.join("elsewhere.json");
    let name = &gpu.info().name;
    std::fs::write(&elsewhere, text.replace(name.as_str(), "Some Other GPU")).unwrap();
    let e = err(&elsewhere);
    assert!(
        e.contains("elsewhere.json") && e.contains("Some Other GPU") && e.contains(name.as_str()),
        "{e}"
    );
    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, "{\"format\": 3}").unwrap();
    let e = err(&garbage);
    assert!(
        e.contains("garbage.json") && e.contains("not a conv tuning file"),
        "{e}"
    );
    let version = env!("CARGO_PKG_VERSION");
    let older = dir.join("older.json");
    let old_text = text.replace(&format!("\"{version}\""), "\"0.0.1\"");
    std::fs::write(&older, old_text).unwrap();
    let e = err(&older);
    assert!(e.contains("0.0.1") && e.contains("tune again"), "{e}");
    // An older format (whose records would not parse as this one's): named as such.
    let format_1 = dir.join("format1.json");
    std::fs::write(
        &format_1,
        "{\"format\": \"resnet-wgpu conv tuning 1\", \"convs\": [{\"winograd_millis\": 1.0}]}",
    )
    .unwrap();
    let e = err(&format_1);
    assert!(
        e.contains("format1.json") && e.contains("conv tuning 1") && e.contains("tune again"),
        "{e}"
    );
    assert_eq!(other.tuned_convs(), tuned, "failed loads change nothing");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn autotune_times_each_shape_and_pass_once() {
    // A device of its own: the test turns tuning on and counts dispatches.
    let gpu = new_gpu();
    // Every pass runs its tuned direct tile (tuning times Winograd too where the shape takes
    // it: tests/winograd.rs).
    gpu.set_conv_algo(ConvAlgo::Direct);
    assert!(!gpu.conv_autotune(), "tuning is off by default");
    gpu.set_conv_autotune(true).unwrap();
    // A stride-1 shape, and a strided one with four input-gradient phases.
    let cases = [
        case([2, 19, 13, 11], 131, 3, 3, 1, 1, true),
        case([1, 21, 17, 15], 70, 3, 3, 2, 1, false),
    ];
    for (i, c) in cases.iter().enumerate() {
        check_random(&gpu, c, 800 + 10 * i as u64);
    }
    let tuned = gpu.tuned_convs();
    assert_eq!(tuned.len(), 3 * cases.len(), "{tuned:#?}");
    for c in &cases {
        for pass in [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad] {
            let t = tuned
                .iter()
                .find(|t| t.key.pass == pass && t.key.x == c.x && t.key.w == c.w)
                .unwrap_or_else(|| panic!("{c:?} {pass:?} not tuned: {tuned:#?}"));
            assert_eq!((t.key.stride, t.key.padding), (c.stride, c.pad));
            assert!(t.millis.iter().all(|&ms| ms > 0.0), "{t:?}");
            let both = [c.stride == 1; 2];
            assert_eq!(t.winograd_millis.map(|ms| ms.is_some()), both, "{t:?}");
        }
    }
    // Tuned shapes run their tile at once: the same dispatches and results as that tile
    // forced, and nothing tuned again (the inference kernels share the forward's tile).
    let c = &cases[1];
    let tile = |pass| {
        let t = tuned
            .iter()
            .find(|t| t.key.pass == pass && t.key.x == c.x)
            .unwrap();
        match t.tile {
            GemmTile::F32(tile) => tile,
            GemmTile::F16(_) => panic!("an f16 tile tuned under ConvPrecision::F32: {t:?}"),
        }
    };
    let x = Tensor::from_slice(&gpu, &c.x, &random_vec(c.x.iter().product(), 1)).unwrap();
    let w = Tensor::from_slice(&gpu, &c.w, &random_vec(c.w.iter().product(), 2)).unwrap();
    let before = gpu.dispatch_count();
    let y = ops::conv2d(&x, &w, None, c.stride, c.pad).unwrap();
    let tuned_dispatches = gpu.dispatch_count() - before;
    let before = gpu.dispatch_count();
    let forced = ops::conv2d_tiled(&x, &w, None, c.stride, c.pad, Some(tile(ConvPass::Forward)));
    assert_eq!(gpu.dispatch_count() - before, tuned_dispatches);
    assert_eq!(y.to_vec().unwrap(), forced.unwrap().to_vec().unwrap());
    let gy = Tensor::from_slice(&gpu, y.shape(), &random_vec(y.numel(), 3)).unwrap();
    let gx = ops::conv2d_backward_input(&gy, &w, c.x, c.stride, c.pad).unwrap();
    let forced = ops::conv2d_backward_input_tiled(
        &gy,
        &w,
        c.x,
        c.stride,
        c.pad,
        Some(tile(ConvPass::InputGrad)),
    );
    assert_eq!(gx.to_vec().unwrap(), forced.unwrap().to_vec().unwrap());
    let gw = ops::conv2d_backward_weight(&x, &gy, c.w, c.stride, c.pad).unwrap();
    let forced = ops::conv2d_backward_weight_tiled(
        &x,
        &gy,
        c.w,
        c.stride,
        c.pad,
        Some(tile(ConvPass::WeightGrad)),
    );
    assert_eq!(gw.to_vec().unwrap(), forced.unwrap().to_vec().unwrap());
    let bnv = random_bn(c.w[0], 4);
    let bn_t = channel_tensors(&gpu, &bnv);
    let bn = eval_bn(&bn_t, 1e-5);
    ops::conv2d_bn_eval(&x, &w, c.stride, c.pad, &bn, None, true).unwrap();
    assert_eq!(gpu.tuned_convs(), tuned, "nothing tuned twice");
    // Another staging or order changes the candidates' kernels: the shape is tuned again
    // under it, and the first tuning still serves the first setting.
    let forward_of = |staging, order| {
        let t = gpu.tuned_convs();
        let mut keys = t.iter().map(|t| t.key).filter(|k| {
            k.pass == ConvPass::Forward && k.x == c.x && k.staging == staging && k.order == order
        });
        (keys.next(), keys.next(), t.len())
    };
    assert_eq!(gpu.conv_staging(), ConvStaging::Double);
    gpu.set_conv_staging(ConvStaging::Single);
    ops::conv2d(&x, &w, None, c.stride, c.pad).unwrap();
    let (key, twice, count) = forward_of(ConvStaging::Single, ConvOrder::Rsc);
    assert!(key.is_some() && twice.is_none(), "{:#?}", gpu.tuned_convs());
    assert_eq!(count, tuned.len() + 1);
    gpu.set_conv_order(ConvOrder::Crs);
    ops::conv2d(&x, &w, None, c.stride, c.pad).unwrap();
    assert!(forward_of(ConvStaging::Single, ConvOrder::Crs).0.is_some());
    assert_eq!(gpu.tuned_convs().len(), tuned.len() + 2);
    gpu.set_conv_staging(ConvStaging::Double);
    gpu.set_conv_order(ConvOrder::Rsc);
    let before = gpu.dispatch_count();
    ops::conv2d(&x, &w, None, c.stride, c.pad).unwrap();
    assert_eq!(gpu.dispatch_count() - before, tuned_dispatches);
    assert_eq!(
        gpu.tuned_convs().len(),
        tuned.len() + 2,
        "the first tuning serves"
    );
    // Off again: the model plans, and the tuned tiles stay for later.
    gpu.set_conv_autotune(false).unwrap();
    assert!(!gpu.conv_autotune());
    assert_eq!(gpu.tuned_convs().len(), tuned.len() + 2);
}

#[test]
fn small_inputs_run_only_the_taps_that_reach_them() {
    let gpu = gpu();
    // (case, taps the GEMMs run): a 3x3 kernel on 1x1 maps reaches them with its centre tap
    // only (ResNet-18's layer4 on 32x32 images), and a 3x3 stride-2 kernel on 2x2 maps with
    // its last two rows and columns; a map one pixel high but four wide would need another
    // padding per axis, and an output that reads only padding has no tap to keep: both run the
    // whole kernel. Every pass against the CPU reference, with each tile.
    let cases = [
        (case([3, 8, 1, 1], 6, 3, 3, 1, 1, true), (1, 1)),
        (case([2, 8, 2, 2], 70, 3, 3, 2, 1, false), (2, 2)),
        (case([2, 5, 3, 3], 4, 5, 5, 1, 2, true), (5, 5)),
        (case([1, 4, 1, 4], 3, 3, 3, 1, 1, false), (3, 3)),
        (case([1, 2, 1, 1], 3, 3, 3, 5, 3, true), (3, 3)),
    ];
    for (i, (c, taps)) in cases.iter().enumerate() {
        assert_eq!(
            ops::conv2d_taps(c.x, c.w, c.stride, c.pad).unwrap(),
            *taps,
            "{c:?}"
        );
        check_random(&gpu, c, 900 + 10 * i as u64);
        for tile in ConvTile::ALL {
            check_random_tiled(&gpu, c, 950 + 10 * i as u64, Some(tile));
        }
    }
    // Inference's fused kernels take the same window.
    let c = &cases[0].0;
    let xv = random_vec(c.x.iter().product(), 1);
    let wv = random_vec(c.w.iter().product(), 2);
    let bnv = random_bn(c.w[0], 3);
    let x = Tensor::from_slice(&gpu, &c.x, &xv).unwrap();
    let w = Tensor::from_slice(&gpu, &c.w, &wv).unwrap();
    let bn_t = channel_tensors(&gpu, &bnv);
    let bn = eval_bn(&bn_t, 1e-5);
    let bn_ref = [&bnv[0][..], &bnv[1][..], &bnv[2][..], &bnv[3][..]];
    let (ye, _) = reference::conv2d_bn_eval(
        &xv, c.x, &wv, c.w, c.stride, c.pad, bn_ref, 1e-5, None, true,
    );
    let y = ops::conv2d_bn_eval(&x, &w, c.stride, c.pad, &bn, None, true).unwrap();
    assert_close(
        &y.to_vec().unwrap(),
        &ye,
        RTOL,
        2e-4,
        "fused eval conv on 1x1 maps",
    );
}

/// Random eval-mode batch-norm parameters for `k` channels: gamma, beta, running mean and a
/// running variance in [0.5, 1.5].
fn random_bn(k: usize, seed: u64) -> [Vec<f32>; 4] {
    let var = random_vec(k, seed + 3)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect();
    [
        random_vec(k, seed),
        random_vec(k, seed + 1),
        random_vec(k, seed + 2),
        var,
    ]
}

/// An inference conv block's inputs for case `c`, drawn from `seed`: x, w, the batch norm's
/// four channel vectors (gamma, beta, running mean and variance) and a residual of the
/// output's shape `ys`, as values and as tensors.
struct EvalInputs {
    xv: Vec<f32>,
    wv: Vec<f32>,
    bnv: [Vec<f32>; 4],
    rv: Vec<f32>,
    x: Tensor,
    w: Tensor,
    bn_t: Vec<Tensor>,
    r: Tensor,
    ys: [usize; 4],
}

impl EvalInputs {
    fn new(gpu: &Gpu, c: &Case, seed: u64) -> EvalInputs {
        let xv = random_vec(c.x.iter().product(), seed);
        let wv = random_vec(c.w.iter().product(), seed + 1);
        let bnv = random_bn(c.w[0], seed + 2);
        let (oh, ow) = ops::conv2d_output_size(c.x[2], c.x[3], c.w[2], c.stride, c.pad);
        let ys = [c.x[0], c.w[0], oh, ow];
        let rv = random_vec(ys.iter().product(), seed + 7);
        EvalInputs {
            x: Tensor::from_slice(gpu, &c.x, &xv).unwrap(),
            w: Tensor::from_slice(gpu, &c.w, &wv).unwrap(),
            bn_t: channel_tensors(gpu, &bnv),
            r: Tensor::from_slice(gpu, &ys, &rv).unwrap(),
            xv,
            wv,
            bnv,
            rv,
            ys,
        }
    }
}

#[test]
fn fused_eval_batch_norm_matches_separate_kernels() {
    // A device of its own: the test counts its dispatches. Direct convolutions, which the
    // fused kernel runs too (the separate ones must match it closely).
    let gpu = new_gpu();
    gpu.set_conv_algo(ConvAlgo::Direct);
    // The separate kernels' conv runs the tiled GEMM the fused kernel runs: on a CPU adapter
    // with subgroups (lavapipe, SwiftShader) it would run the GEMM without barriers
    // (shaders/gemm_lanes.wgsl), which the subgroups switch turns off with the tiles' shared A.
    let _ = gpu.set_subgroup_reductions(false);
    // Inference's conv blocks: conv + eval batch norm (+ residual) (+ ReLU) in one kernel.
    // Ragged edges against every tile, a 1x1 stride-2 downsample, a 7x7 stem and (last) a
    // split-K forward, whose epilogue runs in the reduce kernel.
    let cases = [
        case([2, 19, 13, 11], 131, 3, 3, 1, 1, false),
        case([2, 35, 9, 9], 129, 1, 1, 2, 0, false),
        case([1, 3, 23, 21], 66, 7, 7, 2, 3, false),
        case([1, 64, 5, 5], 20, 3, 3, 1, 1, false),
    ];
    let last = cases.last().unwrap();
    let splits = ops::conv2d_forward_splits(&gpu, last.x, last.w, last.stride, last.pad).unwrap();
    assert!(
        splits > 1,
        "expected a split forward reduction, got {splits}"
    );
    let eps = 1e-5;
    for (i, c) in cases.iter().enumerate() {
        let EvalInputs {
            xv,
            wv,
            bnv,
            rv,
            x,
            w,
            bn_t,
            r,
            ys,
        } = EvalInputs::new(&gpu, c, 500 + 10 * i as u64);
        let bn = eval_bn(&bn_t, eps);
        for (residual, relu) in [(false, false), (false, true), (true, true), (true, false)] {
            let res = residual.then_some(&r);
            let bn_ref = [&bnv[0][..], &bnv[1][..], &bnv[2][..], &bnv[3][..]];
            let (ye, shape) = reference::conv2d_bn_eval(
                &xv,
                c.x,
                &wv,
                c.w,
                c.stride,
                c.pad,
                bn_ref,
                eps,
                residual.then_some(&rv[..]),
                relu,
            );
            assert_eq!(shape, ys);
            let apart = ops::conv2d_bn_eval_unfused(&x, &w, c.stride, c.pad, &bn, res, relu)
                .unwrap()
                .to_vec()
                .unwrap();
            let tiles = ConvTile::ALL.iter().copied().map(Some);
            for tile in std::iter::once(None).chain(tiles) {
                let what = format!(
                    "x {:?} w {:?} stride {} pad {} residual {residual} relu {relu} tile {tile:?}",
                    c.x, c.w, c.stride, c.pad
                );
                let before = gpu.dispatch_count();
                let y = ops::conv2d_bn_eval_tiled(&x, &w, c.stride, c.pad, &bn, res, relu, tile)
                    .unwrap();
                // One kernel, two with split-K (the GEMM, then the reduce with the epilogue); the
                // separate kernels would be two to four. The weights' taps-outer copy, where the
                // GEMM reads one, is one more.
                let dispatches = gpu.dispatch_count() - before;
                if tile.is_none() {
                    let split = ops::conv2d_forward_splits(&gpu, c.x, c.w, c.stride, c.pad);
                    let kernels = if split.unwrap() > 1 { 2 } else { 1 };
                    let taps = ops::conv2d_taps_outer(&gpu, c.x, c.w, c.stride, c.pad, None);
                    let window = ops::conv2d_taps(c.x, c.w, c.stride, c.pad).unwrap();
                    let copy = taps.unwrap()[0] && window != (1, 1);
                    assert_eq!(dispatches, kernels + copy as u64, "{what}: dispatches");
                } else {
                    assert!(dispatches <= 3, "{what}: {dispatches} dispatches");
                }
                assert_eq!(y.shape(), ys, "{what}: shape");
                let y = y.to_vec().unwrap();
                // The batch norm divides by sqrt(var) >= 0.7: the conv's tolerance, scaled.
                assert_close(
                    &y,
                    &ye,
                    RTOL,
                    2e-4,
                    &format!("{what}: against the reference"),
                );
                if tile.is_none() {
                    // Same tile, same arithmetic in the same order as the separate kernels.
                    assert_close(
                        &y,
                        &apart,
                        1e-6,
                        1e-6,
                        &format!("{what}: against the separate kernels"),
                    );
                }
                if relu {
                    assert!(y.iter().all(|&v| v >= 0.0), "{what}: ReLU");
                }
            }
        }
    }
}

#[test]
fn fused_eval_batch_norm_on_narrow_layers() {
    // Where a CPU adapter's plan runs a conv's forward pass on the narrow kernels, which have
    // no batch-norm epilogue, inference's conv block runs them and the batch norm's kernel
    // (and the residual's) instead of the tiled GEMM with the epilogue, whose barriers cost
    // more there. A GPU's plan keeps the fused GEMM. Cases: a 3x3 of 12 channels with a
    // residual and the ReLU, a strided 7x7 stem with the ReLU, neither on a 5x5.
    let gpu = new_gpu();
    let cpu = gpu.plan_for() == PlanFor::Cpu;
    let cases = [
        (case([2, 3, 9, 7], 12, 3, 3, 1, 1, false), true, true),
        (case([2, 3, 23, 21], 16, 7, 7, 2, 3, false), false, true),
        (case([1, 16, 6, 6], 5, 5, 5, 1, 2, false), false, false),
    ];
    let eps = 1e-5;
    for (i, (c, residual, relu)) in cases.into_iter().enumerate() {
        let EvalInputs {
            xv,
            wv,
            bnv,
            rv,
            x,
            w,
            bn_t,
            r,
            ..
        } = EvalInputs::new(&gpu, &c, 560 + 10 * i as u64);
        let bn = eval_bn(&bn_t, eps);
        let bn_ref = [&bnv[0][..], &bnv[1][..], &bnv[2][..], &bnv[3][..]];
        let rv = residual.then_some(&rv[..]);
        let (ye, _) =
            reference::conv2d_bn_eval(&xv, c.x, &wv, c.w, c.stride, c.pad, bn_ref, eps, rv, relu);
        let what = format!("{c:?} residual {residual} relu {relu}");
        let narrow = ops::conv2d_narrow(&gpu, c.x, c.w, c.stride, c.pad).unwrap()[0];
        assert_eq!(
            narrow, cpu,
            "{what}: the forward pass on the narrow kernels"
        );
        gpu.start_profiling().unwrap();
        let res = residual.then_some(&r);
        let y = ops::conv2d_bn_eval(&x, &w, c.stride, c.pad, &bn, res, relu).unwrap();
        let kernels = gpu.finish_profiling().unwrap();
        let ran = |entry: &str| kernels.iter().any(|t| t.entry == entry);
        assert_eq!(ran("narrow_forward"), narrow, "{what}: {kernels:?}");
        // The fused GEMM's epilogue, or with split-K its reduction's.
        let fused = ran("conv_forward_bn") || ran("conv_forward_reduce_bn");
        assert_eq!(fused, !narrow, "{what}: {kernels:?}");
        assert_close(&y.to_vec().unwrap(), &ye, RTOL, 2e-4, &what);
    }
}

#[test]
fn fused_eval_batch_norm_errors() {
    let gpu = gpu();
    let z = |s: &[usize]| Tensor::zeros(&gpu, s).unwrap();
    let (x, w) = (z(&[1, 3, 8, 8]), z(&[4, 3, 3, 3]));
    let (c4, c5) = (z(&[4]), z(&[5]));
    let bn = ops::EvalBatchNorm {
        gamma: &c4,
        beta: &c4,
        running_mean: &c4,
        running_var: &c5,
        eps: 1e-5,
    };
    let e = ops::conv2d_bn_eval(&x, &w, 1, 1, &bn, None, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("conv2d_bn_eval:") && e.contains("running_var") && e.contains("[4]"),
        "{e}"
    );
    let bn = ops::EvalBatchNorm {
        running_var: &c4,
        ..bn
    };
    let e = ops::conv2d_bn_eval(&x, &w, 1, 1, &bn, Some(&z(&[1, 4, 7, 8])), true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("residual") && e.contains("[1, 4, 8, 8]") && e.contains("[1, 4, 7, 8]"),
        "{e}"
    );
    let e = ops::conv2d_bn_eval(&x, &z(&[4, 2, 3, 3]), 1, 1, &bn, None, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("conv2d_bn_eval:") && e.contains("channels"),
        "{e}"
    );
    assert!(ops::conv2d_bn_eval(&x, &w, 1, 1, &bn, Some(&z(&[1, 4, 8, 8])), false).is_ok());
}

#[test]
fn tile_choice_fits_the_gemm() {
    // GPUs: large GEMMs take the wide tile; narrow ones do not waste most of a tile; grids too
    // small for the wide tile keep enough workgroups.
    let gpu = TileModel::GPU;
    assert_eq!(gpu.choose(256, 100_000, 1), ConvTile::T128x64);
    assert_eq!(gpu.choose(512, 6272, 1), ConvTile::T128x64);
    assert_eq!(gpu.choose(64, 400_000, 1), ConvTile::T64x64);
    assert_eq!(gpu.choose(3, 4096, 1), ConvTile::T64x64);
    assert_eq!(gpu.choose(512, 3136, 1), ConvTile::T64x64);
    // Narrow GEMMs (32 channels or fewer) take the 32-row tile, which wastes none or less; never
    // 32 x 256, which no GPU has measured.
    assert_eq!(gpu.choose(32, 100_000, 1), ConvTile::T32x128);
    assert_eq!(gpu.choose(8, 100_000, 1), ConvTile::T32x128);
    assert_eq!(gpu.choose(48, 100_000, 1), ConvTile::T64x64);
    // CPUs: a few workgroups fill the device, so the fastest tile wins unless it is mostly waste;
    // GEMMs of 32 and 64 rows take the 256-column tiles of their height, unless those columns
    // would be mostly padding.
    let cpu = TileModel::CPU;
    assert_eq!(cpu.choose(512, 6272, 1), ConvTile::T128x128);
    assert_eq!(cpu.choose(64, 400_000, 1), ConvTile::T64x256);
    assert_eq!(cpu.choose(64, 576, 4), ConvTile::T64x128);
    assert_eq!(cpu.choose(32, 400_000, 1), ConvTile::T32x256);
    assert_eq!(cpu.choose(32, 300, 1), ConvTile::T32x128);
    // The f16 engine runs the f16 tile standing in for the plan's, and on GPUs its model, which
    // counts the values staged per multiply-add, takes 128 x 128 where the tiles are full.
    assert_eq!(MmaTile::for_f32_tile(ConvTile::T128x128), MmaTile::T128x128);
    assert_eq!(MmaTile::for_f32_tile(ConvTile::T128x64), MmaTile::T128x64);
    assert_eq!(MmaTile::for_f32_tile(ConvTile::T64x128), MmaTile::T64x64);
    assert_eq!(MmaTile::for_f32_tile(ConvTile::T32x128), MmaTile::T64x64);
    assert_eq!(MmaTile::for_f32_tile(ConvTile::T32x256), MmaTile::T64x64);
    assert_eq!(MmaTile::for_f32_tile(ConvTile::T64x256), MmaTile::T64x64);
    let f16 = TileModel::GPU_F16;
    assert_eq!(f16.choose(256, 100_000, 1), ConvTile::T128x128);
    assert_eq!(f16.choose(64, 400_000, 1), ConvTile::T64x64);
    assert_eq!(f16.choose(512, 3136, 1), ConvTile::T64x64);
    // Every f16 tile fits in 20 KiB of workgroup memory with one copy of the staged operands,
    // and in the 32 KiB of Apple's GPUs and lavapipe with two, with either fragment size.
    for t in MmaTile::ALL {
        for fragment in [8, 16] {
            assert!(t.workgroup_bytes(fragment, 1) <= 20 << 10, "{t:?}");
            assert!(t.workgroup_bytes(fragment, 2) <= 32 << 10, "{t:?}");
        }
    }
    assert_eq!(MmaTile::T128x128.workgroup_bytes(16, 1), 18_944);
    assert_eq!(MmaTile::T128x128.workgroup_bytes(16, 2), 29_440);
    assert_eq!(ConvTile::parse("128x64"), Some(ConvTile::T128x64));
    assert_eq!(ConvTile::parse("32x128"), Some(ConvTile::T32x128));
    assert_eq!(ConvTile::parse("32x256"), Some(ConvTile::T32x256));
    assert_eq!(ConvTile::parse("64x256"), Some(ConvTile::T64x256));
    assert_eq!(ConvTile::parse("96x96"), None);
}

#[test]
fn errors_name_the_op_and_shapes() {
    let gpu = gpu();
    let z = |s: &[usize]| Tensor::zeros(&gpu, s).unwrap();
    let x = z(&[1, 3, 8, 8]);
    let w = z(&[4, 3, 3, 3]);
    let expect = |r: resnet_wgpu::Result<Tensor>, op: &str, needle: &str| {
        let e = r.unwrap_err().to_string();
        assert!(e.starts_with(&format!("{op}:")), "{e}");
        assert!(e.contains(needle), "expected {needle:?} in: {e}");
    };
    expect(
        ops::conv2d(&z(&[3, 8, 8]), &w, None, 1, 1),
        "conv2d",
        "rank 4",
    );
    expect(
        ops::conv2d(&x, &z(&[4, 3, 3]), None, 1, 1),
        "conv2d",
        "rank 4",
    );
    expect(
        ops::conv2d(&x, &z(&[4, 2, 3, 3]), None, 1, 1),
        "conv2d",
        "[4, 2, 3, 3]",
    );
    expect(
        ops::conv2d(&x, &w, Some(&z(&[5])), 1, 1),
        "conv2d",
        "bias has 5",
    );
    expect(
        ops::conv2d(&x, &w, Some(&z(&[4, 1])), 1, 1),
        "conv2d",
        "rank 1",
    );
    expect(ops::conv2d(&x, &w, None, 0, 1), "conv2d", "stride");
    expect(
        ops::conv2d(&x, &z(&[4, 3, 11, 11]), None, 1, 1),
        "conv2d",
        "larger than the padded input",
    );
    let labels = Tensor::from_u32(&gpu, &[1, 3, 8, 8], &[0; 192]).unwrap();
    expect(ops::conv2d(&labels, &w, None, 1, 1), "conv2d", "f32");
    expect(
        ops::conv2d_backward_input(&z(&[1, 4, 7, 8]), &w, [1, 3, 8, 8], 1, 1),
        "conv2d_backward_input",
        "[1, 4, 7, 8]",
    );
    expect(
        ops::conv2d_backward_weight(&x, &z(&[1, 4, 8, 8]), [4, 3, 3, 3], 2, 1),
        "conv2d_backward_weight",
        "[1, 4, 4, 4]",
    );
    assert_eq!(ops::conv2d_output_size(224, 224, 7, 2, 3), (112, 112));
    assert_eq!(ops::conv2d_output_size(7, 5, 3, 2, 0), (3, 2));
    assert_eq!(ops::conv2d_output_size(2, 2, 7, 1, 0), (0, 0));
    // The Var method reports the same errors and records nothing.
    let tape = Tape::new();
    let xv = tape.leaf(x.clone());
    let e = xv
        .conv2d(&Var::constant(z(&[4, 2, 3, 3])), None, 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("conv2d:"), "{e}");
    assert!(tape.is_empty());
}

#[test]
fn untracked_inputs_get_no_gradient() {
    let gpu = gpu();
    let x = Var::constant(Tensor::from_slice(&gpu, &[1, 2, 5, 5], &random_vec(50, 3)).unwrap());
    let tape = Tape::new();
    let w = tape.leaf(Tensor::from_slice(&gpu, &[3, 2, 3, 3], &random_vec(54, 4)).unwrap());
    let b = Var::constant(Tensor::zeros(&gpu, &[3]).unwrap());
    let y = x.conv2d(&w, Some(&b), 1, 1).unwrap();
    let grads = tape
        .backward_with(&y, Tensor::full(&gpu, y.shape(), 1.0).unwrap())
        .unwrap();
    assert!(grads.get(&w).is_some());
    assert!(grads.get(&x).is_none() && grads.get(&b).is_none());
    assert_eq!(grads.len(), 1);
    // No tape at all: inference records nothing.
    let y = x
        .conv2d(&Var::constant(w.tensor().clone()), None, 1, 1)
        .unwrap();
    assert!(!y.requires_grad());
}

/// Central differences of L = sum(conv2d(x, w, b) * r) for random r, through the tape.
#[test]
fn gradient_check_by_central_differences() {
    let gpu = gpu();
    let (xs, ws, stride, pad) = ([1usize, 2, 5, 4], [3usize, 2, 3, 3], 2, 1);
    let xv = random_vec(xs.iter().product(), 41);
    let wv = random_vec(ws.iter().product(), 42);
    let bv = random_vec(ws[0], 43);
    let (y0, ys) = reference::conv2d(&xv, xs, &wv, ws, Some(&bv), stride, pad);
    let rv = random_vec(y0.len(), 44);
    let loss = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
        let tx = Tensor::from_slice(&gpu, &xs, x).unwrap();
        let tw = Tensor::from_slice(&gpu, &ws, w).unwrap();
        let tb = Tensor::from_slice(&gpu, &[ws[0]], b).unwrap();
        let y = ops::conv2d(&tx, &tw, Some(&tb), stride, pad)
            .unwrap()
            .to_vec()
            .unwrap();
        y.iter().zip(&rv).map(|(&a, &r)| a as f64 * r as f64).sum()
    };
    let tape = Tape::new();
    let x = tape.leaf(Tensor::from_slice(&gpu, &xs, &xv).unwrap());
    let w = tape.leaf(Tensor::from_slice(&gpu, &ws, &wv).unwrap());
    let b = tape.leaf(Tensor::from_slice(&gpu, &[ws[0]], &bv).unwrap());
    let y = x.conv2d(&w, Some(&b), stride, pad).unwrap();
    let grads = tape
        .backward_with(&y, Tensor::from_slice(&gpu, &ys, &rv).unwrap())
        .unwrap();
    let eps = 1e-2f32;
    let numeric = |which: usize, i: usize| -> f32 {
        let mut vals = [xv.clone(), wv.clone(), bv.clone()];
        vals[which][i] += eps;
        let up = loss(&vals[0], &vals[1], &vals[2]);
        vals[which][i] -= 2.0 * eps;
        let down = loss(&vals[0], &vals[1], &vals[2]);
        ((up - down) / (2.0 * eps as f64)) as f32
    };
    for (which, var, n) in [(0, &x, xv.len()), (1, &w, wv.len()), (2, &b, bv.len())] {
        let analytic = grads.get(var).unwrap().to_vec().unwrap();
        // A spread of elements (every one for the small tensors).
        let picks: Vec<usize> = (0..n).step_by(n.div_ceil(12)).collect();
        let num: Vec<f32> = picks.iter().map(|&i| numeric(which, i)).collect();
        let ana: Vec<f32> = picks.iter().map(|&i| analytic[i]).collect();
        assert_close(
            &ana,
            &num,
            2e-2,
            2e-2,
            &format!("gradient check of input {which}"),
        );
    }
}

#[test]
fn direct_convs_without_barriers_match_the_reference() {
    // A device of its own: the test sets the algorithm and the chunk cap. On a CPU adapter
    // with subgroups (lavapipe, SwiftShader), the direct passes run the GEMMs without
    // workgroup memory or barriers (shaders/gemm_lanes.wgsl) on x's and gy's columns
    // (shaders/im2col.wgsl): the forward pass into y's planes, the weight gradient per chunk of
    // images, the input gradient back through col2im (adding to the gradient so far where
    // given), and in inference the forward pass with the batch norm. Cases: a strided 3x3 on
    // ragged planes (pixels per chunk not a multiple of 4; odd sides, so col2im_s2's last 2x2
    // blocks lie partly outside), one on even sides (the last blocks' right and lower pixels
    // inside, without the output row and column past the last), output channels off the lanes' 32
    // rows, a 1x1 stride-2 shortcut (its input gradient stays tiled), a 5x5 with padding 2,
    // and a stride-1 3x3 with a bias.
    let gpu = new_gpu();
    gpu.set_conv_algo(ConvAlgo::Direct);
    let lanes = gemms_without_barriers_expected(&gpu);
    let cases = [
        case([3, 12, 13, 11], 20, 3, 3, 2, 1, false),
        case([2, 12, 10, 8], 16, 3, 3, 2, 1, false),
        case([2, 16, 9, 10], 36, 1, 1, 2, 0, false),
        case([2, 8, 11, 9], 40, 5, 5, 1, 2, false),
        case([2, 24, 7, 7], 28, 3, 3, 1, 1, true),
    ];
    for (i, c) in cases.iter().enumerate() {
        let seed = 2100 + 10 * i as u64;
        let e = expected(c, seed);
        let Expected {
            xv,
            wv,
            bv,
            gyv,
            y: ye,
            gx: gxe,
            gw: gwe,
            ..
        } = &*e;
        let ys = e.y_shape;
        let sumv = random_vec(gxe.len(), seed + 4);
        // One chunk of images, then chunks of one image (x's columns: C R S rows of a chunk's
        // pixels, rounded up to 4).
        let (oh, ow) = (ys[2], ys[3]);
        let one_image = c.w[1] * c.w[2] * c.w[3] * (oh * ow + 4);
        for cap in [None, Some(one_image)] {
            let what = format!("{c:?}, chunk cap {cap:?}");
            gpu.set_winograd_chunk_elements(
                cap.unwrap_or(resnet_wgpu::ops::WINOGRAD_CHUNK_ELEMENTS),
            );
            let x = Tensor::from_slice(&gpu, &c.x, xv).unwrap();
            let w = Tensor::from_slice(&gpu, &c.w, wv).unwrap();
            let bt = Tensor::from_slice(&gpu, &[c.w[0]], bv).unwrap();
            let gy = Tensor::from_slice(&gpu, &ys, gyv).unwrap();
            let sum = Tensor::from_slice(&gpu, &c.x, &sumv).unwrap();
            gpu.start_profiling().unwrap();
            let y = ops::conv2d(&x, &w, c.bias.then_some(&bt), c.stride, c.pad).unwrap();
            let gx = ops::conv2d_backward_input(&gy, &w, c.x, c.stride, c.pad).unwrap();
            let gw = ops::conv2d_backward_weight(&x, &gy, c.w, c.stride, c.pad).unwrap();
            let added = ops::conv2d_backward_input_add(&gy, &w, c.x, c.stride, c.pad, sum);
            let added = added.unwrap().to_vec().unwrap();
            let kernels = gpu.finish_profiling().unwrap();
            let ran = |entry: &str| kernels.iter().any(|t| t.entry == entry);
            let one_by_one = c.w[2] * c.w[3] == 1;
            // The downsampling 3x3s gather by 2x2 blocks of pixels (col2im_s2).
            let downsampling = (c.w[2], c.w[3], c.stride, c.pad) == (3, 3, 2, 1);
            assert_eq!(
                [
                    ran("gemm_lanes_planes"),
                    ran("gemm_lanes_nt"),
                    ran("col2im"),
                    ran("col2im_s2"),
                ],
                [
                    lanes,
                    lanes,
                    lanes && !one_by_one && !downsampling,
                    lanes && downsampling
                ],
                "{what}: passes without barriers"
            );
            assert_close(&y.to_vec().unwrap(), ye, RTOL, ATOL, &format!("{what}: y"));
            let gx = gx.to_vec().unwrap();
            assert_close(&gx, gxe, RTOL, ATOL, &format!("{what}: gx"));
            assert_close(
                &gw.to_vec().unwrap(),
                gwe,
                RTOL,
                1e-4,
                &format!("{what}: gw"),
            );
            // The sum so far plus gx, in axpy's order: the same bits as adding after.
            let after: Vec<f32> = sumv.iter().zip(&gx).map(|(s, g)| s + 1.0 * g).collect();
            let same = added
                .iter()
                .zip(&after)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{what}: the input gradient added to the sum so far");
            // Inference's conv block: the batch norm, a residual and a ReLU in the GEMM's
            // stores, with the separate kernels' bits (the same sums, then normalize and
            // add_relu in their order).
            let bnv = random_bn(c.w[0], seed + 5);
            let bn_t = channel_tensors(&gpu, &bnv);
            let bn = eval_bn(&bn_t, 1e-5);
            let rv = random_vec(ye.len(), seed + 6);
            let r = Tensor::from_slice(&gpu, &ys, &rv).unwrap();
            gpu.start_profiling().unwrap();
            let fused = ops::conv2d_bn_eval(&x, &w, c.stride, c.pad, &bn, Some(&r), true);
            let fused = fused.unwrap().to_vec().unwrap();
            let kernels = gpu.finish_profiling().unwrap();
            let ran = kernels.iter().any(|t| t.entry == "gemm_lanes_planes_bn");
            assert_eq!(ran, lanes, "{what}: inference's batch norm in the GEMM");
            let apart = ops::conv2d_bn_eval_unfused(&x, &w, c.stride, c.pad, &bn, Some(&r), true);
            let apart = apart.unwrap().to_vec().unwrap();
            let bn_ref = [&bnv[0][..], &bnv[1][..], &bnv[2][..], &bnv[3][..]];
            let residual = Some(&rv[..]);
            let (expected, _) = reference::conv2d_bn_eval(
                xv, c.x, wv, c.w, c.stride, c.pad, bn_ref, 1e-5, residual, true,
            );
            assert_close(&fused, &expected, RTOL, 2e-4, &format!("{what}: conv + bn"));
            if lanes {
                let same = fused
                    .iter()
                    .zip(&apart)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{what}: conv + bn against the separate kernels");
            }
            // Where the device has 64-bit integers (lavapipe), the GEMMs read A and B 32 bytes
            // at a time where the depth is a multiple of 8 (the forward passes' C R S of 16, 200
            // and 216, the input gradients' 16 and 40 output channels, some chunks' pixels; B's
            // rows there only where the columns are a multiple of 8 too): the same bits as with
            // 16-byte reads.
            let wide = wide_reads_expected(&gpu);
            assert_eq!(gpu.conv_wide_reads(), wide, "{}", gpu.info());
            if lanes && wide {
                let passes = || {
                    let b = c.bias.then_some(&bt);
                    [
                        ops::conv2d(&x, &w, b, c.stride, c.pad),
                        ops::conv2d_backward_input(&gy, &w, c.x, c.stride, c.pad),
                        ops::conv2d_backward_weight(&x, &gy, c.w, c.stride, c.pad),
                        ops::conv2d_bn_eval(&x, &w, c.stride, c.pad, &bn, Some(&r), true),
                    ]
                    .map(|t| bits(&t.unwrap()))
                };
                let wide = passes();
                gpu.set_conv_wide_reads(false).unwrap();
                let narrow = passes();
                gpu.set_conv_wide_reads(true).unwrap();
                assert!(wide == narrow, "{what}: 32-byte reads change the bits");
            }
        }
    }
}

#[test]
fn autotune_times_the_gemms_without_barriers() {
    // A device of its own: the test turns tuning on. Where the GEMMs without barriers run
    // (lavapipe), tuning times them beside the tiles for each direct pass they take (not a 1x1
    // input gradient, which stays tiled), as the untuned plan's choice; a tuned pass then runs
    // what tuning chose: their kernels and bits where it kept them, the chosen tile's where a
    // tile was the margin faster. Which one wins is the adapter's timing, not asserted here.
    let gpu = new_gpu();
    gpu.set_conv_algo(ConvAlgo::Direct);
    let lanes = gemms_without_barriers_expected(&gpu);
    let cases = [
        case([2, 12, 9, 9], 20, 3, 3, 2, 1, false),
        case([2, 16, 8, 8], 8, 1, 1, 2, 0, false),
    ];
    let passes = [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad];
    // The kernels that only the GEMMs without barriers run in each pass.
    let lanes_entry: [&[&str]; 3] = [
        &["gemm_lanes_planes"],
        &["col2im", "col2im_s2"],
        &["gemm_lanes_nt"],
    ];
    for (i, c) in cases.iter().enumerate() {
        let seed = 2300 + 10 * i as u64;
        let what = format!("{c:?}");
        let xv = random_vec(c.x.iter().product(), seed);
        let wv = random_vec(c.w.iter().product(), seed + 1);
        let x = Tensor::from_slice(&gpu, &c.x, &xv).unwrap();
        let w = Tensor::from_slice(&gpu, &c.w, &wv).unwrap();
        let (_, ys) = reference::conv2d(&xv, c.x, &wv, c.w, None, c.stride, c.pad);
        let gy = Tensor::from_slice(&gpu, &ys, &random_vec(ys.iter().product(), seed + 2));
        let gy = gy.unwrap();
        // Each pass's result and whether it ran the GEMMs without barriers; None: the plan's
        // tile, else this one forced.
        let run = |tile: [Option<ConvTile>; 3]| {
            gpu.start_profiling().unwrap();
            let y = ops::conv2d_tiled(&x, &w, None, c.stride, c.pad, tile[0]).unwrap();
            let gx = ops::conv2d_backward_input_tiled(&gy, &w, c.x, c.stride, c.pad, tile[1]);
            let gw = ops::conv2d_backward_weight_tiled(&x, &gy, c.w, c.stride, c.pad, tile[2]);
            let out = [y, gx.unwrap(), gw.unwrap()].map(|t| t.to_vec().unwrap());
            let kernels = gpu.finish_profiling().unwrap();
            let ran = lanes_entry.map(|e| kernels.iter().any(|t| e.contains(&t.entry)));
            (out, ran)
        };
        let (untuned, ran) = run([None; 3]);
        let timed = passes.map(|p| lanes && !(p == ConvPass::InputGrad && c.w[2] * c.w[3] == 1));
        assert_eq!(ran, timed, "{what}: the untuned plan");
        // The first run tunes (its trials run every candidate), the second runs the choices.
        gpu.set_conv_autotune(true).unwrap();
        run([None; 3]);
        let (tuned_out, ran) = run([None; 3]);
        gpu.set_conv_autotune(false).unwrap();
        let tuned = gpu.tuned_convs();
        for (p, pass) in passes.into_iter().enumerate() {
            let what = format!("{what} {pass:?}");
            let t = tuned
                .iter()
                .find(|t| t.key.pass == pass && t.key.x == c.x)
                .unwrap_or_else(|| panic!("{what}: not tuned: {tuned:#?}"));
            assert_eq!(t.lanes_millis.is_some(), timed[p], "{what}: {t:?}");
            assert!(t.lanes_millis.is_none_or(|ms| ms > 0.0), "{what}: {t:?}");
            assert!(!t.lanes || timed[p], "{what}: {t:?}");
            let moved = if timed[p] {
                !t.lanes
            } else {
                t.tile != t.model
            };
            assert_eq!(t.direct_moved(), moved, "{what}: {t:?}");
            assert_eq!(ran[p], t.lanes, "{what}: what ran once tuned");
            // Their bits where kept, else those of the chosen tile forced.
            let expected = if t.lanes {
                untuned[p].clone()
            } else {
                let GemmTile::F32(tile) = t.tile else {
                    panic!("{what}: an f16 tile tuned under ConvPrecision::F32: {t:?}");
                };
                let mut forced = [None; 3];
                forced[p] = Some(tile);
                run(forced).0[p].clone()
            };
            let same = tuned_out[p]
                .iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{what}: the tuned pass's bits");
        }
    }
}
