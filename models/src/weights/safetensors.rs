//! Hugging Face safetensors checkpoints (single file or sharded with an index), mapped in place.

use super::{MappedFile, MappedTensor, TensorSource};
use crate::error::{ModelError, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use switchyard_kernels::WeightFormat;

/// Every tensor of a safetensors checkpoint directory.
#[derive(Debug)]
pub struct SafetensorsFiles {
    tensors: HashMap<String, MappedTensor>,
}

impl SafetensorsFiles {
    /// Opens `model.safetensors`, or every shard named by `model.safetensors.index.json`, in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<std::path::PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
                path: index.clone(),
                source,
            })?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Format {
                    path: index.clone(),
                    message: e.to_string(),
                })?;
            let mut shards: Vec<String> = json["weight_map"]
                .as_object()
                .ok_or_else(|| ModelError::Format {
                    path: index.clone(),
                    message: "no `weight_map` object".into(),
                })?
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut tensors = HashMap::new();
        for path in files {
            Self::add_file(&path, &mut tensors)?;
        }
        Ok(Self { tensors })
    }

    fn add_file(path: &Path, tensors: &mut HashMap<String, MappedTensor>) -> Result<()> {
        let file = MappedFile::open(path)?;
        let format_err = |message: String| ModelError::Format {
            path: path.to_path_buf(),
            message,
        };
        let (header_len, metadata) = SafeTensors::read_metadata(file.bytes())
            .map_err(|e| format_err(format!("not a safetensors file: {e}")))?;
        let base = header_len + 8;
        for (name, info) in metadata.tensors() {
            let format = match info.dtype {
                Dtype::F32 => WeightFormat::F32,
                Dtype::F16 => WeightFormat::F16,
                Dtype::BF16 => WeightFormat::BF16,
                other => {
                    return Err(format_err(format!(
                        "tensor `{name}` has unsupported dtype {other:?} (f32, f16 and bf16 are supported)"
                    )))
                }
            };
            let tensor = MappedTensor::new(
                &name,
                Arc::clone(&file),
                base + info.data_offsets.0,
                format,
                info.shape.clone(),
            )?;
            tensors.insert(name, tensor);
        }
        Ok(())
    }

    /// Names of every tensor.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}

impl TensorSource for SafetensorsFiles {
    fn get(&self, name: &str) -> Option<MappedTensor> {
        self.tensors.get(name).cloned()
    }
}
