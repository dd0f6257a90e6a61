//! Token generation on top of a prefilled KV cache: greedy or sampled (temperature, top-p,
//! repetition penalty, in the order transformers applies them), stopping on end-of-turn ids or
//! after `max_new_tokens`, with a per-token callback for streaming.

use std::collections::HashSet;

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::{LogitsMode, Model};
use crate::rope_index::PositionIds;
use crate::text::KvCache;
use crate::{Error, Result};

/// Decoding settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// Upper bound on generated tokens.
    pub max_new_tokens: usize,
    /// Softmax temperature; `0.0` means greedy (argmax).
    pub temperature: f64,
    /// Nucleus sampling mass in `(0, 1]`; `1.0` disables it.
    pub top_p: f64,
    /// Repetition penalty (> 1 discourages tokens already in the context); `1.0` disables it.
    pub repetition_penalty: f32,
    /// Seed of the sampler.
    pub seed: u64,
    /// Ids that end generation (not included in the output); usually `<|im_end|>`.
    pub stop_token_ids: Vec<u32>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 512,
            temperature: 0.0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
            stop_token_ids: Vec::new(),
        }
    }
}

impl GenerationParams {
    /// The sampling settings of Open-o3 Video's inference example (temperature 0.1, top-p
    /// 0.001, repetition penalty 1.05, up to 2048 new tokens).
    pub fn open_o3() -> Self {
        Self {
            max_new_tokens: 2048,
            temperature: 0.1,
            top_p: 0.001,
            repetition_penalty: 1.05,
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let valid = self.temperature >= 0.0
            && self.top_p > 0.0
            && self.top_p <= 1.0
            && self.repetition_penalty > 0.0;
        if !valid {
            return Err(Error::Input(format!(
                "invalid sampling settings: temperature {} top_p {} repetition_penalty {}",
                self.temperature, self.top_p, self.repetition_penalty
            )));
        }
        Ok(())
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop id was produced.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
    /// The token callback asked to stop.
    Cancelled,
}

/// Output of [`generate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// Generated ids, without the stop id.
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub finish: FinishReason,
}

/// Picks the next token from a logits vector.
#[derive(Debug)]
pub struct Sampler {
    params: GenerationParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: &GenerationParams) -> Result<Self> {
        params.validate()?;
        Ok(Self {
            params: params.clone(),
            rng: StdRng::seed_from_u64(params.seed),
        })
    }

    /// Chooses a token given the logits and the ids seen so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &[f32], seen: &HashSet<u32>) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::Input("empty logits".into()));
        }
        let mut logits = logits.to_vec();
        let penalty = self.params.repetition_penalty;
        if penalty != 1.0 {
            for &id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
                }
            }
        }
        if self.params.temperature == 0.0 {
            return Ok(argmax(&logits));
        }
        let temperature = self.params.temperature as f32;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, f64::from((l - max) / temperature).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= total);
        if self.params.top_p < 1.0 {
            probs.sort_by(|a, b| b.1.total_cmp(&a.1));
            let mut mass = 0.0;
            let mut keep = 0;
            for p in &probs {
                keep += 1;
                mass += p.1;
                if mass >= self.params.top_p {
                    break;
                }
            }
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let mut draw = self.rng.random::<f64>() * total;
        for &(id, p) in &probs {
            draw -= p;
            if draw <= 0.0 {
                return Ok(id);
            }
        }
        Ok(probs[probs.len() - 1].0)
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Generates after a prefill whose last-position logits are `first_logits` (`[.., V]`).
/// The k-th generated token is fed at M-RoPE position `next_position + k` in all three rows
/// (`next_position = prompt_len + rope_delta`). `context` (the prompt ids) feeds the repetition
/// penalty. `on_token` sees every kept token and returns `false` to stop early.
pub fn generate(
    model: &Model,
    first_logits: &Tensor,
    cache: &mut KvCache,
    next_position: i64,
    context: &[u32],
    params: &GenerationParams,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<Generated> {
    let mut sampler = Sampler::new(params)?;
    let mut seen: HashSet<u32> = context.iter().copied().collect();
    let mut logits: Vec<f32> = first_logits.flatten_all()?.to_vec1()?;
    let mut tokens = Vec::new();
    for k in 0..params.max_new_tokens {
        let token = sampler.sample(&logits, &seen)?;
        if params.stop_token_ids.contains(&token) {
            return Ok(Generated {
                tokens,
                finish: FinishReason::Stop,
            });
        }
        tokens.push(token);
        seen.insert(token);
        if !on_token(token) {
            return Ok(Generated {
                tokens,
                finish: FinishReason::Cancelled,
            });
        }
        if k + 1 == params.max_new_tokens {
            break;
        }
        let embeds = model.embed(&[token], None)?;
        let positions = PositionIds::text(next_position + k as i64, 1);
        logits = model
            .forward_embeds(&embeds, &positions, cache, LogitsMode::Last)?
            .flatten_all()?
            .to_vec1()?;
    }
    Ok(Generated {
        tokens,
        finish: FinishReason::Length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_penalty_can_flip_it() {
        let mut greedy = Sampler::new(&GenerationParams::default()).unwrap();
        let logits = [0.1, 2.0, 1.9];
        assert_eq!(greedy.sample(&logits, &HashSet::new()).unwrap(), 1);
        let mut penalised = Sampler::new(&GenerationParams {
            repetition_penalty: 1.5,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(penalised.sample(&logits, &HashSet::from([1])).unwrap(), 2);
    }

    #[test]
    fn tiny_top_p_is_greedy_and_sampling_is_seeded() {
        let params = GenerationParams {
            temperature: 1.0,
            top_p: 0.01,
            ..Default::default()
        };
        let mut s = Sampler::new(&params).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 3.0, 1.0], &HashSet::new()).unwrap(), 1);
        }
        let params = GenerationParams {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let draw = |p: &GenerationParams| -> Vec<u32> {
            let mut s = Sampler::new(p).unwrap();
            (0..32)
                .map(|_| s.sample(&[0.0, 0.1, 0.2, 0.3], &HashSet::new()).unwrap())
                .collect()
        };
        let first = draw(&params);
        assert_eq!(first, draw(&params));
        assert!(first.iter().collect::<HashSet<_>>().len() > 1);
    }

    #[test]
    fn invalid_settings_are_rejected() {
        assert!(
            Sampler::new(&GenerationParams {
                top_p: 0.0,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Sampler::new(&GenerationParams {
                temperature: f64::NAN,
                ..Default::default()
            })
            .is_err()
        );
    }
}
