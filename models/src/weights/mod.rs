//! Memory-mapped weight files.
//!
//! Both GGUF and safetensors files are mapped once with `memmap2` and shared behind an `Arc`; a
//! [`MappedTensor`] is a typed view (format + shape + byte range) into such a mapping, so quantized
//! weights are used in place and every model that opens the same file shares its pages.

mod gguf;
mod pages;
mod safetensors;

pub use self::gguf::GgufFile;
pub(crate) use self::pages::{
    advise_buffer as advise_large_buffer, anonymous as anonymous_weight_buffer,
};
pub use self::pages::{weight_pages, WeightPages};
pub use self::safetensors::SafetensorsFiles;

use crate::error::{ModelError, Result};
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use switchyard_kernels::{WeightFormat, WeightMatrix};

/// A read-only memory mapping of a whole file, shared by every tensor that lives in it.
#[derive(Debug)]
pub struct MappedFile {
    mmap: Mmap,
}

impl MappedFile {
    /// Maps `path` read-only, or returns the mapping already open for the same file, so every model
    /// and tensor that uses a file shares one mapping.
    pub fn open(path: &Path) -> Result<Arc<Self>> {
        static OPEN: std::sync::LazyLock<Mutex<HashMap<PathBuf, Weak<MappedFile>>>> =
            std::sync::LazyLock::new(Default::default);
        let io = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let key = std::fs::canonicalize(path).map_err(io)?;
        let mut open = OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(file) = open.get(&key).and_then(Weak::upgrade) {
            return Ok(file);
        }
        let file = std::fs::File::open(&key).map_err(io)?;
        let mmap = pages::map_file(&file).map_err(io)?;
        let mapped = Arc::new(Self { mmap });
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(key, Arc::downgrade(&mapped));
        Ok(mapped)
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.mmap
    }
}

/// A tensor stored in a mapped file: its format, its logical shape (outermost first) and its bytes.
#[derive(Clone, Debug)]
pub struct MappedTensor {
    file: Arc<MappedFile>,
    offset: usize,
    len: usize,
    format: WeightFormat,
    shape: Vec<usize>,
}

impl MappedTensor {
    fn new(
        name: &str,
        file: Arc<MappedFile>,
        offset: usize,
        format: WeightFormat,
        shape: Vec<usize>,
    ) -> Result<Self> {
        let bad = |message: String| ModelError::BadTensor {
            name: name.to_string(),
            message,
        };
        // A malformed file's shape or offset must not wrap around into a plausible size.
        let elems = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        let block = format.block_size();
        if !elems.is_multiple_of(block) {
            return Err(ModelError::BadTensor {
                name: name.to_string(),
                message: format!("{elems} elements is not a multiple of the {format:?} block size"),
            });
        }
        let len = (elems / block)
            .checked_mul(format.type_size())
            .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        if offset
            .checked_add(len)
            .is_none_or(|end| end > file.bytes().len())
        {
            return Err(bad("data runs past the end of the file".into()));
        }
        Ok(Self {
            file,
            offset,
            len,
            format,
            shape,
        })
    }

    /// Storage format.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Logical shape, outermost dimension first (`[rows, cols]` for a matrix).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The tensor's raw bytes inside the mapping.
    pub fn bytes(&self) -> &[u8] {
        &self.file.bytes()[self.offset..self.offset + self.len]
    }

    /// Views a 2-D tensor as a weight matrix.
    pub fn matrix(&self) -> Result<WeightMatrix<'_>> {
        let [rows, cols] = self.shape[..] else {
            return Err(ModelError::Forward(format!(
                "expected a matrix, got shape {:?}",
                self.shape
            )));
        };
        Ok(WeightMatrix::new(self.format, rows, cols, self.bytes())?)
    }

    /// Dequantizes the whole tensor to f32 (used for small vectors such as norms and biases).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let n = self.shape.iter().product();
        let mut out = vec![0f32; n];
        switchyard_kernels::qmatmul::dequantize(self.format, self.bytes(), &mut out)?;
        Ok(out)
    }
}

/// Anything that can hand out named tensors.
pub trait TensorSource {
    /// The tensor called `name`, if present.
    fn get(&self, name: &str) -> Option<MappedTensor>;

    /// The tensor called `name`, or a [`ModelError::MissingTensor`].
    fn require(&self, name: &str) -> Result<MappedTensor> {
        self.get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_a_file_twice_shares_one_mapping_until_both_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.bin");
        std::fs::write(&path, b"weights").unwrap();
        let a = MappedFile::open(&path).unwrap();
        let b = MappedFile::open(&path).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.bytes(), b"weights");
        drop((a, b));
        std::fs::write(&path, b"changed").unwrap();
        let c = MappedFile::open(&path).unwrap();
        assert_eq!(c.bytes(), b"changed", "a dropped mapping is not reused");
    }

    #[test]
    fn a_shape_or_offset_that_wraps_around_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.bin");
        std::fs::write(&path, [0u8; 64]).unwrap();
        let file = MappedFile::open(&path).unwrap();
        let tensor = |offset, shape: Vec<usize>| {
            MappedTensor::new("t", Arc::clone(&file), offset, WeightFormat::F32, shape)
        };
        assert!(tensor(0, vec![16]).is_ok());
        assert!(tensor(4, vec![16]).is_err(), "past the end");
        assert!(
            tensor(usize::MAX - 2, vec![1]).is_err(),
            "an offset that wraps"
        );
        assert!(tensor(0, vec![1 << 62, 8]).is_err(), "a shape that wraps");
        assert!(
            tensor(0, vec![usize::MAX / 2]).is_err(),
            "a length that wraps"
        );
    }
}
