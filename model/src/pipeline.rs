//! The API the worker calls: Open-o3 Video question answering over timestamped frames.
//!
//! Frames go through the vision tower once ([`OpenO3Video::encode_frames`]); the shared prompt
//! prefix (system turn + frames) is prefilled once ([`OpenO3Video::prefill`]); every question
//! then continues a copy of that KV cache, alone and streamed ([`OpenO3Video::ask`]) or all
//! questions decoded together in one batch ([`OpenO3Video::ask_batched`], which
//! [`OpenO3Video::ask_all`] uses). A caller running its own [`BatchDecoder`] across jobs
//! submits [`OpenO3Video::start_question`]'s sequences and turns each finished one into an
//! [`Answer`] with [`OpenO3Video::answer`]. Everything here is blocking CPU/GPU work: call it
//! from a dedicated thread or `spawn_blocking`, never on async workers.

use std::path::Path;

use candle_core::Tensor;

use crate::batch::{BatchDecoder, BatchEvent, SequenceId, SequenceStart};
use crate::detokenize::TextStream;
use crate::generation::{FinishReason, Generated, GenerationParams, generate};
use crate::image::RgbImage;
use crate::kv_cache::KvCache;
use crate::loading::{HubOptions, LoadOptions, ModelFiles};
use crate::model::{LogitsMode, Model};
use crate::processor::Processor;
use crate::prompt::{self, QwenTokenizer};
use crate::rope_index::mrope_position_ids;
use crate::{Error, Result};

/// One sampled video frame and its time in the video.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedFrame {
    /// The RGB frame (any size; it is resized with `smart_resize`).
    pub image: RgbImage,
    /// Presentation time in seconds.
    pub timestamp_seconds: f64,
}

/// Frames after the vision tower: reusable across questions and prompts.
#[derive(Debug, Clone)]
pub struct EncodedFrames {
    timestamps: Vec<f64>,
    grids: Vec<[usize; 3]>,
    tokens_per_frame: Vec<usize>,
    embeds: Tensor,
}

impl EncodedFrames {
    /// `(t, h, w)` patch grid of each frame.
    pub fn grids(&self) -> &[[usize; 3]] {
        &self.grids
    }

    /// Timestamps of the frames, in seconds.
    pub fn timestamps(&self) -> &[f64] {
        &self.timestamps
    }

    /// Placeholder tokens per frame.
    pub fn tokens_per_frame(&self) -> &[usize] {
        &self.tokens_per_frame
    }

    /// Merged vision tokens `[sum(tokens_per_frame), D]`.
    pub fn embeds(&self) -> &Tensor {
        &self.embeds
    }
}

/// A video after the vision tower, for the native `<|video_pad|>` path.
#[derive(Debug, Clone)]
pub struct EncodedVideo {
    grid: [usize; 3],
    second_per_grid_t: f32,
    embeds: Tensor,
}

impl EncodedVideo {
    /// `(t, h, w)` patch grid (t = frames / 2).
    pub fn grid(&self) -> [usize; 3] {
        self.grid
    }

    /// Seconds covered by one temporal patch (`temporal_patch_size / fps`).
    pub fn second_per_grid_t(&self) -> f32 {
        self.second_per_grid_t
    }

    /// Merged vision tokens `[t*h*w/4, D]`.
    pub fn embeds(&self) -> &Tensor {
        &self.embeds
    }
}

/// A prefilled prompt prefix (system turn + frames + duration line) and its KV cache.
pub struct PrefixCache {
    frames: EncodedFrames,
    system_prompt: String,
    duration_seconds: f64,
    ids: Vec<u32>,
    cache: KvCache,
}

impl PrefixCache {
    /// Token ids of the prefix.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

/// One answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Decoded text (special tokens removed).
    pub text: String,
    /// Generated ids (without the stop id).
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub finish: FinishReason,
    /// Length of the full prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache instead of being recomputed.
    pub reused_prefix_tokens: usize,
}

/// A question prefilled after a prefix, ready to decode alone or in a [`BatchDecoder`].
#[derive(Debug)]
pub struct QuestionStart {
    /// The sequence to submit (its id is the caller's).
    pub sequence: SequenceStart,
    /// Length of the full prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub reused_prefix_tokens: usize,
}

/// What [`OpenO3Video::answer`] needs of a [`QuestionStart`] once its sequence is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuestionStartInfo {
    /// Length of the full prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub reused_prefix_tokens: usize,
}

impl QuestionStart {
    /// The prompt figures to keep for [`OpenO3Video::answer`].
    pub fn info(&self) -> QuestionStartInfo {
        QuestionStartInfo {
            prompt_tokens: self.prompt_tokens,
            reused_prefix_tokens: self.reused_prefix_tokens,
        }
    }
}

/// A prompt after its prefill: last-position logits and the cache to continue.
struct Prefilled {
    logits: Tensor,
    cache: KvCache,
    ids: Vec<u32>,
    rope_delta: i64,
    /// Prompt tokens served from a prefix cache.
    reused: usize,
}

/// Open-o3 Video: model, tokenizer and processor.
#[derive(Debug)]
pub struct OpenO3Video {
    model: Model,
    tokenizer: QwenTokenizer,
    processor: Processor,
    stop_ids: Vec<u32>,
}

impl OpenO3Video {
    /// Joins loaded parts.
    pub fn new(model: Model, tokenizer: QwenTokenizer, processor: Processor) -> Self {
        let mut stop_ids = model.config().eos_token_ids.clone();
        for token in [prompt::IM_END, prompt::END_OF_TEXT] {
            if let Some(id) = tokenizer.token_id(token) {
                stop_ids.push(id);
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Self {
            model,
            tokenizer,
            processor,
            stop_ids,
        }
    }

    /// Loads a local Hugging Face model directory.
    pub fn load(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        Self::from_files(&ModelFiles::from_dir(dir)?, options)
    }

    /// Downloads `repo_id` from the hub (bounded by `hub.timeout`) and loads it.
    pub fn from_hub(repo_id: &str, hub: &HubOptions, options: &LoadOptions) -> Result<Self> {
        Self::from_files(&crate::loading::download(repo_id, hub)?, options)
    }

    /// Loads from resolved files.
    pub fn from_files(files: &ModelFiles, options: &LoadOptions) -> Result<Self> {
        let model = files.model(options)?;
        Ok(Self::new(
            model,
            files.tokenizer()?,
            Processor::new(files.preprocessor()?),
        ))
    }

    /// The underlying model (e.g. for [`Model::vision_calls`]).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &QwenTokenizer {
        &self.tokenizer
    }

    /// The image processor.
    pub fn processor(&self) -> &Processor {
        &self.processor
    }

    /// Sets the per-frame pixel bounds of `smart_resize` (Open-o3 Video samples video frames
    /// with 128·28·28 to 768·28·28 pixels).
    pub fn set_pixel_bounds(&mut self, min_pixels: usize, max_pixels: usize) {
        let mut config = self.processor.config().clone();
        config.min_pixels = min_pixels;
        config.max_pixels = max_pixels;
        self.processor = Processor::new(config);
    }

    /// Resizes, patchifies and encodes the frames with one vision tower call.
    pub fn encode_frames(&self, frames: &[TimedFrame]) -> Result<EncodedFrames> {
        self.encode(frames, true)
    }

    /// Encodes frames already resized with [`Processor::resize`] (as a caller does to each frame
    /// as it is decoded, so that full-size frames are never held together). They are not resized
    /// again: `smart_resize` is not idempotent for extreme aspect ratios, where its
    /// `max(factor, ..)` clamp exceeds the pixel bound and a second pass would shrink them.
    pub fn encode_resized_frames(&self, frames: &[TimedFrame]) -> Result<EncodedFrames> {
        self.encode(frames, false)
    }

    fn encode(&self, frames: &[TimedFrame], resize: bool) -> Result<EncodedFrames> {
        if frames.is_empty() {
            return Err(Error::Input("no frames".into()));
        }
        let images: Vec<RgbImage> = frames.iter().map(|f| f.image.clone()).collect();
        let pixels = self.processor.preprocess_images(&images, resize)?;
        let embeds = self
            .model
            .encode_vision(&pixels.to_tensor(self.model.device())?, &pixels.grids)?;
        Ok(EncodedFrames {
            timestamps: frames.iter().map(|f| f.timestamp_seconds).collect(),
            tokens_per_frame: pixels.tokens_per_grid(self.processor.config().merge_size),
            grids: pixels.grids,
            embeds,
        })
    }

    fn prompt_ids_for(&self, frames: &EncodedFrames, text: &str) -> Result<Vec<u32>> {
        let ids = self.tokenizer.encode(text)?;
        prompt::expand_placeholders(
            &ids,
            self.model.config().image_token_id,
            &frames.tokens_per_frame,
        )
    }

    /// Full prompt ids of one question in the Open-o3 Video layout.
    pub fn prompt_ids(
        &self,
        frames: &EncodedFrames,
        system_prompt: &str,
        duration_seconds: f64,
        question: &str,
    ) -> Result<Vec<u32>> {
        let text = prompt::open_o3_prefix(system_prompt, &frames.timestamps, duration_seconds)
            + &prompt::open_o3_suffix(question);
        self.prompt_ids_for(frames, &text)
    }

    /// Prefills the shared prefix (system turn, frames, duration line) once.
    pub fn prefill(
        &self,
        frames: &EncodedFrames,
        system_prompt: &str,
        duration_seconds: f64,
    ) -> Result<PrefixCache> {
        let text = prompt::open_o3_prefix(system_prompt, &frames.timestamps, duration_seconds);
        let ids = self.prompt_ids_for(frames, &text)?;
        let positions = mrope_position_ids(
            &ids,
            &frames.grids,
            &[],
            &[],
            &self.model.rope_index_params(),
        )?;
        let embeds = self.model.embed(&ids, Some(&frames.embeds))?;
        let mut cache = self.model.new_cache();
        self.model
            .forward_embeds(&embeds, &positions, &mut cache, LogitsMode::Last)?;
        Ok(PrefixCache {
            frames: frames.clone(),
            system_prompt: system_prompt.to_string(),
            duration_seconds,
            ids,
            cache,
        })
    }

    /// Prefills `question` after `prefix` into a copy of its cache with room for `extra`
    /// more positions.
    fn prefill_question(
        &self,
        prefix: &PrefixCache,
        question: &str,
        extra: usize,
    ) -> Result<Prefilled> {
        let frames = &prefix.frames;
        let ids = self.prompt_ids(
            frames,
            &prefix.system_prompt,
            prefix.duration_seconds,
            question,
        )?;
        let positions = mrope_position_ids(
            &ids,
            &frames.grids,
            &[],
            &[],
            &self.model.rope_index_params(),
        )?;
        // Tokens of the prefix are reused as long as tokenisation of the full prompt agrees.
        let shared = prefix
            .ids
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count();
        let reused = shared.min(ids.len() - 1);
        let mut cache = prefix.cache.fork(reused, ids.len() + extra)?;
        let embeds = self.model.embed(&ids, Some(&frames.embeds))?;
        let tail = embeds.narrow(1, reused, ids.len() - reused)?;
        let logits = self.model.forward_embeds(
            &tail,
            &positions.slice(reused, ids.len()),
            &mut cache,
            LogitsMode::Last,
        )?;
        Ok(Prefilled {
            logits,
            cache,
            ids,
            rope_delta: positions.rope_delta,
            reused,
        })
    }

    /// Answers one question after a prefilled prefix. `on_text` receives text deltas as they
    /// are decoded and returns `false` to stop.
    pub fn ask(
        &self,
        prefix: &PrefixCache,
        question: &str,
        params: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Answer> {
        let prefilled = self.prefill_question(prefix, question, params.max_new_tokens)?;
        self.finish(prefilled, params, on_text)
    }

    /// Prefills `question` after `prefix` as sequence `id` of a [`BatchDecoder`] (the stop
    /// ids of the model are added to `params`).
    pub fn start_question(
        &self,
        prefix: &PrefixCache,
        question: &str,
        params: &GenerationParams,
        id: SequenceId,
    ) -> Result<QuestionStart> {
        let prefilled = self.prefill_question(prefix, question, params.max_new_tokens)?;
        let mut params = params.clone();
        params.stop_token_ids.extend(&self.stop_ids);
        Ok(QuestionStart {
            prompt_tokens: prefilled.ids.len(),
            reused_prefix_tokens: prefilled.reused,
            sequence: SequenceStart {
                id,
                cache: prefilled.cache,
                first_logits: prefilled.logits,
                next_position: prefilled.ids.len() as i64 + prefilled.rope_delta,
                context: prefilled.ids,
                params,
            },
        })
    }

    /// The answer of a finished sequence started with [`Self::start_question`].
    pub fn answer(&self, start: &QuestionStartInfo, generated: Generated) -> Result<Answer> {
        Ok(Answer {
            text: self.tokenizer.decode(&generated.tokens)?,
            tokens: generated.tokens,
            finish: generated.finish,
            prompt_tokens: start.prompt_tokens,
            reused_prefix_tokens: start.reused_prefix_tokens,
        })
    }

    /// Answers every question after `prefix`, all decoded together in one batch (one forward
    /// pass per token for all of them). Answers come in the order of `questions`.
    pub fn ask_batched(
        &self,
        prefix: &PrefixCache,
        questions: &[&str],
        params: &GenerationParams,
    ) -> Result<Vec<Answer>> {
        self.ask_batched_while(prefix, questions, params, &mut || true)
    }

    /// [`Self::ask_batched`], checking `keep_going` before every step: once it returns
    /// `false`, the questions still decoding end as [`FinishReason::Cancelled`] with the tokens
    /// they have (a worker passes its job's cancellation here).
    pub fn ask_batched_while(
        &self,
        prefix: &PrefixCache,
        questions: &[&str],
        params: &GenerationParams,
        keep_going: &mut dyn FnMut() -> bool,
    ) -> Result<Vec<Answer>> {
        let mut batch = BatchDecoder::new(&self.model, questions.len());
        let mut infos = Vec::with_capacity(questions.len());
        for (i, question) in questions.iter().enumerate() {
            let start = self.start_question(prefix, question, params, i as SequenceId)?;
            infos.push(start.info());
            batch.submit(start.sequence)?;
        }
        let mut finished: Vec<Option<Generated>> = vec![None; questions.len()];
        while !batch.is_idle() {
            if !keep_going() {
                for (id, slot) in finished.iter_mut().enumerate() {
                    if slot.is_none() {
                        *slot = batch.cancel(id as SequenceId)?;
                    }
                }
                break;
            }
            for event in batch.step()? {
                if let BatchEvent::Finished { id, generated } = event
                    && let Some(slot) = finished.get_mut(id as usize)
                {
                    *slot = Some(generated);
                }
            }
        }
        infos
            .iter()
            .zip(finished)
            .map(|(info, generated)| {
                let generated = generated
                    .ok_or_else(|| Error::Input("a batched question never finished".into()))?;
                self.answer(info, generated)
            })
            .collect()
    }

    /// Generates after a prefill and decodes the answer, streaming text deltas.
    fn finish(
        &self,
        prefilled: Prefilled,
        params: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Answer> {
        let Prefilled {
            logits,
            mut cache,
            ids,
            rope_delta,
            reused,
        } = prefilled;
        let mut params = params.clone();
        params.stop_token_ids.extend(&self.stop_ids);
        let mut stream = TextStream::new(&self.tokenizer);
        let mut decode_error = None;
        let mut callback = |token: u32| -> bool {
            match stream.push(token) {
                Ok(Some(delta)) => on_text(&delta),
                Ok(None) => true,
                Err(e) => {
                    decode_error = Some(e);
                    false
                }
            }
        };
        let next_position = ids.len() as i64 + rope_delta;
        let generated = generate(
            &self.model,
            &logits,
            &mut cache,
            next_position,
            &ids,
            &params,
            &mut callback,
        )?;
        if let Some(e) = decode_error {
            return Err(e);
        }
        Ok(Answer {
            text: self.tokenizer.decode(&generated.tokens)?,
            tokens: generated.tokens,
            finish: generated.finish,
            prompt_tokens: ids.len(),
            reused_prefix_tokens: reused,
        })
    }

    /// Encodes frames sampled at `fps` as one native video (`<|video_pad|>` path, temporal
    /// M-RoPE with `second_per_grid_t = temporal_patch_size / fps`).
    pub fn encode_video(&self, frames: &[RgbImage], fps: f64) -> Result<EncodedVideo> {
        if fps.is_nan() || fps <= 0.0 {
            return Err(Error::Input(format!("invalid fps {fps}")));
        }
        let pixels = self.processor.preprocess_video(frames, true)?;
        let embeds = self
            .model
            .encode_vision(&pixels.to_tensor(self.model.device())?, &pixels.grids)?;
        Ok(EncodedVideo {
            grid: pixels.grids[0],
            second_per_grid_t: (self.processor.config().temporal_patch_size as f64 / fps) as f32,
            embeds,
        })
    }

    /// Answers one question about a native video with the Qwen2.5-VL chat template.
    pub fn ask_video(
        &self,
        video: &EncodedVideo,
        system_prompt: &str,
        question: &str,
        params: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Answer> {
        let merge = self.processor.config().merge_size;
        let tokens = video.grid.iter().product::<usize>() / (merge * merge);
        let text = prompt::video_prompt(system_prompt, question);
        let ids = prompt::expand_placeholders(
            &self.tokenizer.encode(&text)?,
            self.model.config().video_token_id,
            &[tokens],
        )?;
        let positions = mrope_position_ids(
            &ids,
            &[],
            &[video.grid],
            &[video.second_per_grid_t],
            &self.model.rope_index_params(),
        )?;
        let embeds = self.model.embed(&ids, Some(&video.embeds))?;
        let mut cache = self
            .model
            .new_cache_with_capacity(ids.len() + params.max_new_tokens);
        let logits =
            self.model
                .forward_embeds(&embeds, &positions, &mut cache, LogitsMode::Last)?;
        let prefilled = Prefilled {
            logits,
            cache,
            ids,
            rope_delta: positions.rope_delta,
            reused: 0,
        };
        self.finish(prefilled, params, on_text)
    }

    /// Encodes the frames once, prefills the prefix once and answers every question, all
    /// decoded together ([`Self::ask_batched`]).
    pub fn ask_all(
        &self,
        frames: &[TimedFrame],
        system_prompt: &str,
        duration_seconds: f64,
        questions: &[&str],
        params: &GenerationParams,
    ) -> Result<Vec<Answer>> {
        let encoded = self.encode_frames(frames)?;
        let prefix = self.prefill(&encoded, system_prompt, duration_seconds)?;
        self.ask_batched(&prefix, questions, params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shareable<T: Send + Sync>() {}

    #[test]
    fn pipeline_parts_can_be_shared_across_threads() {
        shareable::<OpenO3Video>();
        shareable::<PrefixCache>();
        shareable::<EncodedFrames>();
        shareable::<EncodedVideo>();
    }
}
