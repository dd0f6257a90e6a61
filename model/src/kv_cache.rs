//! Key/value caches of the decoder, preallocated and written in place.
//!
//! [`KvCache`] holds one sequence: per layer a `[1, kv_heads, capacity, head_dim]` buffer of
//! which the first `len` positions are valid. A forward pass writes its new keys and values
//! with one in-place copy per layer and attends over a view of the valid prefix, so nothing
//! is concatenated or reallocated per token (a buffer only grows when a pass would overflow it).
//!
//! [`SlotCache`] holds the sequences of a batch being decoded together: per layer one
//! `[slots, kv_heads, capacity, head_dim]` buffer, active sequences in slots `0..n` (a retired
//! sequence's slot is refilled by moving the last one into it), each with its own length. A
//! decode step writes every sequence's new position with one scatter per layer, whatever the
//! lengths.

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// Positions a growing buffer is rounded up to, so that short appends do not reallocate often.
const GROWTH_QUANTUM: usize = 256;

/// Key/value cache of one sequence, all layers.
///
/// Buffers are written in place, so a cache is never shared: [`KvCache::fork`] makes an
/// independent copy (as every question continuing a prefilled prefix needs).
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    /// Capacity the first allocation of a layer's buffer reserves at least.
    reserve: usize,
}

/// Allocates a zeroed `[batch, kv_heads, capacity, head_dim]` buffer shaped like `like`
/// (`[_, kv_heads, _, head_dim]`). Zeroed, so that masked-out positions hold finite values.
fn buffer_like(like: &Tensor, batch: usize, capacity: usize) -> Result<Tensor> {
    let (_, kv, _, hd) = like.dims4()?;
    Ok(Tensor::zeros(
        (batch, kv, capacity, hd),
        like.dtype(),
        like.device(),
    )?)
}

impl KvCache {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self::with_capacity(num_layers, 0)
    }

    /// An empty cache whose buffers, once allocated, hold at least `capacity` positions.
    pub fn with_capacity(num_layers: usize, capacity: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            len: 0,
            reserve: capacity,
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Positions the buffers hold before they must grow (0 before the first pass).
    pub fn capacity(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dims()[2])
            .unwrap_or(0)
    }

    /// Keeps only the first `len` positions (the rest is overwritten by the next pass).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// An independent copy of the first `len` positions whose buffers hold at least `capacity`
    /// positions (so that a continuation of known length never reallocates).
    pub fn fork(&self, len: usize, capacity: usize) -> Result<Self> {
        let len = len.min(self.len);
        let capacity = capacity.max(len);
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let copied = match layer {
                Some((k, v)) if len > 0 => {
                    let copy = |t: &Tensor| -> Result<Tensor> {
                        let buffer = buffer_like(t, 1, capacity)?;
                        buffer.slice_set(&t.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                        Ok(buffer)
                    };
                    Some((copy(k)?, copy(v)?))
                }
                _ => None,
            };
            layers.push(copied);
        }
        Ok(Self {
            layers,
            len,
            reserve: capacity,
        })
    }

    /// Writes `k`, `v` (`[1, kv_heads, n, head_dim]`) of `layer` after the cached positions and
    /// returns views of all valid positions including them. The length advances only with
    /// [`Self::advance`], once every layer is written.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let n = k.dim(2)?;
        let needed = self.len + n;
        let reserve = self.reserve;
        let len = self.len;
        let entry = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| Error::Input(format!("no layer {layer} in the kv cache")))?;
        let grow = match entry.as_ref() {
            None => true,
            Some((bk, _)) => bk.dims()[2] < needed,
        };
        if grow {
            let old_capacity = entry.as_ref().map(|(bk, _)| bk.dims()[2]).unwrap_or(0);
            let capacity = needed
                .next_multiple_of(GROWTH_QUANTUM)
                .max(reserve)
                .max(old_capacity + old_capacity / 2);
            let grown = |old: Option<&Tensor>, new: &Tensor| -> Result<Tensor> {
                let buffer = buffer_like(new, 1, capacity)?;
                if let Some(old) = old
                    && len > 0
                {
                    buffer.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                }
                Ok(buffer)
            };
            let (old_k, old_v) = match entry.as_ref() {
                Some((bk, bv)) => (Some(bk), Some(bv)),
                None => (None, None),
            };
            let (nk, nv) = (grown(old_k, k)?, grown(old_v, v)?);
            *entry = Some((nk, nv));
        }
        let (bk, bv) = entry
            .as_ref()
            .ok_or_else(|| Error::Input("kv cache buffer missing".into()))?;
        bk.slice_set(&k.contiguous()?, 2, len)?;
        bv.slice_set(&v.contiguous()?, 2, len)?;
        Ok((bk.narrow(2, 0, needed)?, bv.narrow(2, 0, needed)?))
    }

    /// Marks `n` more positions valid after every layer was written by [`Self::append`].
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// The `(k, v)` buffers of `layer` (`[1, kv_heads, capacity, head_dim]`), if allocated.
    fn layer(&self, layer: usize) -> Option<&(Tensor, Tensor)> {
        self.layers.get(layer).and_then(|l| l.as_ref())
    }
}

/// Key/value caches of the sequences decoded together in a batch (see the module docs).
#[derive(Debug)]
pub(crate) struct SlotCache {
    /// Per layer `[slots, kv_heads, capacity, head_dim]`; `None` until the first sequence.
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Valid positions of each active slot (active slots are `0..lens.len()`).
    lens: Vec<usize>,
}

impl SlotCache {
    pub(crate) fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            lens: Vec::new(),
        }
    }

    /// Number of active sequences.
    pub(crate) fn active(&self) -> usize {
        self.lens.len()
    }

    /// Valid positions of every active slot.
    #[cfg(test)]
    pub(crate) fn lens(&self) -> &[usize] {
        &self.lens
    }

    fn dims(&self) -> Option<(usize, usize)> {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| (k.dims()[0], k.dims()[2]))
    }

    /// Copies `cache` into a new slot (the next free one) whose buffer holds at least
    /// `positions` positions; returns the slot.
    pub(crate) fn insert(&mut self, cache: &KvCache, positions: usize) -> Result<usize> {
        if cache.is_empty() || cache.num_layers() != self.layers.len() {
            return Err(Error::Input(format!(
                "a sequence joins a batch with a prefilled cache of {} layers ({} given, {} positions)",
                self.layers.len(),
                cache.num_layers(),
                cache.len()
            )));
        }
        let slot = self.lens.len();
        let positions = positions.max(cache.len());
        let (slots, capacity) = self.dims().unwrap_or((0, 0));
        if slot >= slots || positions > capacity {
            let new_slots = if slot >= slots {
                (slots * 2).max(slot + 1)
            } else {
                slots
            };
            let new_capacity = if positions > capacity {
                positions
                    .next_multiple_of(GROWTH_QUANTUM)
                    .max(capacity + capacity / 2)
            } else {
                capacity
            };
            self.grow(cache, new_slots, new_capacity)?;
        }
        for (layer, entry) in self.layers.iter().enumerate() {
            let ((bk, bv), (k, v)) = entry
                .as_ref()
                .zip(cache.layer(layer))
                .ok_or_else(|| Error::Input(format!("layer {layer} of a kv cache is empty")))?;
            let len = cache.len();
            bk.narrow(0, slot, 1)?
                .slice_set(&k.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            bv.narrow(0, slot, 1)?
                .slice_set(&v.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
        }
        self.lens.push(cache.len());
        Ok(slot)
    }

    /// Reallocates every layer's buffers to `slots` x `capacity`, keeping the active slots.
    fn grow(&mut self, like: &KvCache, slots: usize, capacity: usize) -> Result<()> {
        let lens = self.lens.clone();
        for (layer, entry) in self.layers.iter_mut().enumerate() {
            let (like_k, like_v) = like
                .layer(layer)
                .ok_or_else(|| Error::Input(format!("layer {layer} of a kv cache is empty")))?;
            let grown = |old: Option<&Tensor>, like: &Tensor| -> Result<Tensor> {
                let buffer = buffer_like(like, slots, capacity)?;
                if let Some(old) = old {
                    for (slot, &len) in lens.iter().enumerate() {
                        let src = old.narrow(0, slot, 1)?.narrow(2, 0, len)?.contiguous()?;
                        buffer.narrow(0, slot, 1)?.slice_set(&src, 2, 0)?;
                    }
                }
                Ok(buffer)
            };
            let (old_k, old_v) = match entry.as_ref() {
                Some((k, v)) => (Some(k), Some(v)),
                None => (None, None),
            };
            let grown_pair = (grown(old_k, like_k)?, grown(old_v, like_v)?);
            *entry = Some(grown_pair);
        }
        Ok(())
    }

    /// Retires `slot`: the last active slot moves into it (returns that slot's old index when
    /// one moved, so the caller can renumber it).
    pub(crate) fn remove(&mut self, slot: usize) -> Result<Option<usize>> {
        let last = self
            .lens
            .len()
            .checked_sub(1)
            .filter(|&last| slot <= last)
            .ok_or_else(|| Error::Input(format!("no active slot {slot}")))?;
        if slot != last {
            let len = self.lens[last];
            for (bk, bv) in self.layers.iter().flatten() {
                for buffer in [bk, bv] {
                    // A copy: the source lives in the same buffer as the destination.
                    let src = buffer
                        .narrow(0, last, 1)?
                        .narrow(2, 0, len)?
                        .force_contiguous()?;
                    buffer.narrow(0, slot, 1)?.slice_set(&src, 2, 0)?;
                }
            }
        }
        self.lens.swap_remove(slot);
        Ok((slot != last).then_some(last))
    }

    /// Makes sure every active slot can take `extra` more positions.
    pub(crate) fn reserve(&mut self, extra: usize) -> Result<()> {
        let needed = self.lens.iter().max().copied().unwrap_or(0) + extra;
        let Some((slots, capacity)) = self.dims() else {
            return Ok(());
        };
        if needed <= capacity {
            return Ok(());
        }
        let capacity = needed
            .next_multiple_of(GROWTH_QUANTUM)
            .max(capacity + capacity / 2);
        let lens = self.lens.clone();
        for entry in self.layers.iter_mut() {
            let Some((k, v)) = entry.as_ref() else {
                continue;
            };
            let grown = |old: &Tensor| -> Result<Tensor> {
                let buffer = buffer_like(old, slots, capacity)?;
                for (slot, &len) in lens.iter().enumerate() {
                    let src = old.narrow(0, slot, 1)?.narrow(2, 0, len)?.contiguous()?;
                    buffer.narrow(0, slot, 1)?.slice_set(&src, 2, 0)?;
                }
                Ok(buffer)
            };
            let grown_pair = (grown(k)?, grown(v)?);
            *entry = Some(grown_pair);
        }
        Ok(())
    }

    /// Writes one new position per active slot: `k`, `v` are `[n, kv_heads, 1, head_dim]`,
    /// `index` (from [`StepLayout`]) holds each slot's write position. Returns views over the
    /// first `span` positions of the active slots.
    pub(crate) fn write_step(
        &self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
        step: &StepLayout,
    ) -> Result<(Tensor, Tensor)> {
        let (bk, bv) = self
            .layers
            .get(layer)
            .and_then(|l| l.as_ref())
            .ok_or_else(|| Error::Input(format!("no slot buffers for layer {layer}")))?;
        let n = self.lens.len();
        let (bk, bv) = (bk.narrow(0, 0, n)?, bv.narrow(0, 0, n)?);
        bk.scatter_set(&step.write_index, &k.contiguous()?, 2)?;
        bv.scatter_set(&step.write_index, &v.contiguous()?, 2)?;
        Ok((bk.narrow(2, 0, step.span)?, bv.narrow(2, 0, step.span)?))
    }

    /// Marks the position written by the last step valid in every active slot.
    pub(crate) fn advance(&mut self) {
        self.lens.iter_mut().for_each(|l| *l += 1);
    }

    /// The per-step tensors every layer shares: write positions and the padding mask.
    pub(crate) fn step_layout(
        &self,
        kv_heads: usize,
        head_dim: usize,
        device: &Device,
    ) -> Result<StepLayout> {
        let n = self.lens.len();
        let visible: Vec<u32> = self.lens.iter().map(|&l| l as u32 + 1).collect();
        let span = visible.iter().copied().max().unwrap_or(0) as usize;
        let writes: Vec<u32> = self.lens.iter().map(|&l| l as u32).collect();
        let write_index = Tensor::from_vec(writes, (n, 1, 1, 1), device)?
            .broadcast_as((n, kv_heads, 1, head_dim))?
            .contiguous()?;
        // Slots shorter than the longest see padding beyond their length: mask it out.
        let mask = if visible.iter().all(|&v| v as usize == span) {
            None
        } else {
            let visible = Tensor::from_vec(visible, (n, 1), device)?;
            let columns = Tensor::arange(0u32, span as u32, device)?.unsqueeze(0)?;
            let hidden = columns.broadcast_ge(&visible)?;
            let zeros = Tensor::zeros((n, span), DType::F32, device)?;
            let blocked = Tensor::full(f32::NEG_INFINITY, (n, span), device)?;
            Some(
                hidden
                    .where_cond(&blocked, &zeros)?
                    .reshape((n, 1, 1, span))?,
            )
        };
        Ok(StepLayout {
            write_index,
            span,
            mask,
        })
    }
}

/// What every layer of one batched decode step shares.
#[derive(Debug)]
pub(crate) struct StepLayout {
    /// `[n, kv_heads, 1, head_dim]` u32: each slot's write position.
    pub(crate) write_index: Tensor,
    /// Positions attended over (the longest slot's, including the new one).
    pub(crate) span: usize,
    /// `[n, 1, 1, span]` f32 additive mask hiding each slot's padding, `None` when all slots
    /// have the same length.
    pub(crate) mask: Option<Tensor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(value: f32, n: usize) -> Tensor {
        Tensor::full(value, (1, 2, n, 4), &Device::Cpu).unwrap()
    }

    #[test]
    fn appends_are_written_in_place_and_forks_are_independent() {
        let mut cache = KvCache::with_capacity(1, 8);
        cache.append(0, &filled(1.0, 5), &filled(2.0, 5)).unwrap();
        cache.advance(5);
        assert_eq!((cache.len(), cache.capacity()), (5, GROWTH_QUANTUM));
        let fork = cache.fork(3, 4).unwrap();
        let (k, _) = cache.append(0, &filled(3.0, 1), &filled(4.0, 1)).unwrap();
        cache.advance(1);
        assert_eq!(k.dims(), &[1, 2, 6, 4]);
        let last: Vec<f32> = k
            .narrow(2, 5, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(last.iter().all(|&x| x == 3.0));
        assert_eq!(fork.len(), 3);
        let forked = fork.layer(0).unwrap().0.narrow(2, 0, 3).unwrap();
        assert_eq!(forked.sum_all().unwrap().to_scalar::<f32>().unwrap(), 24.0);
        cache.truncate(2);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn slots_write_each_sequence_at_its_own_length_and_refill_retired_slots() {
        let mut long = KvCache::new(1);
        long.append(0, &filled(1.0, 5), &filled(1.0, 5)).unwrap();
        long.advance(5);
        let mut short = KvCache::new(1);
        short.append(0, &filled(2.0, 2), &filled(2.0, 2)).unwrap();
        short.advance(2);
        let mut slots = SlotCache::new(1);
        assert_eq!(slots.insert(&long, 8).unwrap(), 0);
        assert_eq!(slots.insert(&short, 8).unwrap(), 1);
        let step = slots.step_layout(2, 4, &Device::Cpu).unwrap();
        assert_eq!(step.span, 6);
        let mask: Vec<Vec<f32>> = step
            .mask
            .as_ref()
            .unwrap()
            .reshape((2, 6))
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(mask[0], vec![0.0; 6]);
        assert_eq!(&mask[1][..3], &[0.0; 3]);
        assert!(mask[1][3..].iter().all(|x| x.is_infinite()));
        let new = Tensor::cat(&[filled(7.0, 1), filled(9.0, 1)], 0).unwrap();
        let (k, _) = slots.write_step(0, &new, &new, &step).unwrap();
        slots.advance();
        assert_eq!(slots.lens(), &[6, 3]);
        let row = |slot: usize, pos: usize| -> f32 {
            k.narrow(0, slot, 1)
                .unwrap()
                .narrow(2, pos, 1)
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert_eq!((row(0, 5), row(1, 2), row(1, 1)), (7.0, 9.0, 2.0));
        assert_eq!(slots.remove(0).unwrap(), Some(1));
        assert_eq!(slots.lens(), &[3]);
        let (k, _) = slots.layers[0].as_ref().unwrap();
        let moved = k
            .narrow(0, 0, 1)
            .unwrap()
            .narrow(2, 2, 1)
            .unwrap()
            .mean_all()
            .unwrap();
        assert_eq!(moved.to_scalar::<f32>().unwrap(), 9.0);
    }
}
