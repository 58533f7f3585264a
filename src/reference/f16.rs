//! Twins of the f16 conv engine's operand handling (`shaders/conv_mma.wgsl`) and of
//! `reduce.wgsl`'s `f16_scale`: the f16 engine's results equal the f32 reference convolutions
//! of operands passed through [`round_f16`] (weights and activations) or [`round_f16_scaled`]
//! (gradients), up to the order of the f32 sums.

/// `v` rounded to the nearest f16 (ties to even), returned as f32: 11 significant bits for
/// normal values, fewer below 2^-14 (subnormals), 0 below 2^-25; clamped to +-65504 first.
pub fn round_f16(v: f32) -> f32 {
    let v = v.clamp(-65504.0, 65504.0);
    let bits = v.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32 - 127;
    // Mantissa bits f16 keeps: 10 for normals (exp >= -14), one fewer per binade below.
    let keep = if exp >= -14 { 10 } else { 10 - (-14 - exp) };
    if keep < -1 || v == 0.0 {
        return 0.0f32.copysign(v);
    }
    if keep == -1 {
        // Between 2^-25 and 2^-24: rounds to the smallest subnormal or to zero.
        let tiny = 2f32.powi(-24);
        return if v.abs() > 2f32.powi(-25) {
            tiny.copysign(v)
        } else {
            0.0f32.copysign(v)
        };
    }
    let drop = 23 - keep as u32;
    let half = 1u32 << (drop - 1);
    let rest = bits & ((1u32 << drop) - 1);
    let mut kept = bits >> drop;
    if rest > half || (rest == half && kept & 1 == 1) {
        kept += 1;
    }
    f32::from_bits(kept << drop)
}

/// The power of two `s` with `s * max|x|` in `[2^13, 2^14)`; 1 when `x` is all zeros or its
/// largest magnitude is not finite (`ops::f16_scale`).
pub fn f16_scale(x: &[f32]) -> f32 {
    let m = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if m == 0.0 || !m.is_finite() {
        return 1.0;
    }
    let e = m.log2().floor() as i32;
    2f32.powi((13 - e).clamp(-126, 127))
}

/// `x` as the f16 engine sees a gradient operand: multiplied by [`f16_scale`], rounded to f16,
/// and divided again (exact, the scale being a power of two).
pub fn round_f16_scaled(x: &[f32]) -> Vec<f32> {
    let s = f16_scale(x);
    x.iter().map(|&v| round_f16(v * s) / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_like_ieee_half() {
        assert_eq!(round_f16(1.0), 1.0);
        assert_eq!(round_f16(1.0 + 2f32.powi(-11)), 1.0); // tie, to even
        assert_eq!(round_f16(1.0 + 3.0 * 2f32.powi(-11)), 1.0 + 2f32.powi(-9)); // tie, to even
        assert_eq!(round_f16(1.0 + 2f32.powi(-10)), 1.0 + 2f32.powi(-10));
        assert_eq!(round_f16(-3.0e-8), -2f32.powi(-24)); // subnormal
        assert_eq!(round_f16(1e-9), 0.0);
        assert_eq!(round_f16(1e6), 65504.0);
        assert_eq!(f16_scale(&[1.0, -0.5]), 8192.0);
        assert_eq!(f16_scale(&[-40000.0]), 0.25);
    }
}
