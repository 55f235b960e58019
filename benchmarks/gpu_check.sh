#!/usr/bin/env bash
# The probe against a real GPU's limit, with JAX and torch (no TensorFlow GPU wheel needed).
#
# On a machine with an NVIDIA GPU, from the repository root, after installing this package
# without its TensorFlow dependency (e.g. `pip install --no-deps -e .` plus keras,
# keras-tuner, psutil, nvidia-ml-py, rich, matplotlib and jax[cuda12] or torch):
#
#     bash benchmarks/gpu_check.sh            # ~10 minutes: both backends, quick benchmarks
#     bash benchmarks/gpu_check.sh --dry-run  # print the commands; check their arguments
#
# For each of jax and torch that sees a GPU: the probe benchmark against the card itself
# (`--limit device`: out-of-memory is an exception there, so the true maximum is bracketed
# by real runs), then the throughput benchmark up to the probed limit. Results go to
# benchmarks/results/gpu-<backend>/ (JSON with the device, versions and commit, and PNGs).
set -uo pipefail
cd "$(dirname "$0")/.."

dry_run=0
[[ "${1:-}" == "--dry-run" ]] && dry_run=1
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
# JAX: allocate on demand, so the allocator's peak (not its preallocated pool) is measured,
# and cap the pool at 2% of the card (~2.8 GiB of an H200): the zoo's data sets are small,
# and on the whole card every answer would be the number of samples.
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.02}

sees_gpu() {  # backend -> exit 0 when that framework sees a CUDA device
    case "$1" in
        jax) python -c "import jax, sys; sys.exit(0 if any(d.platform == 'gpu' for d in jax.devices()) else 1)" ;;
        torch) python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" ;;
    esac
}

commands() {  # backend -> the benchmark commands, one per line
    local out="benchmarks/results/gpu-$1"
    echo "python -m benchmarks.probe_bench --limit device --models mlp cnn transformer batch_attention --no-trained-first --truth-runs 1 --peers 'Lightning binsearch' --results-dir $out"
    echo "python -m benchmarks.throughput_bench --quick --memory-limit none --results-dir $out"
}

status=0
for backend in jax torch; do
    if (( dry_run )); then
        # Each command's own parser checks its arguments (--help last: the rest parse first).
        while read -r command; do
            echo "KERAS_BACKEND=$backend $command"
            eval "KERAS_BACKEND=$backend $command --help" > /dev/null || status=1
        done < <(commands "$backend")
        continue
    fi
    if ! sees_gpu "$backend" 2> /dev/null; then
        echo "gpu_check: $backend sees no GPU here; skipped" >&2
        continue
    fi
    mkdir -p "benchmarks/results/gpu-$backend"
    while read -r command; do
        echo "gpu_check: KERAS_BACKEND=$backend $command" >&2
        eval "KERAS_BACKEND=$backend timeout 270 $command" || { echo "gpu_check: FAILED ($?)" >&2; status=1; }
    done < <(commands "$backend")
done
exit $status
