//! Choosing the device models run on: `cpu`, `cuda:N` or `auto`.
//!
//! `auto` takes CUDA device 0 when this build has CUDA support and a GPU can be opened, and otherwise
//! falls back to the CPU *explicitly*, logging why (Candle's `Device::cuda_if_available` instead
//! returns `CUDA_ERROR_NO_DEVICE` when a driver is installed without a GPU, and a build with dynamic
//! CUDA loading would panic where no driver is installed at all).

use crate::error::{ModelError, Result};
use candle_core::{DType, Device};
use std::fmt;
use std::str::FromStr;

pub use switchyard_kernels::device::{memory, DeviceMemory};

/// A device as named on a command line or in a config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU.
    #[default]
    Cpu,
    /// CUDA device `N`; an error if it cannot be opened.
    Cuda(usize),
    /// CUDA device 0 if one can be opened, else the CPU (with the reason logged).
    Auto,
}

impl FromStr for DeviceSpec {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(Self::Cpu),
            "auto" => Ok(Self::Auto),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n.parse().map(Self::Cuda).map_err(|_| {
                    ModelError::Config(format!("device `{s}`: `{n}` is not a device number"))
                }),
                None => Err(ModelError::Config(format!(
                    "device `{s}` (expected cpu, cuda:N or auto)"
                ))),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device. `Cuda(n)` fails with the reason when it cannot be opened; `Auto` never
    /// fails: it logs the reason and returns the CPU.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                let device =
                    switchyard_kernels::device::cuda_device(n).map_err(ModelError::Device)?;
                tracing::info!("using CUDA device {n}");
                Ok(device)
            }
            Self::Auto => match switchyard_kernels::device::cuda_device(0) {
                Ok(device) => {
                    tracing::info!("device auto: using CUDA device 0");
                    Ok(device)
                }
                Err(reason) => {
                    tracing::warn!("device auto: falling back to the CPU: {reason}");
                    Ok(Device::Cpu)
                }
            },
        }
    }
}

/// The dtype the ModernBERT router runs in on `device`: f32 on the CPU, bf16 on a GPU.
pub fn encoder_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

/// Parses an encoder dtype name (`f32`, `f16`, `bf16`).
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(ModelError::Config(format!(
            "dtype `{other}` (expected f32, f16 or bf16)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("CUDA:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
    }

    #[test]
    fn auto_never_fails() {
        // On a machine without a GPU (or a build without CUDA) this is the CPU, with the reason logged.
        let device = DeviceSpec::Auto.open().unwrap();
        if !switchyard_kernels::device::CUDA_COMPILED {
            assert!(device.is_cpu());
        }
    }

    #[test]
    fn cpu_runs_the_encoder_in_f32() {
        assert_eq!(encoder_dtype(&Device::Cpu), DType::F32);
        assert_eq!(parse_dtype("BF16").unwrap(), DType::BF16);
        assert!(parse_dtype("f8").is_err());
    }

    #[test]
    fn cuda_without_support_is_an_error_with_a_reason() {
        if switchyard_kernels::device::CUDA_COMPILED {
            println!("skipped: this build has CUDA support");
            return;
        }
        let err = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(err.contains("cuda"), "{err}");
    }
}
