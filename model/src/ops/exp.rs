//! An `exp` for f32 that the compiler vectorises, for the CPU softmax and SiLU loops.
//!
//! `f32::exp` is a call into libm per element, which keeps those loops scalar; on the vision
//! tower's softmax and SiLU that is a large share of a pass. This is the classic range
//! reduction `exp(x) = 2^n * exp(r)` with `n = round(x / ln 2)` and `|r| <= ln 2 / 2`, a
//! degree-6 polynomial for `exp(r)` (Cephes' coefficients) and `2^n` built in the exponent
//! bits. Only float adds, multiplies and integer bit operations: no branches, no calls. Its
//! relative error is within a few ulp of `f32::exp` over the clamped range (tested).

/// 1.5 * 2^23: adding it rounds a float of magnitude below 2^22 to the nearest integer, which
/// then sits in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `e^x`, clamped to `[-87.0, 88.0]` first (so `2^n` stays a normal float): below, the result
/// is about 1.6e-38 instead of smaller; nothing here needs more.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let biased = x * std::f32::consts::LOG2_E + ROUND_MAGIC;
    let n = biased - ROUND_MAGIC;
    // ln 2 split in two (Cephes C1 + C2) so that n * ln 2 is subtracted without rounding loss.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let poly = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let exp_r = poly * r * r + r + 1.0;
    // The integer n is in biased's low mantissa bits; 2^n has exponent field n + 127.
    let n_int = biased.to_bits().wrapping_sub(ROUND_MAGIC.to_bits()) as i32;
    let two_n = f32::from_bits(((n_int + 127) as u32) << 23);
    exp_r * two_n
}

/// Lanes of the accumulators below: enough independent chains for the compiler to vectorise
/// the reductions (float sums are not reassociated otherwise).
const LANES: usize = 16;

/// Softmax of `row` in place: `exp(x - max) / sum`.
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in maxes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&maxes)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, x) in sums.iter_mut().zip(chunk.iter_mut()) {
            *x = exp_f32(*x - max);
            *s += *x;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp_f32(*x - max);
        sum += *x;
    }
    let inverse = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inverse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_in_place_matches_the_plain_formula() {
        for len in [1usize, 7, 16, 64, 129] {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.7)
                .collect();
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f64> = row.iter().map(|&x| f64::from(x - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            let mut got = row.clone();
            softmax_in_place(&mut got);
            for (g, e) in got.iter().zip(&exps) {
                assert!(
                    (f64::from(*g) - e / sum).abs() < 1e-6,
                    "len {len}: {g} vs {}",
                    e / sum
                );
            }
        }
    }

    #[test]
    fn matches_libm_within_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let (got, want) = (f64::from(exp_f32(x)), f64::from(x).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 4e-7, "worst relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn extremes_stay_finite_and_ordered() {
        assert!(exp_f32(f32::NEG_INFINITY) > 0.0 && exp_f32(f32::NEG_INFINITY) < 1e-37);
        assert!(exp_f32(1e9).is_finite() && exp_f32(1e9) > 1e38);
        assert!(exp_f32(-100.0) <= exp_f32(-86.0));
    }
}
