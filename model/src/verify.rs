//! Self-verification: the probability that the model answers "yes" to a question about an image,
//! read from the logits of one prefill, without generating.
//!
//! Open-o3 Video's confidence-aware test-time scaling (<https://arxiv.org/abs/2510.20579>, §3.4)
//! crops each cited box at its time and asks the model about the crop. vidx records the answer's
//! probability as the claim's confidence: [`OpenO3Video::yes_probability`] runs the vision tower
//! once over all crops, then one decoder prefill per crop (`Is this a knife? Answer yes or no.`
//! after the crop, in the Qwen2.5-VL chat template), and reads the last position's logits.
//!
//! **Which softmax.** The probability is the softmax restricted to the tokens that start a yes or
//! a no ([`prompt::YES_WORDS`], [`prompt::NO_WORDS`]): `P(yes) = Σ e^yes / (Σ e^yes + Σ e^no)`.
//! Over the full vocabulary, P("Yes") also falls whenever the model would open with anything
//! else (`The`, `<think>`, a newline), which says how the model formats an answer, not whether
//! the crop shows the object; restricted, it is the model's preference between the two answers
//! the question allows, comparable across crops and prompts. The restricted logits of all crops
//! are gathered and softmaxed on the device and copied to the host once.

use candle_core::Tensor;

use crate::image::RgbImage;
use crate::model::LogitsMode;
use crate::pipeline::OpenO3Video;
use crate::prompt;
use crate::rope_index::mrope_position_ids;
use crate::{Error, Result};

/// The yes/no question vidx asks about the crop of a claim's box.
pub fn object_question(object: &str) -> String {
    format!("Is this a {}? Answer yes or no.", object.trim())
}

impl OpenO3Video {
    /// Token ids that start a yes and a no answer: each word of [`prompt::YES_WORDS`] /
    /// [`prompt::NO_WORDS`] that the tokenizer writes as one token.
    pub fn yes_no_token_ids(&self) -> Result<(Vec<u32>, Vec<u32>)> {
        let single = |words: &[&str]| -> Result<Vec<u32>> {
            let mut ids = Vec::new();
            for word in words {
                if let [id] = self.tokenizer().encode(word)?.as_slice()
                    && !ids.contains(id)
                {
                    ids.push(*id);
                }
            }
            Ok(ids)
        };
        let (yes, no) = (single(prompt::YES_WORDS)?, single(prompt::NO_WORDS)?);
        if yes.is_empty() || no.is_empty() || yes.iter().any(|id| no.contains(id)) {
            return Err(Error::Input(
                "the tokenizer has no single-token yes and no answers".into(),
            ));
        }
        Ok((yes, no))
    }

    /// For each `(image, question)` pair, the probability in `[0, 1]` that the model answers
    /// "yes" (softmax restricted to the yes/no tokens; see the module docs). The images go
    /// through the vision tower in one call (each resized with `smart_resize` and kept as its
    /// own grid); each pair is then one decoder prefill reading only the last position's
    /// logits. Nothing is generated, and the host reads the results once, at the end.
    pub fn yes_probability(&self, images: &[RgbImage], questions: &[&str]) -> Result<Vec<f32>> {
        if images.len() != questions.len() {
            return Err(Error::Input(format!(
                "{} images for {} questions",
                images.len(),
                questions.len()
            )));
        }
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let model = self.model();
        let (yes, no) = self.yes_no_token_ids()?;
        let choices: Vec<u32> = yes.iter().chain(&no).copied().collect();
        let choices = Tensor::new(choices.as_slice(), model.device())?;

        let pixels = self.processor().preprocess_images(images, true)?;
        let vision = model.encode_vision(&pixels.to_tensor(model.device())?, &pixels.grids)?;
        let tokens = pixels.tokens_per_grid(self.processor().config().merge_size);
        let params = model.rope_index_params();
        let mut chosen = Vec::with_capacity(images.len());
        let mut offset = 0;
        for ((grid, count), question) in pixels.grids.iter().zip(&tokens).zip(questions) {
            let crop = vision.narrow(0, offset, *count)?;
            offset += count;
            let text = prompt::image_question_prompt(question);
            let ids = prompt::expand_placeholders(
                &self.tokenizer().encode(&text)?,
                model.config().image_token_id,
                &[*count],
            )?;
            let positions = mrope_position_ids(&ids, &[*grid], &[], &[], &params)?;
            let embeds = model.embed(&ids, Some(&crop))?;
            let mut cache = model.new_cache_with_capacity(ids.len());
            let logits = model.forward_embeds(&embeds, &positions, &mut cache, LogitsMode::Last)?;
            chosen.push(logits.flatten_all()?.index_select(&choices, 0)?);
        }
        let probabilities = candle_nn::ops::softmax_last_dim(&Tensor::stack(&chosen, 0)?)?;
        let yes_probability = probabilities.narrow(1, 0, yes.len())?.sum(1)?;
        Ok(yes_probability
            .to_vec1::<f32>()?
            .into_iter()
            .map(|p| p.clamp(0.0, 1.0))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_question_names_the_object() {
        assert_eq!(
            object_question(" red car "),
            "Is this a red car? Answer yes or no."
        );
    }
}
