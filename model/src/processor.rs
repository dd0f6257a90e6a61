//! Qwen2-VL image and video preprocessing: resize (optional), normalise and patchify frames
//! into the `pixel_values` rows the vision tower takes, with their `grid_thw`.
//!
//! Row order: `t, h/merge, w/merge, merge, merge` (merge-block major); column order:
//! `channel, temporal, patch_y, patch_x`. An image is repeated `temporal_patch_size` times in
//! time, so its grid is `(1, h/patch, w/patch)`; a video with an odd frame count is padded by
//! repeating its last frame.

use candle_core::{Device, Tensor};

use crate::config::PreprocessorConfig;
use crate::image::{RgbImage, smart_resize};
use crate::{Error, Result};

/// Patchified pixels of one or more images / one video, ready for the vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct PixelValues {
    /// `rows * cols` values, row-major.
    pub values: Vec<f32>,
    /// Number of patches (sum of `t*h*w` over `grids`).
    pub rows: usize,
    /// Values per patch (`3 * temporal * patch^2`).
    pub cols: usize,
    /// `(t, h, w)` patch grid of each image or video, in order.
    pub grids: Vec<[usize; 3]>,
}

impl PixelValues {
    /// Copies the pixels into a `[rows, cols]` f32 tensor.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.values,
            (self.rows, self.cols),
            device,
        )?)
    }

    /// Language-model placeholder tokens each grid expands to.
    pub fn tokens_per_grid(&self, merge_size: usize) -> Vec<usize> {
        self.grids
            .iter()
            .map(|g| g[0] * g[1] * g[2] / (merge_size * merge_size))
            .collect()
    }
}

/// Normalises and patchifies frames following a [`PreprocessorConfig`].
#[derive(Debug, Clone)]
pub struct Processor {
    config: PreprocessorConfig,
}

impl Processor {
    /// A processor with the given settings.
    pub fn new(config: PreprocessorConfig) -> Self {
        Self { config }
    }

    /// The settings in use.
    pub fn config(&self) -> &PreprocessorConfig {
        &self.config
    }

    /// Side multiple of resized frames: `patch_size * merge_size` (28).
    pub fn factor(&self) -> usize {
        self.config.patch_size * self.config.merge_size
    }

    /// Target `(height, width)` of a frame after [`smart_resize`] with this processor's bounds.
    pub fn target_size(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        smart_resize(
            height,
            width,
            self.factor(),
            self.config.min_pixels,
            self.config.max_pixels,
        )
    }

    /// Resizes a frame to [`Self::target_size`].
    pub fn resize(&self, image: &RgbImage) -> Result<RgbImage> {
        let (h, w) = self.target_size(image.height, image.width)?;
        image.resized(w, h)
    }

    /// Each image becomes its own grid `(1, h/14, w/14)` (the Open-o3 Video frame path).
    /// With `resize` false the images must already have sides that are multiples of 28.
    pub fn preprocess_images(&self, images: &[RgbImage], resize: bool) -> Result<PixelValues> {
        let mut out = PixelValues {
            values: Vec::new(),
            rows: 0,
            cols: self.cols(),
            grids: Vec::new(),
        };
        for image in images {
            let image = if resize {
                self.resize(image)?
            } else {
                image.clone()
            };
            let frames = vec![&image; self.config.temporal_patch_size];
            self.append(&frames, &mut out)?;
        }
        Ok(out)
    }

    /// All frames form one video grid `(ceil(T/2), h/14, w/14)`; frames must share a size.
    pub fn preprocess_video(&self, frames: &[RgbImage], resize: bool) -> Result<PixelValues> {
        let Some(first) = frames.first() else {
            return Err(Error::Input("video without frames".into()));
        };
        if frames
            .iter()
            .any(|f| f.width != first.width || f.height != first.height)
        {
            return Err(Error::Input("video frames differ in size".into()));
        }
        let resized: Vec<RgbImage> = if resize {
            frames
                .iter()
                .map(|f| self.resize(f))
                .collect::<Result<_>>()?
        } else {
            frames.to_vec()
        };
        let mut refs: Vec<&RgbImage> = resized.iter().collect();
        let tps = self.config.temporal_patch_size;
        while !refs.len().is_multiple_of(tps) {
            refs.push(refs[refs.len() - 1]);
        }
        let mut out = PixelValues {
            values: Vec::new(),
            rows: 0,
            cols: self.cols(),
            grids: Vec::new(),
        };
        self.append(&refs, &mut out)?;
        Ok(out)
    }

    fn cols(&self) -> usize {
        3 * self.config.temporal_patch_size * self.config.patch_size * self.config.patch_size
    }

    /// Normalises `frames` (a multiple of temporal_patch_size, one size) and appends their rows.
    fn append(&self, frames: &[&RgbImage], out: &mut PixelValues) -> Result<()> {
        let c = &self.config;
        let (patch, merge, tps) = (c.patch_size, c.merge_size, c.temporal_patch_size);
        let (height, width) = (frames[0].height, frames[0].width);
        if height % (patch * merge) != 0 || width % (patch * merge) != 0 {
            return Err(Error::Input(format!(
                "frame {height}x{width} is not a multiple of {} (resize it first)",
                patch * merge
            )));
        }
        // Same arithmetic as transformers' fused rescale + normalise, in f32.
        let mean: Vec<f32> = c.image_mean.iter().map(|m| m * 255.0f32).collect();
        let std: Vec<f32> = c.image_std.iter().map(|s| s * 255.0f32).collect();
        let normalised: Vec<Vec<f32>> = frames
            .iter()
            .map(|f| {
                f.data
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (f32::from(v) - mean[i % 3]) / std[i % 3])
                    .collect()
            })
            .collect();
        let (gt, gh, gw) = (frames.len() / tps, height / patch, width / patch);
        out.values.reserve(gt * gh * gw * self.cols());
        for t in 0..gt {
            for bh in 0..gh / merge {
                for bw in 0..gw / merge {
                    for ih in 0..merge {
                        for iw in 0..merge {
                            let (y0, x0) = ((bh * merge + ih) * patch, (bw * merge + iw) * patch);
                            for channel in 0..3 {
                                for tp in 0..tps {
                                    let frame = &normalised[t * tps + tp];
                                    for py in 0..patch {
                                        let row = (y0 + py) * width;
                                        for px in 0..patch {
                                            out.values.push(frame[(row + x0 + px) * 3 + channel]);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out.rows += gt * gh * gw;
        out.grids.push([gt, gh, gw]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_grid_and_shape() {
        let p = Processor::new(PreprocessorConfig::default());
        let img = RgbImage::new(84, 56, vec![128; 84 * 56 * 3]).unwrap();
        let pv = p.preprocess_images(&[img.clone(), img], false).unwrap();
        assert_eq!(pv.grids, vec![[1, 4, 6], [1, 4, 6]]);
        assert_eq!(pv.rows, 48);
        assert_eq!(pv.values.len(), 48 * 1176);
        assert_eq!(pv.tokens_per_grid(2), vec![6, 6]);
    }

    #[test]
    fn unaligned_frames_need_resizing() {
        let p = Processor::new(PreprocessorConfig::default());
        let img = RgbImage::new(70, 50, vec![0; 70 * 50 * 3]).unwrap();
        assert!(
            p.preprocess_images(std::slice::from_ref(&img), false)
                .is_err()
        );
        let pv = p
            .preprocess_video(&[img.clone(), img.clone(), img], true)
            .unwrap();
        assert_eq!(pv.grids, vec![[2, 4, 4]]);
    }
}
