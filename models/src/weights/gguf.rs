//! GGUF files: metadata parsed by Candle's reader, tensor data used in place from the mapping.

use super::{MappedFile, MappedTensor, TensorSource};
use crate::error::{ModelError, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An opened GGUF file: its metadata and a view of every tensor.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    metadata: HashMap<String, Value>,
    tensors: HashMap<String, MappedTensor>,
}

impl GgufFile {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = MappedFile::open(path)?;
        let format_err = |message: String| ModelError::Format {
            path: path.to_path_buf(),
            message,
        };
        let content = Content::read(&mut std::io::Cursor::new(file.bytes()))
            .map_err(|e| format_err(format!("not a readable GGUF file: {e}")))?;
        let base = usize::try_from(content.tensor_data_offset)
            .map_err(|_| format_err("tensor data offset overflows".into()))?;
        let mut tensors = HashMap::with_capacity(content.tensor_infos.len());
        for (name, info) in &content.tensor_infos {
            let offset = usize::try_from(info.offset)
                .ok()
                .and_then(|o| base.checked_add(o))
                .ok_or_else(|| format_err(format!("tensor `{name}`: its offset overflows")))?;
            let tensor = MappedTensor::new(
                name,
                Arc::clone(&file),
                offset,
                info.ggml_dtype,
                info.shape.dims().to_vec(),
            )?;
            tensors.insert(name.clone(), tensor);
        }
        Ok(Self {
            path: path.to_path_buf(),
            metadata: content.metadata,
            tensors,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All metadata key/values.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.metadata
    }

    /// A metadata value by key.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A string metadata value.
    pub fn string(&self, key: &str) -> Option<&str> {
        match self.metadata.get(key)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// An integer metadata value of any width.
    pub fn integer(&self, key: &str) -> Option<i64> {
        Some(match self.metadata.get(key)? {
            Value::U8(v) => *v as i64,
            Value::I8(v) => *v as i64,
            Value::U16(v) => *v as i64,
            Value::I16(v) => *v as i64,
            Value::U32(v) => *v as i64,
            Value::I32(v) => *v as i64,
            Value::U64(v) => *v as i64,
            Value::I64(v) => *v,
            _ => return None,
        })
    }

    /// A floating-point metadata value.
    pub fn float(&self, key: &str) -> Option<f64> {
        match self.metadata.get(key)? {
            Value::F32(v) => Some(*v as f64),
            Value::F64(v) => Some(*v),
            _ => self.integer(key).map(|v| v as f64),
        }
    }

    /// A boolean metadata value.
    pub fn boolean(&self, key: &str) -> Option<bool> {
        match self.metadata.get(key)? {
            Value::Bool(v) => Some(*v),
            _ => None,
        }
    }

    /// A string-array metadata value.
    pub fn strings(&self, key: &str) -> Option<Vec<&str>> {
        match self.metadata.get(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// Names of every tensor in the file.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}

impl TensorSource for GgufFile {
    fn get(&self, name: &str) -> Option<MappedTensor> {
        self.tensors.get(name).cloned()
    }
}
