//! Token generation on top of a prefilled KV cache: greedy or sampled (temperature, top-p,
//! repetition penalty, in the order transformers applies them), stopping on end-of-turn ids or
//! after `max_new_tokens`, with a per-token callback for streaming.
//!
//! Tokens are chosen on the device ([`choose_tokens`]): the repetition penalty is applied
//! there from a per-sequence mask of seen ids, and only the chosen id (with the top token's
//! probability, for samplers) crosses to the host, not the 152k logits. Greedy decoding, and
//! nucleus sampling whose nucleus is the top token alone (Open-o3's top-p 0.001 at
//! temperature 0.1, nearly always), never leave the device; any other sampled step copies that
//! one row of logits to the host [`Sampler`], so results equal the host reference either way.

use std::collections::HashSet;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::kv_cache::KvCache;
use crate::model::{LogitsMode, Model};
use crate::rope_index::PositionIds;
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

    /// The settings this sampler follows.
    pub fn params(&self) -> &GenerationParams {
        &self.params
    }

    /// Consumes the random draw a step takes whose nucleus is one token, keeping the random
    /// stream the same as [`Self::sample`]'s.
    fn skip_draw(&mut self) {
        let _ = self.rng.random::<f64>();
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

/// Per-sequence masks of the ids seen so far (`[slots, V]` f32, 1 where seen), on the
/// device, for the repetition penalty. Rows follow the slots of a batch: a retired row is
/// refilled by moving the last one into it.
#[derive(Debug)]
pub(crate) struct SeenMask {
    rows: Option<Tensor>,
    active: usize,
    vocab: usize,
    device: Device,
}

impl SeenMask {
    pub(crate) fn new(vocab: usize, device: &Device) -> Self {
        Self {
            rows: None,
            active: 0,
            vocab,
            device: device.clone(),
        }
    }

    /// Adds a row (the next free slot) marking `context`.
    pub(crate) fn insert(&mut self, context: &[u32]) -> Result<()> {
        let mut dense = vec![0f32; self.vocab];
        for &id in context {
            if let Some(seen) = dense.get_mut(id as usize) {
                *seen = 1.0;
            }
        }
        let row = Tensor::from_vec(dense, (1, self.vocab), &self.device)?;
        let capacity = self.rows.as_ref().map(|r| r.dims()[0]).unwrap_or(0);
        if self.active >= capacity {
            let grown = Tensor::zeros(
                ((capacity * 2).max(self.active + 1), self.vocab),
                DType::F32,
                &self.device,
            )?;
            if let Some(old) = &self.rows {
                grown.slice_set(old, 0, 0)?;
            }
            self.rows = Some(grown);
        }
        if let Some(rows) = &self.rows {
            rows.slice_set(&row, 0, self.active)?;
        }
        self.active += 1;
        Ok(())
    }

    /// Retires row `slot`, moving the last row into it.
    pub(crate) fn remove(&mut self, slot: usize) -> Result<()> {
        if slot >= self.active {
            return Err(Error::Input(format!("no seen-ids row {slot}")));
        }
        let last = self.active - 1;
        if let Some(rows) = &self.rows
            && slot != last
        {
            rows.slice_set(&rows.narrow(0, last, 1)?.force_contiguous()?, 0, slot)?;
        }
        self.active -= 1;
        Ok(())
    }

    /// Marks `ids` (`[n]` u32 on the device, one per active row) seen.
    pub(crate) fn mark(&self, ids: &Tensor) -> Result<()> {
        let Some(rows) = &self.rows else {
            return Ok(());
        };
        let n = ids.dim(0)?;
        let ones = Tensor::ones((n, 1), DType::F32, &self.device)?;
        rows.narrow(0, 0, n)?
            .scatter_set(&ids.reshape((n, 1))?.contiguous()?, &ones, 1)?;
        Ok(())
    }

    /// The masks of rows `start..start + n` (`None` before any row was inserted).
    pub(crate) fn rows(&self, start: usize, n: usize) -> Result<Option<Tensor>> {
        Ok(match &self.rows {
            Some(rows) if start + n <= self.active => Some(rows.narrow(0, start, n)?),
            _ => None,
        })
    }
}

/// One row of a [`choose_tokens`] call: the sequence's sampler and the ids it has seen.
#[derive(Debug)]
pub(crate) struct ChoiceRow<'a> {
    pub(crate) sampler: &'a mut Sampler,
    pub(crate) seen: &'a HashSet<u32>,
}

/// Chooses one token per row of `logits` (`[n, V]` f32, on the device) for the `n` sequences
/// in `rows`, whose seen-id masks are the rows of `seen` (`[n, V]`; needed only when a row has
/// a repetition penalty). One small copy to the host per call (see the module docs for when a
/// row's logits follow it).
pub(crate) fn choose_tokens(
    logits: &Tensor,
    seen: Option<&Tensor>,
    rows: &mut [ChoiceRow<'_>],
) -> Result<Vec<u32>> {
    let (n, _) = logits.dims2()?;
    if n != rows.len() {
        return Err(Error::Input(format!(
            "{n} rows of logits for {} sequences",
            rows.len()
        )));
    }
    let device = logits.device();
    let penalties: Vec<f32> = rows
        .iter()
        .map(|r| r.sampler.params.repetition_penalty)
        .collect();
    let mut chosen_from = logits.clone();
    if penalties.iter().any(|&p| p != 1.0) {
        let seen =
            seen.ok_or_else(|| Error::Input("repetition penalty without seen ids".into()))?;
        let penalty = Tensor::from_vec(penalties, (n, 1), device)?;
        let penalised = logits.gt(0.0)?.where_cond(
            &logits.broadcast_div(&penalty)?,
            &logits.broadcast_mul(&penalty)?,
        )?;
        chosen_from = seen.gt(0.0)?.where_cond(&penalised, logits)?;
    }
    let best = chosen_from.argmax_keepdim(1)?;
    let sampling = rows.iter().any(|r| r.sampler.params.temperature > 0.0);
    if !sampling {
        return Ok(best.flatten_all()?.to_vec1::<u32>()?);
    }
    // The top token's probability after temperature: 1 / sum(exp((l - max) / T)).
    let temperatures: Vec<f32> = rows
        .iter()
        .map(|r| match r.sampler.params.temperature {
            t if t > 0.0 => t as f32,
            _ => 1.0,
        })
        .collect();
    let temperature = Tensor::from_vec(temperatures, (n, 1), device)?;
    let max = chosen_from.max_keepdim(1)?;
    let top_probability = chosen_from
        .broadcast_sub(&max)?
        .broadcast_div(&temperature)?
        .exp()?
        .sum_keepdim(1)?
        .recip()?;
    // Ids below 2^24 are exact in f32: one copy carries both columns.
    let both: Vec<Vec<f32>> =
        Tensor::cat(&[best.to_dtype(DType::F32)?, top_probability], 1)?.to_vec2()?;
    let mut tokens = Vec::with_capacity(n);
    for (i, (row, values)) in rows.iter_mut().zip(both).enumerate() {
        let (best, top) = (values[0] as u32, f64::from(values[1]));
        let params = &row.sampler.params;
        if params.temperature == 0.0 {
            tokens.push(best);
        } else if params.top_p < 1.0 && top >= params.top_p {
            row.sampler.skip_draw();
            tokens.push(best);
        } else {
            let host: Vec<f32> = logits.get(i)?.to_vec1()?;
            tokens.push(row.sampler.sample(&host, row.seen)?);
        }
    }
    Ok(tokens)
}

/// Generates after a prefill whose last-position logits are `first_logits` (`[.., V]`).
/// The k-th generated token is fed at M-RoPE position `next_position + k` in all three rows
/// (`next_position = prompt_len + rope_delta`). `context` (the prompt ids) feeds the repetition
/// penalty. `on_token` sees every kept token and returns `false` to stop early.
///
/// One sequence through [`Model::forward_embeds`]; [`crate::batch::BatchDecoder`] decodes many
/// together and gives the same tokens.
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
    let vocab = first_logits.dims().last().copied().unwrap_or(0);
    let mut seen_mask = SeenMask::new(vocab, model.device());
    if params.repetition_penalty != 1.0 {
        seen_mask.insert(context)?;
    }
    let mut logits = first_logits.reshape((1, vocab))?;
    let mut tokens = Vec::new();
    for k in 0..params.max_new_tokens {
        let token = choose_tokens(
            &logits,
            seen_mask.rows(0, 1)?.as_ref(),
            &mut [ChoiceRow {
                sampler: &mut sampler,
                seen: &seen,
            }],
        )?[0];
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
        let ids = Tensor::new(&[token], model.device())?;
        seen_mask.mark(&ids)?;
        let embeds = model.embed(&[token], None)?;
        let positions = PositionIds::text(next_position + k as i64, 1);
        logits = model
            .forward_embeds(&embeds, &positions, cache, LogitsMode::Last)?
            .reshape((1, vocab))?;
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
    fn device_choice_equals_the_host_sampler() {
        let vocab = 64;
        let rows: Vec<Vec<f32>> = (0..4)
            .map(|r| {
                (0..vocab)
                    .map(|i| ((i * 7 + r * 13) % 31) as f32 / 3.0 - 5.0)
                    .collect()
            })
            .collect();
        let logits = Tensor::new(rows.clone(), &Device::Cpu).unwrap();
        let seen: Vec<HashSet<u32>> = (0..4u32)
            .map(|r| (0..vocab as u32).filter(|i| (i + r) % 3 == 0).collect())
            .collect();
        let mut mask = SeenMask::new(vocab, &Device::Cpu);
        for ids in &seen {
            mask.insert(&ids.iter().copied().collect::<Vec<_>>())
                .unwrap();
        }
        let settings = [
            GenerationParams {
                repetition_penalty: 1.3,
                ..Default::default()
            },
            GenerationParams::default(),
            GenerationParams {
                seed: 3,
                ..GenerationParams::open_o3()
            },
            GenerationParams {
                temperature: 1.0,
                seed: 5,
                ..Default::default()
            },
            GenerationParams {
                temperature: 0.7,
                top_p: 0.5,
                repetition_penalty: 1.1,
                seed: 9,
                ..Default::default()
            },
        ];
        for params in settings {
            let mut on_device: Vec<Sampler> =
                (0..4).map(|_| Sampler::new(&params).unwrap()).collect();
            let mut on_host: Vec<Sampler> =
                (0..4).map(|_| Sampler::new(&params).unwrap()).collect();
            for _ in 0..6 {
                let mut choice_rows: Vec<ChoiceRow<'_>> = on_device
                    .iter_mut()
                    .zip(&seen)
                    .map(|(sampler, seen)| ChoiceRow { sampler, seen })
                    .collect();
                let got =
                    choose_tokens(&logits, mask.rows(0, 4).unwrap().as_ref(), &mut choice_rows)
                        .unwrap();
                let want: Vec<u32> = on_host
                    .iter_mut()
                    .zip(rows.iter().zip(&seen))
                    .map(|(sampler, (row, seen))| sampler.sample(row, seen).unwrap())
                    .collect();
                assert_eq!(got, want, "{params:?}");
            }
        }
    }

    #[test]
    fn seen_masks_follow_their_slots() {
        let mut mask = SeenMask::new(6, &Device::Cpu);
        mask.insert(&[0]).unwrap();
        mask.insert(&[1]).unwrap();
        mask.insert(&[2, 9]).unwrap();
        mask.mark(&Tensor::new(&[3u32, 4, 5], &Device::Cpu).unwrap())
            .unwrap();
        mask.remove(0).unwrap();
        let rows: Vec<Vec<f32>> = mask.rows(0, 2).unwrap().unwrap().to_vec2().unwrap();
        assert_eq!(rows[0], vec![0.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
        assert_eq!(rows[1], vec![0.0, 1.0, 0.0, 0.0, 1.0, 0.0]);
        assert!(mask.remove(2).is_err());
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
