//! Decoded pictures to upright, tightly packed RGB24: swscale does the pixel format conversion at
//! the decoded size, then the buffer is turned by the display rotation.

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

/// Converts decoded frames to RGB24, keeping one scaler for as long as the input format and size
/// stay the same (a stream may change resolution midway, as VP9 allows).
pub(crate) struct RgbConverter {
    scaler: Option<(Pixel, u32, u32, scaling::Context)>,
    rgb: ffmpeg::frame::Video,
}

impl RgbConverter {
    pub(crate) fn new() -> Self {
        Self {
            scaler: None,
            rgb: ffmpeg::frame::Video::empty(),
        }
    }

    /// Converts `frame` to packed RGB24 rows and applies the clockwise `rotation`; returns the
    /// upright width, height and pixels.
    pub(crate) fn convert(
        &mut self,
        frame: &ffmpeg::frame::Video,
        rotation: u32,
    ) -> Result<(u32, u32, Vec<u8>), ffmpeg::Error> {
        let (format, width, height) = (frame.format(), frame.width(), frame.height());
        let reusable = matches!(&self.scaler, Some((f, w, h, _)) if *f == format && *w == width && *h == height);
        if !reusable {
            // Plain bicubic, the flags the FFmpeg CLI gives its own conversion, so frames match
            // what `ffmpeg -i IN -pix_fmt rgb24` produces bit for bit.
            let context = scaling::Context::get(
                format,
                width,
                height,
                Pixel::RGB24,
                width,
                height,
                scaling::Flags::BICUBIC,
            )?;
            self.scaler = Some((format, width, height, context));
            self.rgb = ffmpeg::frame::Video::empty();
        }
        let Some((_, _, _, scaler)) = self.scaler.as_mut() else {
            return Err(ffmpeg::Error::Bug);
        };
        scaler.run(frame, &mut self.rgb)?;
        let packed = pack_rows(&self.rgb, width as usize, height as usize);
        Ok(rotate_rgb(&packed, width, height, rotation))
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
}
