// F(4x4, 3x3)'s transforms that move vec4s, for CPU adapters with subgroup lanes (compiled
// after winograd.wgsl, whose math, work items and helpers they share, and after a lanes file):
//   wino4_input_quads, wino4_gy_quads: wino4_input and wino4_gy, V and GY stored as vec4s
//   wino4_output_quads:                wino4_output (plain or ACCUMULATE), M loaded as vec4s
//   wino4_output_bn_quads:             wino4_output_bn (inference's batch norm, residual and
//                                      ReLU), M loaded as vec4s
//   wino4_input_rows, wino4_gy_rows, wino4_output_rows, wino4_output_bn_rows: the same on
//                      planes whose width is a multiple of 4, where a tile's row of x, gy or y
//                      (4 values from column 4 tw) is one aligned vec4 as well (and of the
//                      residual that wino4_output_bn_rows adds)
// The same values as winograd.wgsl's kernels, bit for bit: only the memory accesses differ.
//
// Why: on lavapipe every load or store whose address differs between lanes is a loop over the
// SIMD lanes, each lane a few instructions of its own on top of each value it moves. A work
// item's 36 transformed values lie in 36 planes, one scalar apart from its neighbour's: 36
// scalar accesses. The 4 work items of a quad of lanes (consecutive tiles of one channel)
// hold 4 consecutive values of each plane. Lane j of the quad moves positions 4 g + j
// (g = 0..8) of all four as one vec4 each, and lanes_quad_transpose exchanges the values
// between the quad's lanes, a fixed permutation of the SIMD lanes: 9 vector accesses instead
// of 36 scalar ones (docs/speed.md, "Winograd's transforms by quads of lanes").
//
// Dispatch: as winograd.wgsl's, 256 work items per workgroup, where the host has verified that
// subgroups are runs of consecutive invocations, of 8 or 16 lanes (src/gpu/lanes.rs; on
// SwiftShader's 4 these kernels ran slower than the plain ones), and the chunk's tiles are a
// multiple of 4 (so every quad lies in one channel, whole quads drop out at `count`, and each
// plane's quads are whole vec4s).
//
// Bindings (group 0): 0 = Params (uniform);
//   wino4_input_quads, wino4_gy_quads: 1 = x or gy (read), 9 = V or GY (write, as vec4s)
//   wino4_input_rows: 1 and 10 = x (read, as scalars and as vec4s), 9 = V
//   wino4_gy_rows: 10 = gy (read, as vec4s), 9 = GY
//   wino4_output_quads: 10 = M (read, as vec4s), 2 = y or gx (write), 3 = bias [K] (read; any
//                       buffer when has_bias == 0)
//   wino4_output_rows: 10 = M, 9 = y or gx (write, as vec4s), 3 = bias
//   wino4_output_bn_quads: 10 = M, 2 = y (write), 4-7 = gamma, beta, running mean, running
//                       var [K] (read), 8 = the residual (read with RESIDUAL; any buffer but y
//                       otherwise), as wino4_output_bn's
//   wino4_output_bn_rows: 10 = M, 9 = y (write, as vec4s), 4-7 as there, 11 = the residual
//                       (read as vec4s with RESIDUAL; any buffer but y otherwise)

@group(0) @binding(9) var<storage, read_write> dst4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read> src4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> bn_res4: array<vec4<f32>>;

// Work item i's 36 values t (position 6 c + r in t[r][c], store_columns6's order) into dst4's
// 36 planes of `plane` values each, by quads: lane j of the quad stores positions 4 g + j.
fn store_quads36(t: array<Vec6, 6>, plane: u32, i: u32, lane: u32) {
    let w = array<vec4<f32>, 9>(
        vec4<f32>(t[0][0], t[1][0], t[2][0], t[3][0]),
        vec4<f32>(t[4][0], t[5][0], t[0][1], t[1][1]),
        vec4<f32>(t[2][1], t[3][1], t[4][1], t[5][1]),
        vec4<f32>(t[0][2], t[1][2], t[2][2], t[3][2]),
        vec4<f32>(t[4][2], t[5][2], t[0][3], t[1][3]),
        vec4<f32>(t[2][3], t[3][3], t[4][3], t[5][3]),
        vec4<f32>(t[0][4], t[1][4], t[2][4], t[3][4]),
        vec4<f32>(t[4][4], t[5][4], t[0][5], t[1][5]),
        vec4<f32>(t[2][5], t[3][5], t[4][5], t[5][5]),
    );
    let quads = plane / 4u;
    let at = (i & 3u) * quads + i / 4u;
    dst4[at] = lanes_quad_transpose(w[0], lane);
    dst4[at + 4u * quads] = lanes_quad_transpose(w[1], lane);
    dst4[at + 8u * quads] = lanes_quad_transpose(w[2], lane);
    dst4[at + 12u * quads] = lanes_quad_transpose(w[3], lane);
    dst4[at + 16u * quads] = lanes_quad_transpose(w[4], lane);
    dst4[at + 20u * quads] = lanes_quad_transpose(w[5], lane);
    dst4[at + 24u * quads] = lanes_quad_transpose(w[6], lane);
    dst4[at + 28u * quads] = lanes_quad_transpose(w[7], lane);
    dst4[at + 32u * quads] = lanes_quad_transpose(w[8], lane);
}

// Work item i's 6x6 values of src4's 36 planes of `plane` values each (M; position 6 r + c in
// the result's [r][c], load_tile6's order), by quads: lane j of the quad loads positions
// 4 g + j of all four items.
fn load_quads36(plane: u32, i: u32, lane: u32) -> array<Vec6, 6> {
    let quads = plane / 4u;
    let at = (i & 3u) * quads + i / 4u;
    var w: array<vec4<f32>, 9>;
    w[0] = lanes_quad_transpose(src4[at], lane);
    w[1] = lanes_quad_transpose(src4[at + 4u * quads], lane);
    w[2] = lanes_quad_transpose(src4[at + 8u * quads], lane);
    w[3] = lanes_quad_transpose(src4[at + 12u * quads], lane);
    w[4] = lanes_quad_transpose(src4[at + 16u * quads], lane);
    w[5] = lanes_quad_transpose(src4[at + 20u * quads], lane);
    w[6] = lanes_quad_transpose(src4[at + 24u * quads], lane);
    w[7] = lanes_quad_transpose(src4[at + 28u * quads], lane);
    w[8] = lanes_quad_transpose(src4[at + 32u * quads], lane);
    return array<Vec6, 6>(
        Vec6(w[0].x, w[0].y, w[0].z, w[0].w, w[1].x, w[1].y),
        Vec6(w[1].z, w[1].w, w[2].x, w[2].y, w[2].z, w[2].w),
        Vec6(w[3].x, w[3].y, w[3].z, w[3].w, w[4].x, w[4].y),
        Vec6(w[4].z, w[4].w, w[5].x, w[5].y, w[5].z, w[5].w),
        Vec6(w[6].x, w[6].y, w[6].z, w[6].w, w[7].x, w[7].y),
        Vec6(w[7].z, w[7].w, w[8].x, w[8].y, w[8].z, w[8].w),
    );
}

@compute @workgroup_size(256)
fn wino4_input_quads(@builtin(workgroup_id) wg: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32,
                     @builtin(subgroup_invocation_id) lane: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    store_quads36(input_tile6(i), p.channels * p.tiles, i, lane);
}

@compute @workgroup_size(256)
fn wino4_gy_quads(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32,
                  @builtin(subgroup_invocation_id) lane: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    store_quads36(gy_tile6(i), p.channels * p.tiles, i, lane);
}

@compute @workgroup_size(256)
fn wino4_output_quads(@builtin(workgroup_id) wg: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32,
                      @builtin(subgroup_invocation_id) lane: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    put_tile4(output_tile4_quads(i, lane));
}

// Work item i's output tile (output_tile4), its values of M loaded by quads.
fn output_tile4_quads(i: u32, lane: u32) -> OutTile4 {
    return output_tile4_of(item_of(i), load_quads36(p.channels * p.tiles, i, lane));
}

// Row r of output tile t as a vec4 (the row's 4 columns).
fn tile_row4(t: OutTile4, r: u32) -> vec4<f32> {
    return vec4<f32>(t.y[0][r], t.y[1][r], t.y[2][r], t.y[3][r]);
}

// Row y of a 6x6 input patch of tile column tw (patch_row6 from column 4 tw - 1) on planes
// whose width is a multiple of 4: the middle 4 values one aligned vec4 of x (binding 10),
// within the plane wherever the row is; the two at the ends scalars. Zeros outside the plane.
fn patch_row6_quad(plane: u32, y: i32, tw: u32) -> Vec6 {
    let ok = (y >= 0) & (y < i32(p.height));
    let x = 4u * tw;
    let at = (plane + u32(max(y, 0)) * p.width + x) / 4u;
    let m = select(vec4<f32>(0.0), src4[select(plane / 4u, at, ok)], ok);
    return Vec6(plane_at(plane, y, i32(x) - 1), m.x, m.y, m.z, m.w, plane_at(plane, y, i32(x) + 4));
}

@compute @workgroup_size(256)
fn wino4_input_rows(@builtin(workgroup_id) wg: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32,
                    @builtin(subgroup_invocation_id) lane: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let t = item_of(i);
    let plane = plane_of(t);
    let y0 = 4 * i32(t.th) - 1;
    let d = array<Vec6, 6>(
        patch_row6_quad(plane, y0, t.tw),
        patch_row6_quad(plane, y0 + 1, t.tw),
        patch_row6_quad(plane, y0 + 2, t.tw),
        patch_row6_quad(plane, y0 + 3, t.tw),
        patch_row6_quad(plane, y0 + 4, t.tw),
        patch_row6_quad(plane, y0 + 5, t.tw),
    );
    store_quads36(input_transform6(d), p.channels * p.tiles, i, lane);
}

// Row y of gy's 4x4 tile of tile column tw (gy_row4 from column 4 tw) on planes whose width is
// a multiple of 4: one aligned vec4 of gy (binding 10), zeros below the plane.
fn gy_row4_quad(plane: u32, y: i32, tw: u32) -> Vec4 {
    let ok = y < i32(p.height);
    let at = (plane + u32(y) * p.width + 4u * tw) / 4u;
    let m = select(vec4<f32>(0.0), src4[select(plane / 4u, at, ok)], ok);
    return Vec4(m.x, m.y, m.z, m.w);
}

@compute @workgroup_size(256)
fn wino4_gy_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32,
                 @builtin(subgroup_invocation_id) lane: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let t = item_of(i);
    let plane = plane_of(t);
    let oy = 4 * i32(t.th);
    let dy = array<Vec4, 4>(
        gy_row4_quad(plane, oy, t.tw),
        gy_row4_quad(plane, oy + 1, t.tw),
        gy_row4_quad(plane, oy + 2, t.tw),
        gy_row4_quad(plane, oy + 3, t.tw),
    );
    store_quads36(gy_transform6(dy), p.channels * p.tiles, i, lane);
}

// Row r of output tile t, if the output has it, as y's vec4 at `at` (binding 9): plus the
// bias b, or (ACCUMULATE) added to what y holds, as put does each value.
fn put_row4(t: OutTile4, r: u32, at: u32, b: f32) {
    if (r >= t.rows) { return; }
    let v = tile_row4(t, r);
    if (ACCUMULATE) {
        dst4[at] = dst4[at] + v;
    } else {
        dst4[at] = v + b;
    }
}

@compute @workgroup_size(256)
fn wino4_output_rows(@builtin(workgroup_id) wg: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32,
                     @builtin(subgroup_invocation_id) lane: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let t = output_tile4_quads(i, lane);
    var b = 0.0;
    if (p.has_bias != 0u) { b = bias[t.k]; }
    let at = t.at / 4u;
    let row = p.width / 4u;
    put_row4(t, 0u, at, b);
    put_row4(t, 1u, at + row, b);
    put_row4(t, 2u, at + 2u * row, b);
    put_row4(t, 3u, at + 3u * row, b);
}

@compute @workgroup_size(256)
fn wino4_output_bn_quads(@builtin(workgroup_id) wg: vec3<u32>,
                         @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32,
                         @builtin(subgroup_invocation_id) lane: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    put_tile4_bn(output_tile4_quads(i, lane));
}

// Row r of output tile t, if the output has it, as y's vec4 at `at` (binding 9) through
// bn_store's epilogue (channel record ch), value by value as there.
fn put_row4_bn(t: OutTile4, ch: BnChannel, r: u32, at: u32) {
    if (r >= t.rows) { return; }
    var y = bn_normalize4(ch, tile_row4(t, r));
    if (RESIDUAL) { y = y + bn_res4[at]; }
    if (RELU) { y = relu_value4(y); }
    dst4[at] = y;
}

@compute @workgroup_size(256)
fn wino4_output_bn_rows(@builtin(workgroup_id) wg: vec3<u32>,
                        @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32,
                        @builtin(subgroup_invocation_id) lane: u32) {
    let i = linear_index(wg, nwg, lid);
    if (i >= p.count) { return; }
    let t = output_tile4_quads(i, lane);
    let ch = bn_channel(t.k);
    let at = t.at / 4u;
    let row = p.width / 4u;
    put_row4_bn(t, ch, 0u, at);
    put_row4_bn(t, ch, 1u, at + row);
    put_row4_bn(t, ch, 2u, at + 2u * row);
    put_row4_bn(t, ch, 3u, at + 3u * row);
}
