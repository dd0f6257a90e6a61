//! M-RoPE position ids (`get_rope_index`) with the original Qwen algorithm, as used by
//! transformers ~4.49 (Open-o3 Video's pinned version) and vLLM: text after a vision block
//! continues at the block's maximum position + 1, and video time ids are
//! `trunc(i * second_per_grid_t * tokens_per_second)` computed in f32.

use crate::{Error, Result};

/// Placeholder ids and geometry needed to lay out positions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeIndexParams {
    /// `<|image_pad|>` id.
    pub image_token_id: u32,
    /// `<|video_pad|>` id.
    pub video_token_id: u32,
    /// `<|vision_start|>` id.
    pub vision_start_token_id: u32,
    /// Vision merge size (2).
    pub spatial_merge_size: usize,
    /// Temporal ids per second of video (2).
    pub tokens_per_second: f32,
}

/// Three rows (t, h, w) of positions for a sequence, plus the decode offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionIds {
    /// `rows[r][i]`: position of token `i` in row `r` (0 = time, 1 = height, 2 = width).
    pub rows: [Vec<i64>; 3],
    /// `max(position) + 1 - len`: the k-th generated token (k = 0, 1, ...) gets position
    /// `len + k + rope_delta` in all three rows.
    pub rope_delta: i64,
}

impl PositionIds {
    /// Number of tokens covered.
    pub fn len(&self) -> usize {
        self.rows[0].len()
    }

    /// Whether no token is covered.
    pub fn is_empty(&self) -> bool {
        self.rows[0].is_empty()
    }

    /// Positions `start..end` of this sequence.
    pub fn slice(&self, start: usize, end: usize) -> PositionIds {
        PositionIds {
            rows: [
                self.rows[0][start..end].to_vec(),
                self.rows[1][start..end].to_vec(),
                self.rows[2][start..end].to_vec(),
            ],
            rope_delta: self.rope_delta,
        }
    }

    /// Plain text positions `start..start+len` in all three rows.
    pub fn text(start: i64, len: usize) -> PositionIds {
        let row: Vec<i64> = (0..len as i64).map(|i| start + i).collect();
        PositionIds {
            rows: [row.clone(), row.clone(), row],
            rope_delta: 0,
        }
    }
}

/// Computes M-RoPE positions of `input_ids` holding expanded image/video placeholders.
/// `image_grids` / `video_grids` are the `(t, h, w)` patch grids in prompt order;
/// `second_per_grid_ts` has one entry per video (1.0 is used when it is missing).
pub fn mrope_position_ids(
    input_ids: &[u32],
    image_grids: &[[usize; 3]],
    video_grids: &[[usize; 3]],
    second_per_grid_ts: &[f32],
    params: &RopeIndexParams,
) -> Result<PositionIds> {
    let len = input_ids.len();
    let merge = params.spatial_merge_size;
    let mut rows: [Vec<i64>; 3] = [
        Vec::with_capacity(len),
        Vec::with_capacity(len),
        Vec::with_capacity(len),
    ];
    let (mut image_i, mut video_i, mut start) = (0usize, 0usize, 0usize);
    let mut next_pos: i64 = 0;
    let find = |id: u32, from: usize| {
        input_ids[from..]
            .iter()
            .position(|&t| t == id)
            .map(|p| p + from)
    };
    loop {
        let next_image = if image_i < image_grids.len() {
            find(params.image_token_id, start)
        } else {
            None
        };
        let next_video = if video_i < video_grids.len() {
            find(params.video_token_id, start)
        } else {
            None
        };
        let take_image = match (next_image, next_video) {
            (None, None) => break,
            (Some(i), Some(v)) => i < v,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        let (end, grid, spgt) = if take_image {
            image_i += 1;
            (next_image.unwrap_or(len), image_grids[image_i - 1], 0.0f32)
        } else {
            video_i += 1;
            let spgt = second_per_grid_ts.get(video_i - 1).copied().unwrap_or(1.0);
            (next_video.unwrap_or(len), video_grids[video_i - 1], spgt)
        };
        let (gt, gh, gw) = (grid[0], grid[1] / merge, grid[2] / merge);
        let count = gt * gh * gw;
        if end + count > len
            || input_ids[end..end + count]
                .iter()
                .any(|&t| t != input_ids[end])
        {
            return Err(Error::Input(format!(
                "vision block at {end} needs {count} placeholder tokens, the prompt has fewer"
            )));
        }
        for i in start..end {
            let p = next_pos + (i - start) as i64;
            rows.iter_mut().for_each(|r| r.push(p));
        }
        let base = next_pos + (end - start) as i64;
        let mut block_max = base;
        for t in 0..gt {
            // f32 arithmetic like `arange(...).float() * spgt * tps` followed by `.long()`.
            let t_id = (t as f32 * spgt * params.tokens_per_second) as i64;
            for h in 0..gh {
                for w in 0..gw {
                    rows[0].push(base + t_id);
                    rows[1].push(base + h as i64);
                    rows[2].push(base + w as i64);
                    block_max = block_max.max(base + t_id.max(h as i64).max(w as i64));
                }
            }
        }
        next_pos = block_max + 1;
        start = end + count;
    }
    if image_i != image_grids.len() || video_i != video_grids.len() {
        return Err(Error::Input(format!(
            "prompt has placeholders for {image_i}/{} images and {video_i}/{} videos",
            image_grids.len(),
            video_grids.len()
        )));
    }
    for i in start..len {
        let p = next_pos + (i - start) as i64;
        rows.iter_mut().for_each(|r| r.push(p));
    }
    let max = rows
        .iter()
        .flat_map(|r| r.iter().copied())
        .max()
        .unwrap_or(-1);
    Ok(PositionIds {
        rows,
        rope_delta: max + 1 - len as i64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_block_positions() {
        let params = RopeIndexParams {
            image_token_id: 9,
            video_token_id: 10,
            vision_start_token_id: 8,
            spatial_merge_size: 2,
            tokens_per_second: 2.0,
        };
        let ids = [1, 8, 9, 9, 9, 9, 9, 9, 2];
        let pos = mrope_position_ids(&ids, &[[1, 4, 6]], &[], &[], &params).unwrap();
        assert_eq!(pos.rows[0], vec![0, 1, 2, 2, 2, 2, 2, 2, 5]);
        assert_eq!(pos.rows[1], vec![0, 1, 2, 2, 2, 3, 3, 3, 5]);
        assert_eq!(pos.rows[2], vec![0, 1, 2, 3, 4, 2, 3, 4, 5]);
        assert_eq!(pos.rope_delta, 6 - 9);
    }

    #[test]
    fn missing_placeholders_are_an_error() {
        let params = RopeIndexParams {
            image_token_id: 9,
            video_token_id: 10,
            vision_start_token_id: 8,
            spatial_merge_size: 2,
            tokens_per_second: 2.0,
        };
        assert!(mrope_position_ids(&[1, 8, 9, 9], &[[1, 4, 6]], &[], &[], &params).is_err());
    }
}
