//! Opening a CUDA device without panicking where there is none.
//!
//! Candle's `Device::new_cuda` (and `cuda_if_available`) returns an error such as
//! `CUDA_ERROR_NO_DEVICE` when the driver is installed but no GPU is present, and, with cudarc's
//! dynamic loading, *panics* when the driver library itself cannot be opened. [`cuda_device`] checks
//! the libraries first and turns every failure into a reason a caller can log.

use candle_core::Device;

/// Whether this build has CUDA support compiled in.
pub const CUDA_COMPILED: bool = cfg!(feature = "cuda");

/// Opens CUDA device `ordinal`, or says why it cannot.
pub fn cuda_device(ordinal: usize) -> std::result::Result<Device, String> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc;
        // SAFETY: these only try to dlopen the libraries by name.
        let missing = unsafe {
            [
                (
                    "libcuda (the NVIDIA driver)",
                    cudarc::driver::sys::is_culib_present(),
                ),
                ("libcublas", cudarc::cublas::sys::is_culib_present()),
                ("libcublasLt", cudarc::cublaslt::sys::is_culib_present()),
                ("libcurand", cudarc::curand::sys::is_culib_present()),
            ]
        };
        let missing: Vec<&str> = missing
            .iter()
            .filter(|(_, present)| !present)
            .map(|(name, _)| *name)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "cannot load {} (set LD_LIBRARY_PATH to the CUDA 13 libraries)",
                missing.join(", ")
            ));
        }
        match std::panic::catch_unwind(|| Device::new_cuda(ordinal)) {
            Ok(Ok(device)) => Ok(device),
            Ok(Err(e)) => Err(format!("cuda:{ordinal}: {e}")),
            Err(_) => Err(format!(
                "cuda:{ordinal}: the CUDA runtime panicked while opening it"
            )),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(format!(
            "cuda:{ordinal}: this binary was built without the `cuda` feature (cargo build --features cuda)"
        ))
    }
}

/// How much memory a device has, as the driver (or the kernel, for the host) reports it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    /// What the device is, for people (`NVIDIA H100 80GB HBM3 (cuda:0)`, `host memory`).
    pub name: String,
    /// Total bytes.
    pub total: u64,
    /// Bytes free now (on the host: `MemAvailable`, which counts reclaimable page cache as free).
    pub free: u64,
}

/// Reads `device`'s memory: the CUDA driver's `cuMemGetInfo` on a GPU, `/proc/meminfo` on the CPU.
pub fn memory(device: &Device) -> std::result::Result<DeviceMemory, String> {
    match device {
        Device::Cpu => host_memory(),
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            let stream = cuda.cuda_stream();
            let context = stream.context();
            let (free, total) = context
                .mem_get_info()
                .map_err(|e| format!("reading the GPU's free memory: {e}"))?;
            let name = context.name().unwrap_or_else(|_| "CUDA device".into());
            Ok(DeviceMemory {
                name: format!("{name} (cuda:{})", context.ordinal()),
                total: total as u64,
                free: free as u64,
            })
        }
        #[allow(unreachable_patterns)]
        other => Err(format!("memory of {other:?} devices is not known")),
    }
}

/// The host's memory from `/proc/meminfo` (Linux).
fn host_memory() -> std::result::Result<DeviceMemory, String> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| format!("reading /proc/meminfo: {e}"))?;
    let (total, free) =
        parse_meminfo(&text).ok_or("/proc/meminfo has no MemTotal / MemAvailable")?;
    Ok(DeviceMemory {
        name: "host memory".into(),
        total,
        free,
    })
}

/// `MemTotal` and `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |key: &str| -> Option<u64> {
        let kib = text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kib << 10)
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_meminfo_fields_in_bytes() {
        let text =
            "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   20480000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            Some((24_576_000 << 10, 20_480_000 << 10))
        );
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn host_memory_is_read_on_linux() {
        let m = memory(&Device::Cpu).expect("/proc/meminfo");
        assert!(m.total > 0 && m.free > 0 && m.free <= m.total, "{m:?}");
    }
}
