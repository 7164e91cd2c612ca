//! Refitting one head's last linear layer (`classifier`) on the frozen backbone and head transform:
//! softmax regression on the features the classifier reads, warm-started from its current weights,
//! by full-batch Adam, written back into `model.safetensors` with every other tensor unchanged.
//! `refit-pii-head` and `refit-jailbreak-head` use it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use switchyard_models::encoder::{HeadTask, MultiHeadClassifier};

/// The router in `dir` and the index of its head `name`, which must be of the kind `task` accepts
/// and carry the trainer's `labels`.
pub fn load_head(
    dir: &Path,
    name: &str,
    task: impl Fn(HeadTask) -> bool,
    labels: &[String],
) -> Result<(MultiHeadClassifier, usize)> {
    let model = MultiHeadClassifier::load(dir, &Device::Cpu, DType::F32)?;
    let head = model
        .heads()
        .iter()
        .position(|h| h.name() == name && task(h.task()))
        .with_context(|| {
            format!(
                "{} has no head `{name}` of the kind refitted",
                dir.display()
            )
        })?;
    if model.heads()[head].labels() != labels {
        bail!(
            "the {name} head's labels {:?} are not the trainer's {labels:?}",
            model.heads()[head].labels()
        );
    }
    Ok((model, head))
}

/// Feature rows `[n, hidden]` (what the classifier reads) and their gold class ids `[n]`.
pub struct Features {
    pub x: Tensor,
    pub y: Tensor,
}

/// Softmax regression `x · wᵀ + b` on `(x, y)`, from `(w, b)`, by full-batch Adam; returns the new
/// weights and the cross-entropy before and after.
pub fn fit_softmax(
    data: &Features,
    w: &Tensor,
    b: &Tensor,
    steps: usize,
    lr: f64,
) -> Result<(Tensor, Tensor, f32, f32)> {
    fit_softmax_anchored(data, w, b, steps, lr, 0.0)
}

/// [`fit_softmax`] with an L2 penalty `anchor / 2 · ‖(w, b) − (w₀, b₀)‖²` that holds the fit near the
/// weights it starts from (for a backbone whose training texts' features are near-separable already,
/// where an unanchored fit drifts to fit them at the held-out texts' cost).
pub fn fit_softmax_anchored(
    data: &Features,
    w: &Tensor,
    b: &Tensor,
    steps: usize,
    lr: f64,
    anchor: f64,
) -> Result<(Tensor, Tensor, f32, f32)> {
    let (w0, b0) = (w.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
    let w = Var::from_tensor(&w0)?;
    let b = Var::from_tensor(&b0)?;
    let cross_entropy = |w: &Tensor, b: &Tensor| -> Result<Tensor> {
        let logits = data.x.matmul(&w.t()?)?.broadcast_add(b)?;
        Ok(candle_nn::loss::cross_entropy(&logits, &data.y)?)
    };
    let loss_of = |w: &Tensor, b: &Tensor| -> Result<Tensor> {
        let ce = cross_entropy(w, b)?;
        if anchor == 0.0 {
            return Ok(ce);
        }
        let drift = ((w - &w0)?.sqr()?.sum_all()? + (b - &b0)?.sqr()?.sum_all()?)?;
        Ok((ce + (drift * (anchor / 2.0))?)?)
    };
    let before = cross_entropy(w.as_tensor(), b.as_tensor())?.to_scalar::<f32>()?;
    let mut opt = AdamW::new(
        vec![w.clone(), b.clone()],
        ParamsAdamW {
            lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    for _ in 0..steps {
        opt.backward_step(&loss_of(w.as_tensor(), b.as_tensor())?)?;
    }
    let after = cross_entropy(w.as_tensor(), b.as_tensor())?.to_scalar::<f32>()?;
    Ok((w.as_tensor().clone(), b.as_tensor().clone(), before, after))
}

/// Rewrites `model.safetensors` with the two classifier tensors replaced (stored in the dtype they
/// had); the file's metadata (e.g. transformers' `format: pt`) is kept. The new file is written
/// beside the old one and renamed over it, so a process that has the old one memory-mapped (a
/// server on the same router directory) keeps reading it whole.
pub fn write_classifier(dir: &Path, names: &[String; 2], w: &Tensor, b: &Tensor) -> Result<()> {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let metadata = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?
        .1
        .metadata()
        .clone();
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?;
    for (key, new) in names.iter().zip([w, b]) {
        let old = tensors
            .get(key)
            .with_context(|| format!("{key} is not in {}", path.display()))?;
        if old.dims() != new.dims() {
            bail!("{key}: shape {:?} vs {:?}", old.dims(), new.dims());
        }
        let stored = new.to_dtype(old.dtype())?;
        tensors.insert(key.clone(), stored);
    }
    let mut named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    let partial = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("a temporary file in {}", dir.display()))?;
    safetensors::serialize_to_file(named, metadata, partial.path())
        .with_context(|| format!("writing {}", partial.path().display()))?;
    partial
        .persist(&path)
        .with_context(|| format!("renaming the new file over {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::D;

    #[test]
    fn the_softmax_fit_lowers_the_loss_and_separates_a_separable_set() {
        // Two features, three classes, each class on its own side.
        let x: Vec<f32> = vec![
            1.0, 0.0, 0.0, 1.0, -1.0, -1.0, 0.9, 0.1, 0.1, 0.9, -0.8, -1.2,
        ];
        let y: Vec<u32> = vec![0, 1, 2, 0, 1, 2];
        let data = Features {
            x: Tensor::from_vec(x, (6, 2), &Device::Cpu).unwrap(),
            y: Tensor::from_vec(y.clone(), 6, &Device::Cpu).unwrap(),
        };
        let w0 = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
        let b0 = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let (w, b, before, after) = fit_softmax(&data, &w0, &b0, 200, 0.1).unwrap();
        assert!((before - 3f32.ln()).abs() < 1e-5, "{before}");
        assert!(after < 0.1, "{after}");
        let pred: Vec<u32> = data
            .x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap()
            .argmax(D::Minus1)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(pred, y);
    }

    #[test]
    fn the_classifier_is_written_back_in_its_dtype_and_the_rest_is_kept() {
        let dir = std::env::temp_dir().join(format!("sy-refit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cpu = Device::Cpu;
        let mut tensors = std::collections::HashMap::new();
        let w = Tensor::zeros((3, 2), DType::F16, &cpu).unwrap();
        tensors.insert("heads.pii.classifier.weight".to_string(), w);
        let b = Tensor::zeros(3, DType::F16, &cpu).unwrap();
        tensors.insert("heads.pii.classifier.bias".to_string(), b);
        let other = Tensor::ones(4, DType::F16, &cpu).unwrap();
        tensors.insert("layers.0.w".to_string(), other);
        let metadata = Some(
            [("format".to_string(), "pt".to_string())]
                .into_iter()
                .collect(),
        );
        safetensors::serialize_to_file(&tensors, metadata.clone(), &dir.join("model.safetensors"))
            .unwrap();
        let names = [
            "heads.pii.classifier.weight".to_string(),
            "heads.pii.classifier.bias".to_string(),
        ];
        let new_w = Tensor::ones((3, 2), DType::F32, &cpu).unwrap();
        let new_b = Tensor::full(2f32, 3, &cpu).unwrap();
        // A reader that opened the file before (as a server maps it) keeps the old one whole.
        let mut before = std::fs::File::open(dir.join("model.safetensors")).unwrap();
        let old_bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        write_classifier(&dir, &names, &new_w, &new_b).unwrap();
        let mut seen = Vec::new();
        std::io::Read::read_to_end(&mut before, &mut seen).unwrap();
        assert_eq!(seen, old_bytes);
        assert_ne!(
            std::fs::read(dir.join("model.safetensors")).unwrap(),
            old_bytes
        );
        // Nothing but the model is left in the directory.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let back = candle_core::safetensors::load(dir.join("model.safetensors"), &cpu).unwrap();
        let w = &back["heads.pii.classifier.weight"];
        assert_eq!(w.dtype(), DType::F16);
        let w: Vec<f32> = w
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(w, vec![1.0; 6]);
        let b: Vec<f32> = back["heads.pii.classifier.bias"]
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(b, vec![2.0; 3]);
        assert_eq!(back["layers.0.w"].dims(), &[4]);
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(header.metadata(), &metadata);
        // A wrong shape is refused.
        let bad = Tensor::ones((2, 2), DType::F32, &cpu).unwrap();
        assert!(write_classifier(&dir, &names, &bad, &new_b).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
