//! Pure-Rust image helpers shared by the model's preprocessor and the media code: Qwen2-VL's
//! `smart_resize` and a bicubic, antialiased resize of interleaved RGB `u8` buffers that
//! reproduces torchvision's `resize(..., BICUBIC, antialias=True)` on `uint8` tensors bit for bit:
//! the same PIL-style separable filter (a = -0.5), int16 fixed-point weights, horizontal pass
//! first with rounding to `u8` in between.

use crate::{Error, Result};

/// An interleaved RGB image, `height` rows of `width * 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes, row-major, RGB.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Wraps a buffer, checking its length.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 || data.len() != width * height * 3 {
            return Err(Error::Input(format!(
                "rgb buffer of {} bytes does not hold {width}x{height} pixels",
                data.len()
            )));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Resizes with [`resize_rgb_bicubic`]; returns a clone when the size is unchanged.
    pub fn resized(&self, width: usize, height: usize) -> Result<Self> {
        if width == self.width && height == self.height {
            return Ok(self.clone());
        }
        let data = resize_rgb_bicubic(&self.data, self.width, self.height, width, height)?;
        Ok(Self {
            width,
            height,
            data,
        })
    }
}

/// Python's `round()` for non-negative values: halves go to the even neighbour.
fn round_half_even(x: f64) -> f64 {
    let floor = x.floor();
    let diff = x - floor;
    let round_up = diff > 0.5 || (diff == 0.5 && floor % 2.0 != 0.0);
    if round_up { floor + 1.0 } else { floor }
}

/// Qwen2-VL's `smart_resize`: the size closest to `(height, width)` whose sides are multiples of
/// `factor` (28 for Qwen2.5-VL) and whose area lies within `[min_pixels, max_pixels]`, keeping
/// the aspect ratio. Rounding follows Python (`round` half to even), as the reference does.
/// Returns `(height, width)`; fails when the aspect ratio exceeds 200.
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    if height == 0 || width == 0 || factor == 0 {
        return Err(Error::Input(format!(
            "cannot resize a {height}x{width} image with factor {factor}"
        )));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(Error::Input(format!(
            "absolute aspect ratio must be smaller than 200, got {}",
            h.max(w) / h.min(w)
        )));
    }
    let mut h_bar = round_half_even(h / f) * f;
    let mut w_bar = round_half_even(w / f) * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    if h_bar < f || w_bar < f {
        return Err(Error::Input(format!(
            "{height}x{width} resizes to an empty image with min_pixels {min_pixels}"
        )));
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// Keys cubic convolution with `a = -0.5`, the kernel of PIL's and torchvision's antialiased
/// bicubic resampling.
fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For every output index: first input index and fixed-point weights of its taps, plus the
/// number of fractional bits. Weights are computed in f64, normalised, then scaled to i16 with
/// the largest precision that keeps the biggest weight below 2^15 (torchvision/PIL `uint8`).
fn resample_taps(input: usize, output: usize) -> (Vec<(usize, Vec<i32>)>, u32) {
    let scale = input as f64 / output as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let inv_scale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let float_taps: Vec<(usize, Vec<f64>)> = (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let mut weights: Vec<f64> = (xmin..xmax)
                .map(|j| cubic((j as f64 - center + 0.5) * inv_scale))
                .collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                for w in &mut weights {
                    *w /= total;
                }
            }
            (xmin, weights)
        })
        .collect();
    let max_weight = float_taps
        .iter()
        .flat_map(|(_, w)| w.iter().copied())
        .fold(0.0f64, f64::max);
    let mut precision = 0u32;
    while precision < 22
        && ((0.5 + max_weight * f64::from(1u32 << (precision + 1))) as i32) < (1 << 15)
    {
        precision += 1;
    }
    let taps = float_taps
        .into_iter()
        .map(|(start, weights)| {
            let fixed = weights
                .iter()
                .map(|w| {
                    let v = w * f64::from(1u32 << precision);
                    (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i16 as i32
                })
                .collect();
            (start, fixed)
        })
        .collect();
    (taps, precision)
}

/// Rounds a fixed-point accumulator back to `u8`.
fn from_fixed(acc: i32, precision: u32) -> u8 {
    ((acc + (1 << precision >> 1)) >> precision).clamp(0, 255) as u8
}

/// Bicubic (a = -0.5), antialiased resize of an interleaved RGB `u8` image, separable:
/// horizontal pass first, rounded to `u8`, then the vertical pass, with torchvision's `uint8`
/// fixed-point arithmetic (outputs equal torchvision's). `src` holds `src_height` rows of `src_width * 3` bytes.
pub fn resize_rgb_bicubic(
    src: &[u8],
    src_width: usize,
    src_height: usize,
    dst_width: usize,
    dst_height: usize,
) -> Result<Vec<u8>> {
    if src_width == 0 || src_height == 0 || dst_width == 0 || dst_height == 0 {
        return Err(Error::Input(format!(
            "cannot resize {src_width}x{src_height} to {dst_width}x{dst_height}"
        )));
    }
    if src.len() != src_width * src_height * 3 {
        return Err(Error::Input(format!(
            "rgb buffer of {} bytes does not hold {src_width}x{src_height} pixels",
            src.len()
        )));
    }
    let horizontal = if dst_width == src_width {
        src.to_vec()
    } else {
        let (taps, precision) = resample_taps(src_width, dst_width);
        let mut out = vec![0u8; src_height * dst_width * 3];
        for y in 0..src_height {
            let row = &src[y * src_width * 3..(y + 1) * src_width * 3];
            for (x, (start, weights)) in taps.iter().enumerate() {
                for c in 0..3 {
                    let acc: i32 = weights
                        .iter()
                        .enumerate()
                        .map(|(k, w)| w * i32::from(row[(start + k) * 3 + c]))
                        .sum();
                    out[(y * dst_width + x) * 3 + c] = from_fixed(acc, precision);
                }
            }
        }
        out
    };
    if dst_height == src_height {
        return Ok(horizontal);
    }
    let (taps, precision) = resample_taps(src_height, dst_height);
    let stride = dst_width * 3;
    let mut out = vec![0u8; dst_height * stride];
    for (y, (start, weights)) in taps.iter().enumerate() {
        for i in 0..stride {
            let acc: i32 = weights
                .iter()
                .enumerate()
                .map(|(k, w)| w * i32::from(horizontal[(start + k) * stride + i]))
                .sum();
            out[y * stride + i] = from_fixed(acc, precision);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding_ties_go_to_even() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(1.79), 2.0);
        // 70 / 28 = 2.5: Rust's f64::round would give 84 here.
        assert_eq!(
            smart_resize(50, 70, 28, 3136, 12_845_056).unwrap(),
            (56, 56)
        );
    }

    #[test]
    fn extreme_aspect_ratio_is_an_error() {
        assert!(smart_resize(10, 2500, 28, 3136, 12_845_056).is_err());
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![77u8; 40 * 30 * 3];
        let out = resize_rgb_bicubic(&src, 40, 30, 17, 53).unwrap();
        assert!(out.iter().all(|&v| v == 77));
    }

    #[test]
    fn wrong_buffer_length_is_an_error() {
        assert!(resize_rgb_bicubic(&[0u8; 10], 2, 2, 4, 4).is_err());
        assert!(RgbImage::new(2, 2, vec![0; 11]).is_err());
    }
}
