//! The paged KV cache a decoder reads and writes, owned by whoever schedules sequences (the engine).
//!
//! Why paged blocks rather than one growing buffer per sequence: sequences join and leave the running
//! batch at every step, and with fixed-size blocks from one pool their memory is reused without
//! fragmentation or copies, the scheduler can account for memory exactly (a sequence needs
//! `ceil(len / block_size)` blocks), one attention call serves sequences at any positions, and
//! sequences that start with the same tokens can share the blocks of that prefix
//! ([`KvCache::share_prefix`]; the bookkeeping is in `block_pool.rs`).

use crate::decoder::block_pool::BlockPool;
pub use crate::decoder::block_pool::BlockTable;
use crate::decoder::DecoderConfig;
use crate::error::{ModelError, Result};
use crate::weights::advise_large_buffer;
use candle_core::{DType, Device, Tensor};
use half::f16;
use half::vec::HalfBitsVecExt;
use switchyard_kernels::attention::{paged_attention, AttentionShape, CacheElement, SequenceSpan};

/// The element type of a KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// Exact: what the reference implementations compute (the default).
    #[default]
    F32,
    /// Half the memory, and half the bytes a decode step reads at long contexts; keys and values
    /// rounded to f16 as llama.cpp stores them by default. Host caches only.
    F16,
}

impl KvDtype {
    /// Bytes of one element.
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

/// One layer's keys and values: `[num_blocks, block_size, kv_heads, head_dim]` each.
#[derive(Debug)]
pub(crate) enum LayerCache {
    F32 { k: Vec<f32>, v: Vec<f32> },
    F16 { k: Vec<f16>, v: Vec<f16> },
}

impl LayerCache {
    fn new(dtype: KvDtype, len: usize) -> Self {
        let mut layer = Self::zeroed(dtype, len);
        match &mut layer {
            LayerCache::F32 { k, v } => {
                advise_large_buffer(k);
                advise_large_buffer(v);
            }
            LayerCache::F16 { k, v } => {
                advise_large_buffer(k);
                advise_large_buffer(v);
            }
        }
        layer
    }

    fn zeroed(dtype: KvDtype, len: usize) -> Self {
        match dtype {
            KvDtype::F32 => LayerCache::F32 {
                k: vec![0.0; len],
                v: vec![0.0; len],
            },
            // Zeroed u16s come from the allocator's zeroed pages (touched only when written);
            // `vec![f16::ZERO; len]` would write every element up front.
            KvDtype::F16 => LayerCache::F16 {
                k: vec![0u16; len].reinterpret_into(),
                v: vec![0u16; len].reinterpret_into(),
            },
        }
    }

    /// Stores one position's keys and values (`kv_dim` each) at element offset `at`.
    pub(crate) fn write(&mut self, at: usize, k: &[f32], v: &[f32]) {
        fn put<T: CacheElement>(cache: &mut [T], at: usize, row: &[f32]) {
            T::store(&mut cache[at..at + row.len()], row);
        }
        match self {
            LayerCache::F32 { k: kc, v: vc } => {
                put(kc, at, k);
                put(vc, at, v);
            }
            LayerCache::F16 { k: kc, v: vc } => {
                put(kc, at, k);
                put(vc, at, v);
            }
        }
    }

    /// Attention of `q` over this layer ([`paged_attention`]).
    pub(crate) fn attend(
        &self,
        q: &[f32],
        spans: &[SequenceSpan],
        shape: AttentionShape,
        scale: f32,
        out: &mut [f32],
    ) -> switchyard_kernels::error::Result<()> {
        match self {
            LayerCache::F32 { k, v } => paged_attention(q, k, v, spans, shape, scale, out),
            LayerCache::F16 { k, v } => paged_attention(q, k, v, spans, shape, scale, out),
        }
    }
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
    pool: BlockPool,
}

impl KvCache {
    /// A cache of `num_blocks` blocks of `block_size` positions for `config`'s layers.
    pub fn new(config: &DecoderConfig, block_size: usize, num_blocks: usize) -> Result<Self> {
        Self::host(config, block_size, num_blocks, KvDtype::F32)
    }

    /// A host cache of `dtype` elements.
    fn host(
        config: &DecoderConfig,
        block_size: usize,
        num_blocks: usize,
        dtype: KvDtype,
    ) -> Result<Self> {
        if block_size == 0 || num_blocks == 0 {
            return Err(ModelError::Config(
                "KV cache needs a non-zero block size and block count".into(),
            ));
        }
        let kv_dim = config.kv_dim();
        let len = num_blocks * block_size * kv_dim;
        let layers = (0..config.num_layers)
            .map(|_| LayerCache::new(dtype, len))
            .collect();
        Ok(Self {
            block_size,
            num_blocks,
            kv_dim,
            layers,
            device_layers: Vec::new(),
            pool: BlockPool::new(block_size, num_blocks),
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
        Self::with_dtype(config, block_size, num_blocks, device, KvDtype::F32)
    }

    /// [`KvCache::new_on`] with `dtype` elements (f16 on the host only).
    pub fn with_dtype(
        config: &DecoderConfig,
        block_size: usize,
        num_blocks: usize,
        device: &Device,
        dtype: KvDtype,
    ) -> Result<Self> {
        if device.is_cpu() {
            return Self::host(config, block_size, num_blocks, dtype);
        }
        if dtype != KvDtype::F32 {
            return Err(ModelError::Config(format!(
                "a {dtype:?} KV cache is host-only for now; use f32 on {device:?}"
            )));
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
            pool: BlockPool::new(block_size, num_blocks),
        })
    }

    /// Layers this cache holds.
    pub fn num_layers(&self) -> usize {
        self.layers.len().max(self.device_layers.len())
    }

    /// Bytes one cached position takes across all layers (keys and values) in `dtype`.
    pub fn bytes_per_position(config: &DecoderConfig, dtype: KvDtype) -> usize {
        2 * config.num_layers * config.kv_dim() * dtype.size()
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Total blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Blocks no sequence holds (blank ones and idle cached prefixes, which are reused last).
    pub fn free_blocks(&self) -> usize {
        self.pool.available()
    }

    /// Blocks no sequence holds that keep a prefix for later sequences to share.
    pub fn cached_blocks(&self) -> usize {
        self.pool.idle()
    }

    /// Blocks a sequence of `len` positions needs.
    pub fn blocks_for(&self, len: usize) -> usize {
        len.div_ceil(self.block_size)
    }

    /// Turns automatic prefix caching on or off (off by default; off forgets every cached prefix).
    pub fn set_prefix_caching(&mut self, on: bool) {
        self.pool.set_caching(on);
    }

    /// Forgets every block's owner and every cached prefix: all blocks are blank again (after a
    /// failure that left the tables referring to them in a state nothing vouches for).
    pub fn clear(&mut self) {
        let caching = self.pool.caching();
        self.pool = BlockPool::new(self.block_size, self.num_blocks);
        self.pool.set_caching(caching);
    }

    /// Grows `table` to hold `len` positions; returns false (taking nothing) if the pool is short.
    pub fn reserve(&mut self, table: &mut BlockTable, len: usize) -> bool {
        self.pool.reserve(table, self.blocks_for(len))
    }

    /// Returns every block of `table` to the pool (blocks other sequences share stay theirs).
    pub fn release(&mut self, table: &mut BlockTable) {
        self.pool.release(table);
    }

    /// With prefix caching on, gives an empty `table` the cached blocks that already hold the
    /// start of `tokens` and returns how many positions they cover (a multiple of the block size,
    /// less than `tokens.len()`); computing can start there.
    pub fn share_prefix(&mut self, table: &mut BlockTable, tokens: &[u32]) -> usize {
        self.pool.share_prefix(table, tokens)
    }

    /// How many positions [`Self::share_prefix`] would give `tokens` now, without taking them.
    pub fn cached_prefix(&self, tokens: &[u32]) -> usize {
        self.pool.cached_prefix(tokens)
    }

    /// With prefix caching on, offers `table`'s blocks that the first `computed` positions of
    /// `tokens` fill to later sequences ([`Self::share_prefix`]). Call it after each step that
    /// wrote them.
    pub fn commit(&mut self, table: &mut BlockTable, tokens: &[u32], computed: usize) {
        self.pool.commit(table, tokens, computed);
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

    /// Resident bytes of this process (Linux).
    #[cfg(target_os = "linux")]
    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_new_cache_takes_memory_only_as_it_is_written() {
        // 2 layers of keys and values for 16 Mi positions of width 4: 512 MiB in f16, 1 GiB in f32.
        for dtype in [KvDtype::F16, KvDtype::F32] {
            let before = resident_bytes();
            let cache =
                KvCache::with_dtype(&config(), 1 << 12, 1 << 12, &Device::Cpu, dtype).unwrap();
            let grew = resident_bytes().saturating_sub(before);
            assert!(
                grew < 32 << 20,
                "{dtype:?}: resident memory grew {grew} bytes"
            );
            drop(cache);
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
