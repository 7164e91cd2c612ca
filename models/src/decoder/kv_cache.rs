//! The paged KV cache a decoder reads and writes, owned by whoever schedules sequences (the engine).
//!
//! Why paged blocks rather than one growing buffer per sequence: sequences join and leave the running
//! batch at every step, and with fixed-size blocks from one pool their memory is reused without
//! fragmentation or copies, the scheduler can account for memory exactly (a sequence needs
//! `ceil(len / block_size)` blocks), and one attention call serves sequences at any positions.

use crate::decoder::DecoderConfig;
use crate::error::{ModelError, Result};
use candle_core::{DType, Device, Tensor};

/// One layer's keys and values: `[num_blocks, block_size, kv_heads, head_dim]` each.
#[derive(Debug)]
pub(crate) struct LayerCache {
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
}

/// A pool of fixed-size KV blocks shared by all sequences of one model.
#[derive(Debug)]
pub struct KvCache {
    block_size: usize,
    num_blocks: usize,
    kv_dim: usize,
    /// Host layers (CPU decoding); empty when the cache is on a device.
    pub(crate) layers: Vec<LayerCache>,
    /// Device layers: `(keys, values)`, each `[num_blocks * block_size, kv_dim]` f32; empty on the CPU.
    pub(crate) device_layers: Vec<(Tensor, Tensor)>,
    free: Vec<u32>,
}

/// The blocks one sequence owns, in position order.
#[derive(Debug, Default)]
pub struct BlockTable {
    blocks: Vec<u32>,
}

impl BlockTable {
    /// The block ids, in position order.
    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }
}

impl KvCache {
    /// A cache of `num_blocks` blocks of `block_size` positions for `config`'s layers.
    pub fn new(config: &DecoderConfig, block_size: usize, num_blocks: usize) -> Result<Self> {
        if block_size == 0 || num_blocks == 0 {
            return Err(ModelError::Config(
                "KV cache needs a non-zero block size and block count".into(),
            ));
        }
        let kv_dim = config.kv_dim();
        let len = num_blocks * block_size * kv_dim;
        let layers = (0..config.num_layers)
            .map(|_| LayerCache {
                k: vec![0f32; len],
                v: vec![0f32; len],
            })
            .collect();
        Ok(Self {
            block_size,
            num_blocks,
            kv_dim,
            layers,
            device_layers: Vec::new(),
            free: (0..num_blocks as u32).rev().collect(),
        })
    }

    /// A cache like [`KvCache::new`] whose memory lives on `device` (the CPU gives a host cache), for a
    /// decoder moved there with `Decoder::to_device`.
    pub fn new_on(
        config: &DecoderConfig,
        block_size: usize,
        num_blocks: usize,
        device: &Device,
    ) -> Result<Self> {
        if device.is_cpu() {
            return Self::new(config, block_size, num_blocks);
        }
        if block_size == 0 || num_blocks == 0 {
            return Err(ModelError::Config(
                "KV cache needs a non-zero block size and block count".into(),
            ));
        }
        let kv_dim = config.kv_dim();
        let shape = (num_blocks * block_size, kv_dim);
        let device_layers = (0..config.num_layers)
            .map(|_| {
                Ok((
                    Tensor::zeros(shape, DType::F32, device)?,
                    Tensor::zeros(shape, DType::F32, device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            block_size,
            num_blocks,
            kv_dim,
            layers: Vec::new(),
            device_layers,
            free: (0..num_blocks as u32).rev().collect(),
        })
    }

    /// Layers this cache holds.
    pub fn num_layers(&self) -> usize {
        self.layers.len().max(self.device_layers.len())
    }

    /// Bytes one cached position takes across all layers (keys and values).
    pub fn bytes_per_position(config: &DecoderConfig) -> usize {
        2 * config.num_layers * config.kv_dim() * std::mem::size_of::<f32>()
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Total blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Blocks not owned by any sequence.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Blocks a sequence of `len` positions needs.
    pub fn blocks_for(&self, len: usize) -> usize {
        len.div_ceil(self.block_size)
    }

    /// Grows `table` to hold `len` positions; returns false (taking nothing) if the pool is short.
    pub fn reserve(&mut self, table: &mut BlockTable, len: usize) -> bool {
        let needed = self.blocks_for(len).saturating_sub(table.blocks.len());
        if needed > self.free.len() {
            return false;
        }
        let at = self.free.len() - needed;
        table.blocks.extend(self.free.drain(at..));
        true
    }

    /// Returns every block of `table` to the pool.
    pub fn release(&mut self, table: &mut BlockTable) {
        self.free.append(&mut table.blocks);
    }

    /// Width of one position's keys (or values) in one layer.
    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoder::{Family, RopeStyle};

    fn config() -> DecoderConfig {
        DecoderConfig {
            family: Family::Llama,
            vocab_size: 8,
            hidden_size: 8,
            intermediate_size: 8,
            num_layers: 2,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 1e4,
            rope_scaling: None,
            rope_style: RopeStyle::HalfSplit,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
        }
    }

    #[test]
    fn reserve_and_release_account_for_blocks() {
        let mut cache = KvCache::new(&config(), 4, 5).unwrap();
        let mut a = BlockTable::default();
        let mut b = BlockTable::default();
        assert!(cache.reserve(&mut a, 9)); // 3 blocks
        assert_eq!(a.blocks().len(), 3);
        assert!(cache.reserve(&mut a, 12)); // still 3
        assert_eq!(cache.free_blocks(), 2);
        assert!(!cache.reserve(&mut b, 12)); // needs 3, only 2 left: takes nothing
        assert_eq!(cache.free_blocks(), 2);
        assert!(b.blocks().is_empty());
        cache.release(&mut a);
        assert_eq!(cache.free_blocks(), 5);
        assert!(cache.reserve(&mut b, 20));
        let mut ids = b.blocks().to_vec();
        ids.sort();
        assert_eq!(ids, vec![0, 1, 2, 3, 4]);
    }
}
