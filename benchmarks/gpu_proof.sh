#!/usr/bin/env bash
# The GPU proof: recon3d measured on one GPU in one run (benchmarks/gpu_proof.py says what and how).
#
#   benchmarks/gpu_proof.sh fetch [DIR]      here, where pip reaches the package registries: the wheels the GPU
#                                            machine lacks, recon3d's own included, into DIR (default .whl/, ignored
#                                            by git)
#   benchmarks/gpu_proof.sh run [OUT] [...]  on the GPU machine (no network): install those wheels beside its own
#                                            torch and Lightning (--no-deps; the run stops if their versions move),
#                                            then the proof with recon3d imported from the installed wheel, not from
#                                            the source tree: OUT/gpu_proof.json and OUT/gpu_proof.log (OUT default
#                                            runs/gpu-proof; `run OUT --tiny` rehearses it on a CPU)
#   benchmarks/gpu_proof.sh tiny [OUT] [...] the CPU dry run at toy sizes, in this environment (no wheels)
#
# Extra arguments go to `python -m benchmarks.gpu_proof run` (e.g. --budget-s 420 --peak-tflops 989).
# Environment: PYTHON (default python3; tiny: .venv/bin/python when present), WHEELS (default .whl),
# PROOF_PYTHON_VERSION (fetch: the GPU machine's Python, default 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
[ $# -gt 0 ] && shift
WHEELS=${WHEELS:-.whl}

fetch() {
    local dir=${1:-$WHEELS} venv_py=${PYTHON:-.venv/bin/python}
    [ -x "$venv_py" ] || { echo "fetch: needs the project's environment ($venv_py; make setup) for versions and the DeepSpeed build" >&2; exit 2; }
    mkdir -p "$dir"
    version() { "$venv_py" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1"; }
    # what recon3d needs beyond that image (torch, Lightning, numpy, scipy, scikit-image, h5py, numba, ... are there),
    # at the versions this environment runs
    local specs=()
    for name in omegaconf webdataset braceexpand trimesh isal hjson pydantic pydantic-core annotated-types \
                typing-inspection; do
        specs+=("$name==$(version "$name")")
    done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PROOF_PYTHON_VERSION:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$dir" "${specs[@]}"
    # DeepSpeed ships as source: build it here without any compiled op (they JIT-build where needed; ZeRO-2 with
    # torch's Adam needs none), then tag the pure-Python wheel for any Python
    local build; build=$(mktemp -d)
    DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=0 "$venv_py" -m pip wheel -q --no-cache-dir --no-deps --no-build-isolation \
        -w "$build" "deepspeed==$(version deepspeed)"
    python3 -m pip download -q --no-deps -d "$build/tool" wheel==0.45.1
    PYTHONPATH=$(ls "$build"/tool/wheel-*.whl) python3 -m wheel tags --remove --python-tag py3 --abi-tag none \
        --platform-tag any "$build"/deepspeed-*.whl >/dev/null
    rm -f "$dir"/deepspeed-*.whl "$dir"/recon3d-*.whl
    mv "$build"/deepspeed-*-py3-none-any.whl "$dir"/
    rm -rf "$build"
    # recon3d itself, as a site installs it (its package data included), built from a copy: nothing written here
    local source; source=$(mktemp -d)
    cp -r pyproject.toml README.md recon3d "$source"/
    "$venv_py" -m pip wheel -q --no-deps --no-build-isolation -w "$dir" "$source"
    rm -rf "$source"
    ls -l "$dir"
}

run() {
    local out=${1:-runs/gpu-proof}
    [ $# -gt 0 ] && shift
    local py=${PYTHON:-python3} site=/tmp/recon3d-proof-site
    ls "$WHEELS"/recon3d-*.whl >/dev/null 2>&1 || { echo "run: no recon3d wheel in $WHEELS (benchmarks/gpu_proof.sh fetch first)" >&2; exit 2; }
    local versions='import importlib.metadata as m; print(*(m.version(p) for p in ("torch", "lightning")))'
    local before; before=$("$py" -c "$versions")
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$WHEELS"/*.whl
    # the image's torch and Lightning stay: only this folder was written, and nothing in it may shadow them
    local after; after=$(PYTHONPATH="$site" "$py" -c "$versions")
    [ "$before" = "$after" ] || { echo "run: torch/lightning moved from $before to $after" >&2; exit 2; }
    # recon3d from the wheel: the proof runs from OUT (not the source tree), its own Python found through the repo
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" RECON3D_EXPECT_INSTALLED="$site"
    proof "$py" "$out" "$@"
}

tiny() {
    local out=${1:-runs/gpu-proof-tiny}
    [ $# -gt 0 ] && shift
    local py=${PYTHON:-}
    [ -n "$py" ] || { [ -x .venv/bin/python ] && py=.venv/bin/python || py=python3; }
    proof "$py" "$out" --tiny "$@"
}

proof() {
    local py=$1 out=$2
    shift 2
    mkdir -p "$out"
    out=$(cd "$out" && pwd)
    # the proof's own Python (benchmarks/) from this repository, after the installed wheels when `run` put them first
    export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
    export WANDB_MODE=disabled PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/recon3d-torch-ext}
    case $py in */*) py=$(cd "$(dirname "$py")" && pwd)/$(basename "$py") ;; esac  # it runs from OUT below
    (cd "$out" && "$py" -c 'import torch, lightning, omegaconf, webdataset, trimesh, deepspeed, recon3d
print("recon3d gpu proof: torch", torch.__version__, "cuda", torch.version.cuda, "lightning", lightning.__version__,
      "deepspeed", deepspeed.__version__, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
      "recon3d from", recon3d.__file__)') 2>&1 | tee "$out/gpu_proof.log"
    set -o pipefail
    (cd "$out" && "$py" -m benchmarks.gpu_proof run --out "$out" "$@") 2>&1 | tee -a "$out/gpu_proof.log"
}

case "$mode" in
    fetch) fetch "$@" ;;
    run) run "$@" ;;
    tiny) tiny "$@" ;;
    *) echo "usage: benchmarks/gpu_proof.sh fetch [DIR] | run [OUT] [args] | tiny [OUT] [args]" >&2; exit 2 ;;
esac
