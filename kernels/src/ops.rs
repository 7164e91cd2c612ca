//! The decoder's custom ops on Candle tensors, on whichever device the tensors live.
//!
//! Each op is a Candle custom op whose CPU forward is the slice kernel of this crate (its *CPU twin*)
//! and whose CUDA forward (feature `cuda`) launches the matching kernel of `src/cuda/ops.cu` on Candle's
//! stream for that device. So a model written against these functions runs on either device, and a
//! test can run the same call on a CPU tensor and on a CUDA tensor and compare.
//!
//! All ops work on contiguous f32 tensors (the decoder's activations and KV cache are f32).

use crate::attention::{paged_attention as paged_attention_cpu, write_kv as write_kv_cpu};
use crate::error::{checked_size, KernelError, Result};
use crate::norm;
use crate::rotary::{rotary_in_place as rotary_cpu, RotaryStyle};
use crate::{AttentionShape, SequenceSpan};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, InplaceOp3, Layout};
use candle_core::{Shape, Tensor};

type CResult<T> = candle_core::Result<T>;

fn wrap(e: KernelError) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

fn offsets(l: &Layout, what: &str) -> CResult<(usize, usize)> {
    l.contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} must be contiguous")))
}

fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> CResult<&'a [f32]> {
    let (a, b) = offsets(l, what)?;
    match s {
        CpuStorage::F32(v) => Ok(&v[a..b]),
        other => Err(candle_core::Error::Msg(format!(
            "{what} must be f32, got {:?}",
            other.dtype()
        ))),
    }
}

fn cpu_f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> CResult<&'a mut [f32]> {
    let (a, b) = offsets(l, what)?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        other => Err(candle_core::Error::Msg(format!(
            "{what} must be f32, got {:?}",
            other.dtype()
        ))),
    }
}

fn cpu_u32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> CResult<&'a [u32]> {
    let (a, b) = offsets(l, what)?;
    match s {
        CpuStorage::U32(v) => Ok(&v[a..b]),
        other => Err(candle_core::Error::Msg(format!(
            "{what} must be u32, got {:?}",
            other.dtype()
        ))),
    }
}

fn check_f32(t: &Tensor, what: &'static str) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(KernelError::Tensor(format!(
            "{what} must be f32, got {:?}",
            t.dtype()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// RMSNorm

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "switchyard-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, "RMSNorm input")?;
        let w = cpu_f32(s2, l2, "RMSNorm weight")?;
        let mut out = vec![0f32; x.len()];
        norm::rms_norm(x, w, self.eps, &mut out).map_err(wrap)?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        let x = cuda::view(s1, l1, "RMSNorm input")?;
        let w = cuda::view(s2, l2, "RMSNorm weight")?;
        let dev = s1.device.clone();
        let mut out = unsafe { dev.alloc::<f32>(x.len()) }?;
        cuda::rms_norm(&dev, &x, None, &w, self.eps, None, &mut out.slice_mut(..))?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev),
            l1.shape().clone(),
        ))
    }
}

/// `x / sqrt(mean(x²) + eps) * weight` over the last dimension (`weight`'s length).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    check_f32(x, "RMSNorm input")?;
    check_f32(weight, "RMSNorm weight")?;
    Ok(x.apply_op2_no_bwd(weight, &RmsNorm { eps })?)
}

struct AddRmsNorm {
    eps: f32,
}

impl CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "switchyard-add-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = cpu_f32(s1, l1, "RMSNorm input")?;
        let r = cpu_f32(s2, l2, "RMSNorm residual")?;
        let w = cpu_f32(s3, l3, "RMSNorm weight")?;
        let n = x.len();
        // Output [2, ..x's shape]: the sum, then its norm.
        let mut out = vec![0f32; 2 * n];
        let (sum, normed) = out.split_at_mut(n);
        sum.copy_from_slice(x);
        norm::add_rms_norm(sum, r, w, self.eps, normed).map_err(wrap)?;
        Ok((CpuStorage::F32(out), stacked_shape(l1)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        let x = cuda::view(s1, l1, "RMSNorm input")?;
        let r = cuda::view(s2, l2, "RMSNorm residual")?;
        let w = cuda::view(s3, l3, "RMSNorm weight")?;
        let dev = s1.device.clone();
        let n = x.len();
        let mut out = unsafe { dev.alloc::<f32>(2 * n) }?;
        {
            let (mut sum, mut normed) = out.split_at_mut(n);
            cuda::rms_norm(
                &dev,
                &x,
                Some(&r),
                &w,
                self.eps,
                Some(&mut sum),
                &mut normed,
            )?;
        }
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev),
            stacked_shape(l1),
        ))
    }
}

fn stacked_shape(l: &Layout) -> Shape {
    let mut dims = vec![2];
    dims.extend_from_slice(l.dims());
    Shape::from(dims)
}

/// The residual step of a pre-norm block in one kernel: returns `(x + residual, rms_norm(x + residual))`.
pub fn add_rms_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    check_f32(x, "RMSNorm input")?;
    check_f32(residual, "RMSNorm residual")?;
    check_f32(weight, "RMSNorm weight")?;
    if x.dims() != residual.dims() {
        return Err(KernelError::Tensor(format!(
            "residual shape {:?} differs from input {:?}",
            residual.dims(),
            x.dims()
        )));
    }
    let both = x.apply_op3_no_bwd(residual, weight, &AddRmsNorm { eps })?;
    Ok((both.get(0)?, both.get(1)?))
}

// ---------------------------------------------------------------------------------------------------
// Rotary

struct Rotary {
    head_dim: usize,
    style: RotaryStyle,
}

impl InplaceOp3 for Rotary {
    fn name(&self) -> &'static str {
        "switchyard-rotary"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<()> {
        let x = cpu_f32_mut(s1, l1, "rotary input")?;
        let c = cpu_f32(s2, l2, "rotary cos")?;
        let s = cpu_f32(s3, l3, "rotary sin")?;
        rotary_cpu(x, c, s, self.head_dim, self.style).map_err(wrap)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> CResult<()> {
        let dev = s1.device.clone();
        let c = cuda::view(s2, l2, "rotary cos")?;
        let s = cuda::view(s3, l3, "rotary sin")?;
        let mut x = cuda::view_mut(s1, l1, "rotary input")?;
        cuda::rotary(&dev, &mut x, &c, &s, self.head_dim, self.style)
    }
}

/// Rotates `x = [rows, heads * head_dim]` in place with per-row tables `cos`/`sin = [rows, head_dim/2]`.
pub fn rotary_in_place(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    head_dim: usize,
    style: RotaryStyle,
) -> Result<()> {
    check_f32(x, "rotary input")?;
    check_f32(cos, "rotary cos")?;
    check_f32(sin, "rotary sin")?;
    let half = head_dim / 2;
    let rows = cos.elem_count() / half.max(1);
    if head_dim == 0
        || !head_dim.is_multiple_of(2)
        || cos.dims() != sin.dims()
        || rows * half != cos.elem_count()
        || rows == 0
        || !x.elem_count().is_multiple_of(rows * head_dim)
    {
        return Err(KernelError::Tensor(format!(
            "rotary shapes disagree: x {:?}, cos {:?}, sin {:?}, head_dim {head_dim}",
            x.dims(),
            cos.dims(),
            sin.dims()
        )));
    }
    Ok(x.inplace_op3(cos, sin, &Rotary { head_dim, style })?)
}

// ---------------------------------------------------------------------------------------------------
// KV cache writes

struct WriteKv {
    width: usize,
}

impl InplaceOp3 for WriteKv {
    fn name(&self) -> &'static str {
        "switchyard-write-kv"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<()> {
        let cache = cpu_f32_mut(s1, l1, "KV cache")?;
        let src = cpu_f32(s2, l2, "new keys/values")?;
        let slots = cpu_u32(s3, l3, "cache slots")?;
        write_kv_cpu(src, cache, slots, self.width).map_err(wrap)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> CResult<()> {
        let dev = s1.device.clone();
        let src = cuda::view(s2, l2, "new keys/values")?;
        let slots = cuda::view_u32(s3, l3, "cache slots")?;
        let mut cache = cuda::view_mut(s1, l1, "KV cache")?;
        cuda::write_kv(&dev, &src, &mut cache, &slots, self.width)
    }
}

/// Writes rows of `src = [rows, width]` into `cache = [slots_total, width]` at `slots` (u32, one per row).
///
/// Slots must be in range (`< cache rows`); checked here against the host copy the caller keeps, so pass
/// `max_slot` (the largest slot in `slots`) to let the check run without reading device memory. The
/// device checks every slot too: a row whose slot is past the cache (a wrong `max_slot`) is not written.
pub fn write_kv(cache: &Tensor, src: &Tensor, slots: &Tensor, max_slot: u32) -> Result<()> {
    check_f32(cache, "KV cache")?;
    check_f32(src, "new keys/values")?;
    if slots.dtype() != DType::U32 {
        return Err(KernelError::Tensor("cache slots must be u32".into()));
    }
    let width = *cache.dims().last().unwrap_or(&0);
    let capacity = cache.elem_count() / width.max(1);
    if width == 0 || src.elem_count() != slots.elem_count() * width {
        return Err(KernelError::Length {
            what: "new keys/values (one cache-wide row per slot)",
            expected: slots.elem_count() * width,
            actual: src.elem_count(),
        });
    }
    if slots.elem_count() > 0 && max_slot as usize >= capacity {
        return Err(KernelError::Length {
            what: "cache slot",
            expected: capacity,
            actual: max_slot as usize,
        });
    }
    Ok(cache.inplace_op3(src, slots, &WriteKv { width })?)
}

// ---------------------------------------------------------------------------------------------------
// Paged attention

#[derive(Debug)]
struct OwnedSpan {
    first_row: usize,
    rows: usize,
    start_position: usize,
    blocks: Vec<u32>,
}

/// The most positions a sequence may have on the device (positions are u32 there, and a loop over
/// them must not wrap).
pub const MAX_DEVICE_POSITIONS: usize = i32::MAX as usize;

/// Where every query row of a ragged batch sits: built once per forward step (it uploads three small
/// u32 arrays to the device) and shared by every layer's [`paged_attention`] call.
#[derive(Debug)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct AttentionMeta {
    spans: Vec<OwnedSpan>,
    rows: usize,
    block_size: usize,
    max_block: u32,
    /// `[rows]`: absolute position of each row.
    row_pos: Tensor,
    /// `[rows]`: offset of each row's block table in `tables`.
    row_table: Tensor,
    /// The block tables (the blocks each sequence uses), concatenated.
    tables: Tensor,
}

impl AttentionMeta {
    /// Checks `spans` (contiguous, in order, block tables long enough) and puts them on `device`.
    pub fn new(spans: &[SequenceSpan], block_size: usize, device: &Device) -> Result<Self> {
        if block_size == 0 {
            return Err(KernelError::Tensor("block size must be non-zero".into()));
        }
        let mut owned = Vec::with_capacity(spans.len());
        let (mut row_pos, mut row_table, mut tables) = (Vec::new(), Vec::new(), Vec::new());
        let mut max_block = 0u32;
        for span in spans {
            if span.first_row != row_pos.len() {
                return Err(KernelError::Length {
                    what: "first row of span (spans must be contiguous and in order)",
                    expected: row_pos.len(),
                    actual: span.first_row,
                });
            }
            // Positions are u32 on the device, whose loops count up to a row's position: keep
            // every one well inside it (a wrapped sum would pass the block-table check below).
            let end = span
                .start_position
                .checked_add(span.rows)
                .filter(|&end| end <= MAX_DEVICE_POSITIONS)
                .ok_or(KernelError::Overflow {
                    what: "attention positions",
                })?;
            let needed = end.div_ceil(block_size);
            if span.blocks.len() < needed {
                return Err(KernelError::Length {
                    what: "block table entries",
                    expected: needed,
                    actual: span.blocks.len(),
                });
            }
            let offset = u32::try_from(tables.len()).map_err(|_| KernelError::Overflow {
                what: "block table entries",
            })?;
            tables.extend_from_slice(&span.blocks[..needed]);
            max_block = max_block.max(span.blocks[..needed].iter().copied().max().unwrap_or(0));
            for i in 0..span.rows {
                row_pos.push((span.start_position + i) as u32);
                row_table.push(offset);
            }
            owned.push(OwnedSpan {
                first_row: span.first_row,
                rows: span.rows,
                start_position: span.start_position,
                blocks: span.blocks[..needed].to_vec(),
            });
        }
        let rows = row_pos.len();
        // Never hand the device a zero-length buffer.
        tables.push(0);
        let n = rows.max(1);
        row_pos.resize(n, 0);
        row_table.resize(n, 0);
        Ok(Self {
            spans: owned,
            rows,
            block_size,
            max_block,
            row_pos: Tensor::from_vec(row_pos, n, device)?,
            row_table: Tensor::from_vec(row_table, n, device)?,
            tables: Tensor::from_vec(tables.clone(), tables.len(), device)?,
        })
    }

    /// Query rows in the batch.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

struct PagedAttention<'a> {
    meta: &'a AttentionMeta,
    shape: AttentionShape,
    scale: f32,
}

impl CustomOp3 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "switchyard-paged-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let q = cpu_f32(s1, l1, "queries")?;
        let k = cpu_f32(s2, l2, "key cache")?;
        let v = cpu_f32(s3, l3, "value cache")?;
        let spans: Vec<SequenceSpan> = self
            .meta
            .spans
            .iter()
            .map(|s| SequenceSpan {
                first_row: s.first_row,
                rows: s.rows,
                start_position: s.start_position,
                blocks: &s.blocks,
            })
            .collect();
        let mut out = vec![0f32; q.len()];
        paged_attention_cpu(q, k, v, &spans, self.shape, self.scale, &mut out).map_err(wrap)?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> CResult<(candle_core::CudaStorage, Shape)> {
        let q = cuda::view(s1, l1, "queries")?;
        let k = cuda::view(s2, l2, "key cache")?;
        let v = cuda::view(s3, l3, "value cache")?;
        let dev = s1.device.clone();
        let mut out = unsafe { dev.alloc::<f32>(q.len()) }?;
        let (pos_s, pos_l) = self.meta.row_pos.storage_and_layout();
        let (tab_s, tab_l) = self.meta.row_table.storage_and_layout();
        let (tables_s, tables_l) = self.meta.tables.storage_and_layout();
        let (
            candle_core::Storage::Cuda(pos_s),
            candle_core::Storage::Cuda(tab_s),
            candle_core::Storage::Cuda(tables_s),
        ) = (&*pos_s, &*tab_s, &*tables_s)
        else {
            candle_core::bail!("attention metadata is not on the CUDA device");
        };
        let row_pos = cuda::view_u32(pos_s, pos_l, "row positions")?;
        let row_table = cuda::view_u32(tab_s, tab_l, "row tables")?;
        let tables = cuda::view_u32(tables_s, tables_l, "block tables")?;
        cuda::paged_attention(
            &dev,
            &q,
            &k,
            &v,
            &mut out,
            &row_pos,
            &row_table,
            &tables,
            self.meta.rows,
            self.shape,
            self.scale,
        )?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev),
            l1.shape().clone(),
        ))
    }
}

/// Causal attention of `q = [rows, heads * head_dim]` over one layer's paged cache
/// (`[num_blocks * block_size, kv_heads * head_dim]` keys and values), rows placed by `meta`.
pub fn paged_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    meta: &AttentionMeta,
    shape: AttentionShape,
    scale: f32,
) -> Result<Tensor> {
    check_f32(q, "queries")?;
    check_f32(k_cache, "key cache")?;
    check_f32(v_cache, "value cache")?;
    let width = shape.heads * shape.head_dim;
    if shape.kv_heads == 0 || !shape.heads.is_multiple_of(shape.kv_heads) {
        return Err(KernelError::Length {
            what: "attention heads per key/value head",
            expected: shape.kv_heads,
            actual: shape.heads,
        });
    }
    if shape.block_size != meta.block_size {
        return Err(KernelError::Length {
            what: "block size of the attention metadata",
            expected: shape.block_size,
            actual: meta.block_size,
        });
    }
    if q.elem_count() != meta.rows * width {
        return Err(KernelError::Length {
            what: "attention queries",
            expected: meta.rows * width,
            actual: q.elem_count(),
        });
    }
    if k_cache.dims() != v_cache.dims() {
        return Err(KernelError::Tensor(
            "key and value caches differ in shape".into(),
        ));
    }
    let block_elems = checked_size(
        "cache block",
        &[shape.kv_heads, shape.head_dim, shape.block_size],
    )?;
    if block_elems == 0 {
        return Err(KernelError::Tensor(
            "attention head dimension and block size must be non-zero".into(),
        ));
    }
    let cache_blocks = k_cache.elem_count() / block_elems;
    if meta.rows > 0 && meta.max_block as usize >= cache_blocks {
        return Err(KernelError::Length {
            what: "cache block index",
            expected: cache_blocks,
            actual: meta.max_block as usize,
        });
    }
    if meta.rows == 0 {
        return Ok(q.clone());
    }
    // The kernel reads the metadata's device pointers beside the caches': one device for all.
    if !meta.row_pos.device().same_device(q.device())
        || !k_cache.device().same_device(q.device())
        || !v_cache.device().same_device(q.device())
    {
        return Err(KernelError::Tensor(
            "queries, caches and attention metadata must be on one device".into(),
        ));
    }
    Ok(q.apply_op3_no_bwd(k_cache, v_cache, &PagedAttention { meta, shape, scale })?)
}

// ---------------------------------------------------------------------------------------------------
// CUDA launches

#[cfg(feature = "cuda")]
mod cuda {
    use super::CResult;
    use crate::rotary::RotaryStyle;
    use crate::AttentionShape;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, CudaViewMut, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDevice, WrapErr};
    use candle_core::{CudaStorage, Layout};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/switchyard_ops.ptx"));
    const MODULE: &str = "switchyard_ops";

    pub(super) fn view<'a>(
        s: &'a CudaStorage,
        l: &Layout,
        what: &str,
    ) -> CResult<CudaView<'a, f32>> {
        let (a, b) = super::offsets(l, what)?;
        Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
    }

    pub(super) fn view_u32<'a>(
        s: &'a CudaStorage,
        l: &Layout,
        what: &str,
    ) -> CResult<CudaView<'a, u32>> {
        let (a, b) = super::offsets(l, what)?;
        Ok(s.as_cuda_slice::<u32>()?.slice(a..b))
    }

    pub(super) fn view_mut<'a>(
        s: &'a mut CudaStorage,
        l: &Layout,
        what: &str,
    ) -> CResult<CudaViewMut<'a, f32>> {
        let (a, b) = super::offsets(l, what)?;
        Ok(s.as_cuda_slice_mut::<f32>()?.slice_mut(a..b))
    }

    fn grid_1d(total: usize, threads: u32) -> LaunchConfig {
        let blocks = total.div_ceil(threads as usize).clamp(1, 1 << 20) as u32;
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn int(v: usize, what: &str) -> CResult<i32> {
        i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what} {v} exceeds i32")))
    }

    /// `out = rms_norm(x (+ residual))`, writing the sum to `sum_out` when given.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rms_norm(
        dev: &CudaDevice,
        x: &CudaView<f32>,
        residual: Option<&CudaView<f32>>,
        w: &CudaView<f32>,
        eps: f32,
        sum_out: Option<&mut CudaViewMut<f32>>,
        out: &mut CudaViewMut<f32>,
    ) -> CResult<()> {
        let cols = w.len();
        if cols == 0 || x.len() % cols != 0 || out.len() != x.len() {
            candle_core::bail!("RMSNorm: input {} is not rows of {cols}", x.len());
        }
        let rows = x.len() / cols;
        if rows == 0 {
            return Ok(());
        }
        let f = dev.get_or_load_custom_func("rms_norm_f32", MODULE, PTX)?;
        let threads = (cols.div_ceil(32) * 32).clamp(32, 256) as u32;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let null = 0u64;
        let cols_i = int(cols, "RMSNorm width")?;
        let mut b = f.builder();
        b.arg(x);
        match residual {
            Some(r) => b.arg(r),
            None => b.arg(&null),
        };
        b.arg(w);
        match sum_out {
            Some(s) => b.arg(s),
            None => b.arg(&null),
        };
        b.arg(out).arg(&cols_i).arg(&eps);
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    pub(super) fn rotary(
        dev: &CudaDevice,
        x: &mut CudaViewMut<f32>,
        cos: &CudaView<f32>,
        sin: &CudaView<f32>,
        head_dim: usize,
        style: RotaryStyle,
    ) -> CResult<()> {
        let half = head_dim / 2;
        let rows = cos.len() / half;
        let heads = x.len() / (rows * head_dim);
        let total = rows * heads * half;
        if total == 0 {
            return Ok(());
        }
        let f = dev.get_or_load_custom_func("rotary_f32", MODULE, PTX)?;
        let (rows_i, heads_i, hd_i) = (
            int(rows, "rotary rows")?,
            int(heads, "rotary heads")?,
            int(head_dim, "rotary head width")?,
        );
        let interleaved = i32::from(style == RotaryStyle::Interleaved);
        let mut b = f.builder();
        b.arg(x)
            .arg(cos)
            .arg(sin)
            .arg(&rows_i)
            .arg(&heads_i)
            .arg(&hd_i)
            .arg(&interleaved);
        unsafe { b.launch(grid_1d(total, 256)) }.w()?;
        Ok(())
    }

    pub(super) fn write_kv(
        dev: &CudaDevice,
        src: &CudaView<f32>,
        cache: &mut CudaViewMut<f32>,
        slots: &CudaView<u32>,
        width: usize,
    ) -> CResult<()> {
        let rows = slots.len();
        if rows == 0 {
            return Ok(());
        }
        let f = dev.get_or_load_custom_func("write_kv_f32", MODULE, PTX)?;
        let (rows_i, width_i) = (int(rows, "rows")?, int(width, "cache width")?);
        let capacity = (cache.len() / width.max(1)) as u64;
        let mut b = f.builder();
        b.arg(src)
            .arg(cache)
            .arg(slots)
            .arg(&rows_i)
            .arg(&width_i)
            .arg(&capacity);
        unsafe { b.launch(grid_1d(rows * width, 256)) }.w()?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn paged_attention(
        dev: &CudaDevice,
        q: &CudaView<f32>,
        k: &CudaView<f32>,
        v: &CudaView<f32>,
        out: &mut CudaSlice<f32>,
        row_pos: &CudaView<u32>,
        row_table: &CudaView<u32>,
        tables: &CudaView<u32>,
        rows: usize,
        shape: AttentionShape,
        scale: f32,
    ) -> CResult<()> {
        if shape.head_dim > 256 {
            candle_core::bail!("paged attention: head_dim {} > 256", shape.head_dim);
        }
        if rows > 65535 {
            candle_core::bail!("paged attention: {rows} query rows in one call (max 65535)");
        }
        let f = dev.get_or_load_custom_func("paged_attention_f32", MODULE, PTX)?;
        let cfg = LaunchConfig {
            grid_dim: (shape.heads as u32, rows as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let (h, kvh, d, bs) = (
            int(shape.heads, "heads")?,
            int(shape.kv_heads, "kv heads")?,
            int(shape.head_dim, "head_dim")?,
            int(shape.block_size, "block size")?,
        );
        let mut b = f.builder();
        b.arg(q)
            .arg(k)
            .arg(v)
            .arg(out)
            .arg(row_pos)
            .arg(row_table)
            .arg(tables)
            .arg(&h)
            .arg(&kvh)
            .arg(&d)
            .arg(&bs)
            .arg(&scale);
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }
}
