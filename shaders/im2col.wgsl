// The copies around the direct convolutions' GEMMs on CPU adapters (src/ops/conv/lanes.rs,
// whose GEMMs are gemm_lanes.wgsl's, without workgroup memory or barriers):
//   im2col:    col[(c R + r) S + s][j] = x[first + j / P, c, oy stride + r - pad,
//              ox stride + s - pad] for pixel j % P = oy OW + ox of the chunk's image j / P
//              (P = OW OH), 0 outside x and for the columns j >= images P that pad the rows to
//              `cols`, a multiple of 4. With R = S = stride = 1 and pad = 0 it lays gy
//              [N, K, P] out as the rows gy[., k, .] (the weight gradient's operand).
//   col2im:    gx[first + n, c, iy, ix] = sum over the taps (r, s) that reach it of
//              colg[(c R + r) S + s][n P + oy OW + ox], iy = oy stride + r - pad (the input
//              gradient's columns back into planes, a gather: no two threads write one value);
//              with the pipeline constant ACCUMULATE, gx += that instead (the gradient so far
//              plus this one, in the order of elementwise.wgsl's axpy: the same bits)
//   col2im_s2: col2im for 3x3 kernels of stride 2 and padding 1, by 2x2 blocks of pixels (see
//              there), with col2im's sums and bits
//   transpose: wt[crs][k] = w[k][crs] (the input gradient's operand A, W transposed)
//
// Dispatch: im2col one thread per 4 consecutive columns of a row, grid (ceil(cols / 256),
// C R S); col2im one thread per pixel of gx's planes, grid (ceil(H W / 64), images C);
// col2im_s2 one thread per 2x2 block of an image's planes, grid (ceil(C ceil(H / 2)
// ceil(W / 2) / 64), images); transpose one thread per element of w, grid (ceil(C R S / 64),
// K); 64 threads per workgroup. A CPU's lanes divide integers one lane at a time: col2im's
// divisors are pipeline constants (STRIDE, KH, KW: shifts and multiplies), the others'
// quotients go through f32 (common.wgsl's divide), whose division the lanes do at once.
//
// Bindings (group 0): 0 = Params (uniform); 1 = the source (read: x, gy, colg or w); 2 = the
// destination of col2im(_s2) and transpose (write: gx or wt); 3 = im2col's (write: col, as
// vec4s).

struct Params {
    images: u32,    // images of the chunk
    channels: u32,  // C (im2col, col2im); for transpose, K
    height: u32,    // the input plane (im2col's source, col2im's destination)
    width: u32,
    out_h: u32,     // the output plane
    out_w: u32,
    kh: u32,        // R, S
    kw: u32,
    stride: u32,
    pad: u32,
    first: u32,     // the chunk's first image in x or gx
    cols: u32,      // col's row length: images P rounded up to a multiple of 4
    crs: u32,       // transpose: C R S
    p0: u32,
    p1: u32,
    p2: u32,
}

override STRIDE: u32 = 1u;
override ACCUMULATE: bool = false;
override KH: u32 = 1u;
override KW: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst4: array<vec4<f32>>;

// src[at] where `ok`, else 0.0: every lane loads (index 0 where not ok), then keeps 0 there.
fn load_or_zero(ok: bool, at: u32) -> f32 {
    return select(0.0, src[select(0u, at, ok)], ok);
}

// gx[at] = sum, or with ACCUMULATE gx[at] + sum (the gradient so far plus this one).
fn put_gx(at: u32, sum: f32) {
    if (ACCUMULATE) {
        dst[at] = dst[at] + sum;
    } else {
        dst[at] = sum;
    }
}

@compute @workgroup_size(64)
fn im2col(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let quad = wg.x * 64u + li;
    if (4u * quad >= p.cols) { return; }
    let row = wg.y;
    let taps = p.kh * p.kw;
    let c = divide(row, taps);
    let r = divide(row - c * taps, p.kw);
    let s = row - c * taps - r * p.kw;
    let plane = p.out_h * p.out_w;
    let valid = p.images * plane;
    // The first column's image and pixel; the next three step along the output's rows.
    let j0 = 4u * quad;
    var n = divide(j0, plane);
    var oy = divide(j0 - n * plane, p.out_w);
    var ox = j0 - n * plane - oy * p.out_w;
    var v = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
        // Signed: the padding reaches before the plane's first row and column.
        let iy = i32(oy * p.stride + r) - i32(p.pad);
        let ix = i32(ox * p.stride + s) - i32(p.pad);
        let inside = j0 + e < valid && iy >= 0 && iy < i32(p.height) && ix >= 0
            && ix < i32(p.width);
        let at = ((p.first + n) * p.channels + c) * p.height * p.width
            + u32(iy) * p.width + u32(ix);
        // Where the column reads the padding, `at` is out of range: index 0 is loaded instead.
        v[e] = load_or_zero(inside, at);
        ox += 1u;
        if (ox == p.out_w) {
            ox = 0u;
            oy += 1u;
            if (oy == p.out_h) {
                oy = 0u;
                n += 1u;
            }
        }
    }
    dst4[row * p.cols / 4u + quad] = v;
}

@compute @workgroup_size(64)
fn col2im(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let pix = wg.x * 64u + li;
    if (pix >= p.height * p.width) { return; }
    let n = divide(wg.y, p.channels);
    let c = wg.y - n * p.channels;
    let iy = divide(pix, p.width);
    let ix = pix - iy * p.width;
    let plane = p.out_h * p.out_w;
    var sum = 0.0;
    for (var r = 0u; r < KH; r++) {
        // oy STRIDE = iy + pad - r, where that is a whole row of the output.
        let ty = i32(iy + p.pad) - i32(r);
        if (ty < 0 || u32(ty) % STRIDE != 0u || u32(ty) / STRIDE >= p.out_h) { continue; }
        let oy = u32(ty) / STRIDE;
        for (var s = 0u; s < KW; s++) {
            let tx = i32(ix + p.pad) - i32(s);
            if (tx < 0 || u32(tx) % STRIDE != 0u || u32(tx) / STRIDE >= p.out_w) { continue; }
            let ox = u32(tx) / STRIDE;
            let row = (c * KH + r) * KW + s;
            sum += src[row * p.cols + n * plane + oy * p.out_w + ox];
        }
    }
    put_gx(((p.first + n) * p.channels + c) * p.height * p.width + pix, sum);
}

// col2im for 3x3 kernels of stride 2 and padding 1 (ResNet's downsampling convs), a 2x2 block
// of gx's pixels per thread: input row 2a gets the output row a through r = 1, row 2a + 1 the
// rows a + 1 (r = 0) and a (r = 2), and likewise the columns. The block's pixels take 1, 2, 2
// and 4 taps, 9 loads in all where col2im's thread loads up to 9 per pixel, each in a branch
// (and on a CPU every load a loop over the lanes, taken or not). Each pixel sums its taps in
// col2im's order (r, then s, ascending) from 0.0; a tap past the output's last row or column
// (odd H or W) loads index 0 and adds 0.0, which leaves the sum's bits as they are (a sum
// started at +0.0 is never -0.0). Grid (ceil(C ceil(H / 2) ceil(W / 2) / 64), images).

// gx's pixel (y, x) of plane `base` (put_gx), none past the plane.
fn col2im_put(base: u32, y: u32, x: u32, sum: f32) {
    if (y >= p.height || x >= p.width) { return; }
    put_gx(base + y * p.width + x, sum);
}

@compute @workgroup_size(64)
fn col2im_s2(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let bw = (p.width + 1u) / 2u;
    let blocks = (p.height + 1u) / 2u * bw;
    // The image's blocks of all channels one after another: small planes (ResNet's 7x7 have 16
    // blocks) leave no lanes idle.
    let i = wg.x * 64u + li;
    if (i >= p.channels * blocks) { return; }
    let n = wg.y;
    let c = divide(i, blocks);
    let block = i - c * blocks;
    let a = divide(block, bw);
    let b = block - a * bw;
    // Output row a and column b always exist (OH = ceil(H / 2)); a + 1 and b + 1 may not.
    let down = a + 1u < p.out_h;
    let right = b + 1u < p.out_w;
    let plane = p.out_h * p.out_w;
    // colg's rows of channel c's taps (r, s) = c 9 + 3 r + s, at output pixel (a, b).
    let r0 = c * 9u * p.cols + n * plane + a * p.out_w + b;
    let tap = p.cols;
    let v11 = src[r0 + 4u * tap];
    let v10_r = load_or_zero(right, r0 + 3u * tap + 1u);
    let v12 = src[r0 + 5u * tap];
    let v01_d = load_or_zero(down, r0 + 1u * tap + p.out_w);
    let v21 = src[r0 + 7u * tap];
    let v00_dr = load_or_zero(down && right, r0 + p.out_w + 1u);
    let v02_d = load_or_zero(down, r0 + 2u * tap + p.out_w);
    let v20_r = load_or_zero(right, r0 + 6u * tap + 1u);
    let v22 = src[r0 + 8u * tap];
    let base = ((p.first + n) * p.channels + c) * p.height * p.width;
    let y = 2u * a;
    let x = 2u * b;
    col2im_put(base, y, x, 0.0 + v11);
    col2im_put(base, y, x + 1u, 0.0 + v10_r + v12);
    col2im_put(base, y + 1u, x, 0.0 + v01_d + v21);
    col2im_put(base, y + 1u, x + 1u, 0.0 + v00_dr + v02_d + v20_r + v22);
}

@compute @workgroup_size(64)
fn transpose(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let crs = wg.x * 64u + li;
    if (crs >= p.crs) { return; }
    let k = wg.y;
    dst[crs * p.channels + k] = src[k * p.crs + crs];
}
