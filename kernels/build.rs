//! With the `cuda` feature, compiles `src/cuda/ops.cu` to PTX with nvcc (no GPU needed); without it,
//! does nothing.
//!
//! The PTX targets `sm_$CUDA_COMPUTE_CAP` (default 90, Hopper) and carries the nvcc toolkit's PTX ISA
//! version, which the GPU's driver must support: build with a toolkit no newer than the driver's CUDA
//! version (see .ci/cuda-toolchain.sh).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/cuda/ops.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ptx = out_dir.join("switchyard_ops.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap = cap.replace('.', "");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let output = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=sm_{cap}"))
        .arg("src/cuda/ops.cu")
        .arg("-o")
        .arg(&ptx)
        .output();
    match output {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "nvcc failed on src/cuda/ops.cu:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "the `cuda` feature needs nvcc ({nvcc}: {e}); `. .ci/cuda-toolchain.sh` installs one into target/"
        ),
    }
}
