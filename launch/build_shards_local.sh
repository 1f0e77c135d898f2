#!/usr/bin/env bash
# Build shards on one machine with one worker process per core and single-threaded numeric libraries in each.
# Usage: launch/build_shards_local.sh INPUT_DIR OUTPUT_DIR [recon3d config args...]
# Safe to rerun after an interruption: finished shards are kept, the one in flight is redone.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 INPUT_DIR OUTPUT_DIR [-c cfg.yaml] [key=value ...]" >&2
  exit 2
fi
input=$1; output=$2; shift 2
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/recon3d-numba}
exec recon3d shards build --root "$input" --out "$output" --workers "$(nproc)" "$@"
