#!/usr/bin/env bash
# Download the wheels benchmarks/gpu.sh may need on a machine without network, into benchmarks/wheels/
# (git-ignored; the device runner carries it along: `carry: ["benchmarks/wheels"]`).
#
# The GPU machine's Python version and architecture are not known in advance, so compiled wheels are
# fetched for CPython 3.11-3.13 (transformers 5.23 needs 3.11) on x86_64 and aarch64; pure-Python ones once. About 40 MB in all.
# torch itself (with CUDA) and numpy must already be installed there: they are far too big to carry.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${1:-$here/wheels}"
mkdir -p "$dest"
mapfile -t reqs < <(grep -v '^\s*#' "$here/requirements-gpu.txt" | awk 'NF {print $1}')
pip="${PIP:-python -m pip}"
for py in 311 312 313; do
  for arch in x86_64 aarch64; do
    $pip download --quiet --no-deps --only-binary=:all: --dest "$dest" \
      --implementation cp --python-version "$py" --abi "cp$py" --abi abi3 --abi none \
      --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch" --platform "manylinux2014_$arch" \
      --platform any "${reqs[@]}"
  done
done
du -sh "$dest"
ls "$dest" | wc -l
