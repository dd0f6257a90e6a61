//! Batched generation: many sequences decoded together, one forward pass per step.
//!
//! A GPU decoding one sequence reads all the weights to produce one token; decoding `N`
//! sequences in the same pass reads them once for `N` tokens. [`BatchDecoder`] keeps such a
//! batch full the way a worker needs:
//!
//! - **Submit** a [`SequenceStart`] at any time: a prompt already prefilled (its [`KvCache`]
//!   and last-position logits), its decoding settings and a caller-chosen [`SequenceId`].
//!   Sequences of different videos, prompt lengths and settings mix freely.
//! - **Step**: [`BatchDecoder::step`] admits waiting sequences into free slots (up to
//!   `max_sequences`), then runs one forward pass over the next token of every active sequence
//!   and chooses each one's next token on the device. It returns [`BatchEvent`]s keyed by
//!   sequence id: every kept token, and the end of every sequence that finished.
//! - **Retire**: a finished (or [cancelled](BatchDecoder::cancel)) sequence leaves its slot at
//!   once, and the others continue; a sequence submitted later takes the freed slot at the
//!   next step, without the batch draining.
//!
//! Each sequence keeps its own cache slot and length (`[slots, kv_heads, capacity, head_dim]`
//! buffers written in place, see [`crate::kv_cache`]); attention pads the shorter slots up to
//! the longest with a mask, so one step costs one launch per operation whatever the lengths.
//! A sequence's tokens are the ones [`crate::generation::generate`] gives for it alone
//! (greedy decoding is tested token for token on CPU f32).
//!
//! ```no_run
//! # use vidx_model::batch::{BatchDecoder, BatchEvent, SequenceStart};
//! # fn run(model: &vidx_model::Model, starts: Vec<SequenceStart>) -> vidx_model::Result<()> {
//! let mut batch = BatchDecoder::new(model, 8);
//! for start in starts {
//!     batch.submit(start)?;
//! }
//! while !batch.is_idle() {
//!     for event in batch.step()? {
//!         match event {
//!             BatchEvent::Token { id, token } => println!("{id}: {token}"),
//!             BatchEvent::Finished { id, generated } => println!("{id} done: {:?}", generated.finish),
//!         }
//!     }
//!     // A new sequence may be submitted here; it joins at the next step.
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::{HashSet, VecDeque};

use candle_core::Tensor;

use crate::generation::{
    ChoiceRow, FinishReason, Generated, GenerationParams, Sampler, SeenMask, choose_tokens,
};
use crate::kv_cache::{KvCache, SlotCache};
use crate::model::Model;
use crate::{Error, Result};

/// Identifies a sequence in a [`BatchDecoder`]; chosen by the caller, unique among the
/// sequences the decoder holds.
pub type SequenceId = u64;

/// A prefilled prompt ready to decode in a batch.
#[derive(Debug)]
pub struct SequenceStart {
    /// The caller's id of this sequence; events and results carry it.
    pub id: SequenceId,
    /// The prompt's cache (its length is the prompt's).
    pub cache: KvCache,
    /// Last-position logits of the prefill (`[.., V]`, f32).
    pub first_logits: Tensor,
    /// M-RoPE position of the first generated token (`prompt_len + rope_delta`).
    pub next_position: i64,
    /// Prompt ids, for the repetition penalty.
    pub context: Vec<u32>,
    /// Decoding settings, stop ids included.
    pub params: GenerationParams,
}

/// What a step reports, keyed by sequence id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchEvent {
    /// `token` was generated and kept (stop ids are not reported as tokens).
    Token {
        /// The sequence.
        id: SequenceId,
        /// The new token.
        token: u32,
    },
    /// The sequence ended and left the batch.
    Finished {
        /// The sequence.
        id: SequenceId,
        /// Everything it generated and why it ended.
        generated: Generated,
    },
}

/// A sequence holding a slot.
#[derive(Debug)]
struct Active {
    id: SequenceId,
    sampler: Sampler,
    seen: HashSet<u32>,
    tokens: Vec<u32>,
    /// The last chosen token, to feed at the next step.
    pending: u32,
    /// M-RoPE position of `pending`.
    position: i64,
}

impl Active {
    fn params(&self) -> &GenerationParams {
        self.sampler.params()
    }
}

/// Decodes many sequences together (see the module docs).
#[derive(Debug)]
pub struct BatchDecoder<'m> {
    model: &'m Model,
    max_sequences: usize,
    slots: SlotCache,
    seen: SeenMask,
    /// Active sequences, index = slot.
    active: Vec<Active>,
    waiting: VecDeque<SequenceStart>,
}

impl<'m> BatchDecoder<'m> {
    /// An empty batch of at most `max_sequences` (at least 1) sequences decoding at once;
    /// more may be submitted and wait for a slot.
    pub fn new(model: &'m Model, max_sequences: usize) -> Self {
        Self {
            model,
            max_sequences: max_sequences.max(1),
            slots: SlotCache::new(model.config().num_hidden_layers),
            seen: SeenMask::new(model.config().vocab_size, model.device()),
            active: Vec::new(),
            waiting: VecDeque::new(),
        }
    }

    /// Queues a prefilled sequence; it joins at the next [`Self::step`] with a free slot.
    /// Fails on an id already held, invalid settings or a cache of another model.
    pub fn submit(&mut self, start: SequenceStart) -> Result<()> {
        if self.contains(start.id) {
            return Err(Error::Input(format!(
                "sequence {} is already in the batch",
                start.id
            )));
        }
        Sampler::new(&start.params)?;
        let vocab = self.model.config().vocab_size;
        if start.first_logits.elem_count() != vocab {
            return Err(Error::Input(format!(
                "sequence {} has {} first logits for a vocabulary of {vocab}",
                start.id,
                start.first_logits.elem_count()
            )));
        }
        if start.cache.is_empty()
            || start.cache.num_layers() != self.model.config().num_hidden_layers
        {
            return Err(Error::Input(format!(
                "sequence {} has no prefilled cache of this model",
                start.id
            )));
        }
        self.waiting.push_back(start);
        Ok(())
    }

    /// Whether `id` is active or waiting.
    pub fn contains(&self, id: SequenceId) -> bool {
        self.active.iter().any(|a| a.id == id) || self.waiting.iter().any(|w| w.id == id)
    }

    /// Sequences holding a slot.
    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    /// Sequences submitted but not yet admitted.
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nothing is active or waiting (stepping would do nothing).
    pub fn is_idle(&self) -> bool {
        self.active.is_empty() && self.waiting.is_empty()
    }

    /// Removes `id` (active or waiting) and returns what it generated, finished as
    /// [`FinishReason::Cancelled`]; `None` if the batch does not hold it.
    pub fn cancel(&mut self, id: SequenceId) -> Result<Option<Generated>> {
        if let Some(i) = self.waiting.iter().position(|w| w.id == id) {
            self.waiting.remove(i);
            return Ok(Some(Generated {
                tokens: Vec::new(),
                finish: FinishReason::Cancelled,
            }));
        }
        let Some(slot) = self.active.iter().position(|a| a.id == id) else {
            return Ok(None);
        };
        let tokens = self.retire(slot)?.tokens;
        Ok(Some(Generated {
            tokens,
            finish: FinishReason::Cancelled,
        }))
    }

    /// Admits waiting sequences into free slots, then decodes one token for every active
    /// sequence in one forward pass. A sequence admitted by this step reports two tokens: its
    /// first (chosen from its prefill logits) and the one after. Returns the step's events:
    /// tokens in slot order, then the sequences that finished.
    pub fn step(&mut self) -> Result<Vec<BatchEvent>> {
        let mut events = Vec::new();
        self.admit(&mut events)?;
        if self.active.is_empty() {
            return Ok(events);
        }
        let n = self.active.len();
        let device = self.model.device();
        let pending: Vec<u32> = self.active.iter().map(|a| a.pending).collect();
        let positions: Vec<i64> = self.active.iter().map(|a| a.position).collect();
        let ids = Tensor::from_vec(pending, n, device)?;
        self.seen.mark(&ids)?;
        self.slots.reserve(1)?;
        let embeds = self.model.text().embed_column(&ids)?;
        let logits = self
            .model
            .text()
            .forward_step(&embeds, &positions, &mut self.slots)?;
        for active in &mut self.active {
            active.position += 1;
        }
        self.choose(&logits, 0, &mut events)?;
        Ok(events)
    }

    /// Moves waiting sequences into free slots and chooses their first tokens.
    fn admit(&mut self, events: &mut Vec<BatchEvent>) -> Result<()> {
        let first_slot = self.active.len();
        let mut first_logits = Vec::new();
        while self.active.len() < self.max_sequences {
            let Some(start) = self.waiting.pop_front() else {
                break;
            };
            let params = &start.params;
            let slot = self
                .slots
                .insert(&start.cache, start.cache.len() + params.max_new_tokens)?;
            debug_assert_eq!(slot, self.active.len());
            self.seen.insert(&start.context)?;
            let vocab = self.model.config().vocab_size;
            first_logits.push(start.first_logits.reshape((1, vocab))?);
            self.active.push(Active {
                id: start.id,
                sampler: Sampler::new(params)?,
                seen: start.context.iter().copied().collect(),
                tokens: Vec::new(),
                pending: 0,
                position: start.next_position,
            });
        }
        if first_logits.is_empty() {
            return Ok(());
        }
        let logits = Tensor::cat(&first_logits, 0)?;
        self.choose(&logits, first_slot, events)
    }

    /// Chooses the next token of slots `first..first + rows(logits)`, reports it, and retires
    /// the sequences that end.
    fn choose(
        &mut self,
        logits: &Tensor,
        first: usize,
        events: &mut Vec<BatchEvent>,
    ) -> Result<()> {
        let n = logits.dim(0)?;
        let seen_rows = self.seen.rows(first, n)?;
        let tokens = {
            let mut rows: Vec<ChoiceRow<'_>> = self.active[first..first + n]
                .iter_mut()
                .map(|a| ChoiceRow {
                    sampler: &mut a.sampler,
                    seen: &a.seen,
                })
                .collect();
            choose_tokens(logits, seen_rows.as_ref(), &mut rows)?
        };
        let mut ended = Vec::new();
        for (offset, token) in tokens.into_iter().enumerate() {
            let slot = first + offset;
            let active = &mut self.active[slot];
            let params = active.params();
            if params.max_new_tokens == 0 {
                ended.push((slot, FinishReason::Length));
                continue;
            }
            if params.stop_token_ids.contains(&token) {
                ended.push((slot, FinishReason::Stop));
                continue;
            }
            let full = active.tokens.len() + 1 >= params.max_new_tokens;
            active.tokens.push(token);
            active.seen.insert(token);
            active.pending = token;
            events.push(BatchEvent::Token {
                id: active.id,
                token,
            });
            if full {
                ended.push((slot, FinishReason::Length));
            }
        }
        // Highest slot first: the slot moved into a retired one is never one still to retire.
        for (slot, finish) in ended.into_iter().rev() {
            let retired = self.retire(slot)?;
            events.push(BatchEvent::Finished {
                id: retired.id,
                generated: Generated {
                    tokens: retired.tokens,
                    finish,
                },
            });
        }
        Ok(())
    }

    /// Frees `slot`; the last active sequence moves into it.
    fn retire(&mut self, slot: usize) -> Result<Active> {
        self.slots.remove(slot)?;
        self.seen.remove(slot)?;
        Ok(self.active.swap_remove(slot))
    }
}
