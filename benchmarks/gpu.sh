#!/usr/bin/env bash
# The GPU benchmark in one step, for a machine without network and without this repo's venv.
#
#   benchmarks/gpu.sh [OUTDIR]              full bge-reranker-v2-m3 shape on cuda: all workloads and
#                                           contenders, then the ablations in the time that is left
#   benchmarks/gpu.sh --ablations [OUTDIR]  the ablations only (variants of the core's CUDA path)
#   benchmarks/gpu.sh --cpu-smoke [OUTDIR]  the same script end to end on CPU with the tiny model
#   benchmarks/gpu.sh --family [OUTDIR]     full-size bge-reranker-v2-gemma (2.5B) beside
#                                           FlagLLMReranker (benchmarks/family.py): its own 9 minutes
#   benchmarks/gpu.sh --family --cpu-smoke [OUTDIR]   that run on CPU with the tiny model
#
# OUTDIR defaults to $OUT (the device runner's output folder), else bench-out/<mode>. It gets
# results.md (the tables), results.json (every call), ablations.md, env.txt (python, packages,
# nvidia-smi, exit statuses), run.log and ablations.log. Needs a Python >= 3.11 with torch (CUDA
# build) and numpy installed; everything else the suite imports is unpacked from benchmarks/wheels/
# (see fetch_wheels.sh) when the machine lacks it, into a scratch folder put first on PYTHONPATH:
# nothing is downloaded, nothing system-wide changes. The random full-shape model is built on the
# spot (speed does not depend on the weights). Budget: 9 minutes in all, for a 10-minute command
# limit: the main run stops itself at 7 minutes (partial results stay) and the ablations take what
# is left (skipped under 90 s; each table is written as soon as it is done).
set -euo pipefail
cd "$(dirname "$0")/.."

script_start=$(date +%s)
mode=gpu
ablations=0
family=0
out=""
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) mode=cpu-smoke ;;
    --ablations) ablations=1 ;;
    --family) family=1 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) out="$arg" ;;
  esac
done
out="${out:-${OUT:-bench-out/$mode}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="${BENCH_WORK:-${TMPDIR:-/tmp}/bge-rerank-bench}"
mkdir -p "$work"

# A Python that has torch (and, for the GPU run, sees a GPU).
py=""
for candidate in ${PYTHON:-} python3 python /usr/bin/python3 /opt/conda/bin/python; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch, numpy" >/dev/null 2>&1; then
    py="$candidate"
    break
  fi
done
if [ -z "$py" ]; then
  echo "no Python with torch and numpy found (set PYTHON=...); they cannot travel as wheels" >&2
  exit 2
fi
"$py" - <<'EOF'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"Python {sys.version.split()[0]}: transformers 5.23 (which FlagEmbedding 1.4.2 needs) wants >= 3.11")
EOF
if [ "$mode" = gpu ] && ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "torch in $py sees no CUDA device; use --cpu-smoke to check the script on CPU" >&2
  exit 2
fi

echo "== python: $py ($("$py" --version 2>&1)); installing what is missing into $work/site" | tee -a "$out/env.txt"
"$py" benchmarks/install_wheels.py benchmarks/wheels "$work/site" | tee -a "$out/env.txt"
export PYTHONPATH="$work/site:$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TQDM_DISABLE=1
"$py" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" | tee -a "$out/env.txt"
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi >>"$out/env.txt" 2>&1 || true; fi

# The decoder-only family: full-size v2-gemma, random weights built here (about 10 GB of fp32
# safetensors and 2 minutes), then ours in bf16 and fp16 beside FlagLLMReranker with use_bf16 and
# use_fp16, interleaved; the run stops itself at 8.5 minutes of the budget (partial tables stay).
if [ "$family" = 1 ]; then
  if [ "$mode" = gpu ]; then
    args=(--kinds v2-gemma --subject full --scale gpu --device cuda
      --contenders ours-bf16,flag-bf16,ours-fp16,flag-fp16)
  else
    args=(--subject tiny --scale smoke --device cpu --contenders ours,flag)
  fi
  family_status=0
  timeout $((script_start + 510 - $(date +%s))) "$py" -m benchmarks.family "${args[@]}" \
    --models "$work/models" --out "$out" >"$out/family.log" 2>&1 || family_status=$?
  echo "== family benchmark exit status $family_status" | tee -a "$out/env.txt"
  tail -n 5 "$out/family.log" >&2
  if [ -f "$out/family.md" ]; then cat "$out/family.md"; fi
  exit "$family_status"
fi

main_status=0
if [ "$ablations" = 0 ]; then
  if [ "$mode" = gpu ]; then
    args=(--subject full --scale gpu --device cuda --peak-seconds 1)
    limit=420
  else
    args=(--subject tiny --scale smoke --device cpu --peak-seconds 0.2)
    limit=600
  fi
  start=$(date +%s)
  timeout "$limit" "$py" -m benchmarks.run "${args[@]}" --models "$work/models" --out "$out" \
    >"$out/run.log" 2>&1 || main_status=$?
  echo "== benchmark exit status $main_status after $(($(date +%s) - start)) s" | tee -a "$out/env.txt"
  tail -n 5 "$out/run.log" >&2
  if [ -f "$out/results.md" ]; then cat "$out/results.md"; fi
fi

# The ablations: the choices the CUDA path made without a GPU to measure on, each against the
# references; the throughput call first (where a per-batch wait would show), then single requests.
variants=core,packed-none,packed-none-sync,packed-none-padattn,packed-none-b65536,padded,flag-bs128,ce
if [ "$mode" = gpu ]; then
  args=(--subject full --device cuda --requests 10 --throughput-requests 3)
  left=$((script_start + 540 - $(date +%s)))
else
  args=(--subject tiny --device cpu --scale smoke --requests 2 --throughput-requests 1)
  left=300
fi
ablations_status=0
if [ "$left" -lt 90 ]; then
  echo "== ablations skipped: $left s left of the budget" | tee -a "$out/env.txt"
else
  timeout "$left" "$py" -m benchmarks.ablations "${args[@]}" --workload throughput,interactive \
    --variants "$variants" --models "$work/models" >"$out/ablations.md" 2>"$out/ablations.log" \
    || ablations_status=$?
  echo "== ablations exit status $ablations_status (limit $left s)" | tee -a "$out/env.txt"
  tail -n 3 "$out/ablations.log" >&2
  cat "$out/ablations.md"
fi
echo "== output in $out" >&2
if [ "$main_status" != 0 ]; then exit "$main_status"; fi
exit "$ablations_status"
