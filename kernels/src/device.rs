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
