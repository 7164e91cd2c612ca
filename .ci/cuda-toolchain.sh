#!/usr/bin/env bash
# CUDA toolchain for `--features cuda` builds, installed from PyPI wheels into target/ (nothing by hand).
#
# Source it (`. .ci/cuda-toolchain.sh`) to get PATH, CUDA_HOME, CUDA_COMPUTE_CAP and CUDARC_CUDA_VERSION
# set for cargo; run it to just install. The wheels are CUDA 13.0 on purpose: the PTX that nvcc emits
# carries the toolkit's PTX ISA version, and a driver only JIT-compiles PTX up to its own CUDA version
# (the lent H100/H200 machines run driver 580, i.e. CUDA 13.0). Newer wheels would build fine here and
# then fail at module load on those machines with CUDA_ERROR_UNSUPPORTED_PTX_VERSION.
#
# No libcuda is needed to build or to start the binary: cudarc is built with `dynamic-loading`, so
# libcuda.so.1, libcublas.so.13 and friends are opened at run time, and only when a CUDA device is asked
# for. Candle hard-wires cudarc's `dynamic-linking`; rather than commit a copy of candle-core, this script
# makes one from the crates.io source in cargo's registry with that one word changed, and writes a cargo
# config that patches it in: build with `cargo <command> --config "$SWITCHYARD_CUDA_CARGO_CONFIG" ... --features cuda` (after the
# subcommand: `cargo clippy` passes it on to the cargo it runs only there).
set -euo pipefail

_sy_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_sy_dir="$_sy_root/target/cuda-toolchain"
_sy_venv="$_sy_dir/venv"
_sy_wheels=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
    nvidia-cuda-nvrtc==13.0.88
    # nvcc's own dependencies, pinned too: left free, pip takes the newest nvvm/crt, whose PTX (ISA 9.5)
    # the 13.0 ptxas and driver reject.
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
)
_sy_stamp="$_sy_dir/installed-$(printf '%s\n' "${_sy_wheels[@]}" | sha256sum | cut -c1-16)"

if [[ ! -f "$_sy_stamp" ]]; then
    echo "cuda-toolchain: installing ${_sy_wheels[*]} into $_sy_venv" >&2
    rm -rf "$_sy_venv"
    python3 -m venv "$_sy_venv"
    "$_sy_venv/bin/python" -m pip install --quiet --disable-pip-version-check "${_sy_wheels[@]}"
    _sy_cuda="$("$_sy_venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
    # The wheels ship only versioned sonames; linkers and `dynamic-loading` also look for the plain name.
    for so in "$_sy_cuda"/lib/lib*.so.*; do
        base="${so%%.so.*}.so"
        [[ -e "$base" ]] || ln -s "$(basename "$so")" "$base"
    done
    # Some tools expect lib64/.
    [[ -e "$_sy_cuda/lib64" ]] || ln -s lib "$_sy_cuda/lib64"
    ln -sfn "$_sy_cuda" "$_sy_dir/cuda"
    # candle-kernels asks the linker for `-lcudart` (its MoE archive calls the runtime). A directory that
    # offers only the static runtime under that name makes the link static, so the binary does not
    # need libcudart.so at start either (the static runtime opens libcuda lazily, if ever called).
    mkdir -p "$_sy_dir/link"
    ln -sfn "$_sy_cuda/lib/libcudart_static.a" "$_sy_dir/link/libcudart.a"
    touch "$_sy_stamp"
fi

export CUDA_HOME="$_sy_dir/cuda"
export CUDA_PATH="$CUDA_HOME"
export PATH="$CUDA_HOME/bin:$PATH"
export LIBRARY_PATH="$_sy_dir/link${LIBRARY_PATH:+:$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$CUDA_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Hopper (H100/H200). candle-kernels builds sm_90a for 90.
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
nvcc --version | tail -1 >&2

# candle-core with cudarc `dynamic-loading` (see the header).
_sy_candle_version=0.11.1
(cd "$_sy_root" && cargo fetch --quiet)
_sy_candle_src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/candle-core-"$_sy_candle_version" | head -1)"
_sy_candle="$_sy_dir/candle-core-$_sy_candle_version-dynamic-loading"
if [[ ! -f "$_sy_candle/.switchyard-patched" ]]; then
    rm -rf "$_sy_candle"
    cp -r "$_sy_candle_src" "$_sy_candle"
    chmod -R u+w "$_sy_candle"
    sed -i 's/"dynamic-linking"/"dynamic-loading"/' "$_sy_candle/Cargo.toml"
    grep -q '"dynamic-loading"' "$_sy_candle/Cargo.toml" || {
        echo "cuda-toolchain: candle-core $_sy_candle_version has no cudarc dynamic-linking feature to switch" >&2
        exit 1
    }
    touch "$_sy_candle/.switchyard-patched"
fi
printf '[patch.crates-io]\ncandle-core = { path = "%s" }\n' "$_sy_candle" >"$_sy_dir/patch.toml"
export SWITCHYARD_CUDA_CARGO_CONFIG="$_sy_dir/patch.toml"
