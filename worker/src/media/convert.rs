//! Decoded pictures to upright, tightly packed RGB24: swscale does the pixel format conversion at
//! the decoded size with the stream's own YUV matrix and range (BT.709 for most HD video, full
//! range for many phones), then the buffer is turned by the display rotation.

use std::ffi::c_int;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg::util::color;
use ffmpeg_next as ffmpeg;

/// How a decoded picture is turned upright for display: first a clockwise turn of `rotation`
/// degrees, then, when `mirrored`, a left-right mirror of the turned picture. The eight
/// combinations cover every right-angle display matrix, flips and transposes included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Orientation {
    /// 0, 90, 180 or 270.
    pub(crate) rotation: u32,
    pub(crate) mirrored: bool,
}

/// What a scaler is built for; a stream may change any of it midway (VP9 changes resolution).
#[derive(Clone, Copy, PartialEq, Eq)]
struct ScalerInput {
    format: Pixel,
    width: u32,
    height: u32,
    space: color::Space,
    range: color::Range,
}

/// Converts decoded frames to RGB24, keeping one scaler for as long as its input stays the same.
pub(crate) struct RgbConverter {
    scaler: Option<(ScalerInput, scaling::Context)>,
    rgb: ffmpeg::frame::Video,
}

impl RgbConverter {
    pub(crate) fn new() -> Self {
        Self {
            scaler: None,
            rgb: ffmpeg::frame::Video::empty(),
        }
    }

    /// Converts `frame` to packed RGB24 rows and applies `orientation`; returns the upright
    /// width, height and pixels.
    pub(crate) fn convert(
        &mut self,
        frame: &ffmpeg::frame::Video,
        orientation: Orientation,
    ) -> Result<(u32, u32, Vec<u8>), ffmpeg::Error> {
        let (format, width, height) = (frame.format(), frame.width(), frame.height());
        let input = ScalerInput {
            format,
            width,
            height,
            space: frame.color_space(),
            range: frame.color_range(),
        };
        let reusable = matches!(&self.scaler, Some((built_for, _)) if *built_for == input);
        if !reusable {
            // Plain bicubic, the flags the FFmpeg CLI gives its own conversion, so frames match
            // what `ffmpeg -i IN -pix_fmt rgb24` produces bit for bit.
            let mut context = scaling::Context::get(
                format,
                width,
                height,
                Pixel::RGB24,
                width,
                height,
                scaling::Flags::BICUBIC,
            )?;
            use_stream_colors(&mut context, input.space, input.range);
            self.scaler = Some((input, context));
            self.rgb = ffmpeg::frame::Video::empty();
        }
        let Some((_, scaler)) = self.scaler.as_mut() else {
            return Err(ffmpeg::Error::Bug);
        };
        scaler.run(frame, &mut self.rgb)?;
        let packed = pack_rows(&self.rgb, width as usize, height as usize);
        let (width, height, mut upright) = rotate_rgb(&packed, width, height, orientation.rotation);
        if orientation.mirrored {
            mirror_rows(&mut upright, width as usize);
        }
        Ok((width, height, upright))
    }
}

/// Tells `scaler` which YUV matrix and sample range the frames use, as the FFmpeg CLI's scale
/// filter does from each frame's tags (its `in_color_matrix=auto`): an untagged or unknown matrix
/// is BT.601, an untagged range keeps what the pixel format implies. Without this, swscale reads
/// every stream as BT.601 and BT.709 video comes out with shifted colours.
fn use_stream_colors(scaler: &mut scaling::Context, space: color::Space, range: color::Range) {
    // AVCOL_SPC values swscale has coefficients for; everything else reads as BT.470BG (601).
    let matrix = match ffmpeg::ffi::AVColorSpace::from(space) as c_int {
        known @ (1..=7 | 9 | 10) => known,
        _ => ffmpeg::ffi::AVColorSpace::AVCOL_SPC_BT470BG as c_int,
    };
    // SAFETY: `scaler` owns a live SwsContext for the duration of both calls; the out-pointers
    // are locals, and the tables come from swscale's own static coefficient arrays.
    unsafe {
        let context = scaler.as_mut_ptr();
        let mut inverse_table: *mut c_int = std::ptr::null_mut();
        let mut table: *mut c_int = std::ptr::null_mut();
        let (mut source_full, mut destination_full) = (0, 0);
        let (mut brightness, mut contrast, mut saturation) = (0, 0, 0);
        let readable = ffmpeg::ffi::sws_getColorspaceDetails(
            context,
            &mut inverse_table,
            &mut source_full,
            &mut table,
            &mut destination_full,
            &mut brightness,
            &mut contrast,
            &mut saturation,
        );
        // Not a YUV source (RGB, gray in some builds): there is no matrix to choose.
        if readable < 0 {
            return;
        }
        match range {
            color::Range::JPEG => source_full = 1,
            color::Range::MPEG => source_full = 0,
            _ => {}
        }
        ffmpeg::ffi::sws_setColorspaceDetails(
            context,
            ffmpeg::ffi::sws_getCoefficients(matrix),
            source_full,
            table,
            destination_full,
            brightness,
            contrast,
            saturation,
        );
    }
}

/// Copies the RGB24 plane of `frame` into rows without padding.
fn pack_rows(frame: &ffmpeg::frame::Video, width: usize, height: usize) -> Vec<u8> {
    let stride = frame.stride(0);
    let data = frame.data(0);
    let row_bytes = width * 3;
    let mut packed = Vec::with_capacity(row_bytes * height);
    for row in 0..height {
        packed.extend_from_slice(&data[row * stride..row * stride + row_bytes]);
    }
    packed
}

/// Rotates packed RGB24 pixels clockwise by 0, 90, 180 or 270 degrees; returns the new width,
/// height and pixels.
pub(crate) fn rotate_rgb(
    pixels: &[u8],
    width: u32,
    height: u32,
    rotation: u32,
) -> (u32, u32, Vec<u8>) {
    let (w, h) = (width as usize, height as usize);
    debug_assert_eq!(pixels.len(), w * h * 3);
    let pixel = |x: usize, y: usize| &pixels[(y * w + x) * 3..(y * w + x) * 3 + 3];
    match rotation {
        90 => {
            // Output is h wide and w tall; output (x, y) shows input (y, h - 1 - x).
            let mut out = Vec::with_capacity(pixels.len());
            for y in 0..w {
                for x in 0..h {
                    out.extend_from_slice(pixel(y, h - 1 - x));
                }
            }
            (height, width, out)
        }
        180 => {
            let mut out = Vec::with_capacity(pixels.len());
            for y in 0..h {
                for x in 0..w {
                    out.extend_from_slice(pixel(w - 1 - x, h - 1 - y));
                }
            }
            (width, height, out)
        }
        270 => {
            // Output (x, y) shows input (w - 1 - y, x).
            let mut out = Vec::with_capacity(pixels.len());
            for y in 0..w {
                for x in 0..h {
                    out.extend_from_slice(pixel(w - 1 - y, x));
                }
            }
            (height, width, out)
        }
        _ => (width, height, pixels.to_vec()),
    }
}

/// Mirrors packed RGB24 rows of `width` pixels left to right, in place.
pub(crate) fn mirror_rows(pixels: &mut [u8], width: usize) {
    if width == 0 {
        return;
    }
    for row in pixels.chunks_exact_mut(width * 3) {
        for left in 0..width / 2 {
            let right = width - 1 - left;
            for channel in 0..3 {
                row.swap(left * 3 + channel, right * 3 + channel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x2 image whose pixels carry their own index.
    fn image() -> Vec<u8> {
        (0u8..6).flat_map(|i| [i, i, i]).collect()
    }

    fn first_channel(pixels: &[u8]) -> Vec<u8> {
        pixels.chunks(3).map(|p| p[0]).collect()
    }

    #[test]
    fn quarter_turns_move_corners_where_expected() {
        // Input rows: [0 1 2] / [3 4 5].
        let (w, h, out) = rotate_rgb(&image(), 3, 2, 90);
        assert_eq!((w, h), (2, 3));
        // Clockwise: the bottom-left pixel (3) becomes top-left.
        assert_eq!(first_channel(&out), vec![3, 0, 4, 1, 5, 2]);
        let (w, h, out) = rotate_rgb(&image(), 3, 2, 270);
        assert_eq!((w, h), (2, 3));
        assert_eq!(first_channel(&out), vec![2, 5, 1, 4, 0, 3]);
        let (w, h, out) = rotate_rgb(&image(), 3, 2, 180);
        assert_eq!((w, h), (3, 2));
        assert_eq!(first_channel(&out), vec![5, 4, 3, 2, 1, 0]);
        let (_, _, out) = rotate_rgb(&image(), 3, 2, 0);
        assert_eq!(out, image());
    }

    #[test]
    fn mirroring_swaps_columns() {
        let mut pixels = image();
        mirror_rows(&mut pixels, 3);
        assert_eq!(first_channel(&pixels), vec![2, 1, 0, 5, 4, 3]);
        // A quarter turn then a mirror is the transpose: output (x, y) shows input (y, x).
        let (w, h, mut out) = rotate_rgb(&image(), 3, 2, 90);
        mirror_rows(&mut out, w as usize);
        assert_eq!((w, h), (2, 3));
        assert_eq!(first_channel(&out), vec![0, 3, 1, 4, 2, 5]);
    }
}
