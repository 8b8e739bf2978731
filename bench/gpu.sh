#!/usr/bin/env bash
# The GPU check in one command (< 8 minutes on an H100/H200), from the repository root:
#
#   bash bench/gpu.sh                 # on a machine with a CUDA GPU (faiss-gpu-cu12 for the faiss steps)
#   bash bench/gpu.sh --cpu-dry-run   # every step on the CPU at toy sizes: checks that the script itself runs
#
# Steps (each under its own time cap, so one slow step cannot eat the others' time; a capped step says so):
#   1. python -m pytest -m gpu                       the CUDA-only tests
#   2. bench/embed.py, DreamSim ensemble, bf16, batch 256 / 512 / 1024, with MFU (random official-format weights)
#   3. bench/index.py end to end, ensemble, fp32 and auto, on 2,048 JPEGs with GPU JPEG decode (--fast-decode)
#   4. bench/search.py exact search on 1M x 1792-d vectors (faiss-gpu when installed)
#   5. bench/dedup.py find_duplicates on 1M x 1792-d vectors, Flat (GPU k-NN when faiss-gpu is installed)
# Needs the test extras (pip install -e ".[test]": the reference dreamsim package writes and loads the random
# official-format weights) and, for GPU faiss, faiss-gpu-cu12 instead of faiss-cpu (pip install ".[gpu]").
# Output: the tables on stdout and in $OUT_DIR (default bench-gpu-out/), one log per step.
# Targets on an H100/H200 (issue 13): >= 3,400 img/s model only, >= 2,000 img/s end to end.
set -u -o pipefail
cd "$(dirname "$0")/.."

DRY=0
[[ "${1:-}" == "--cpu-dry-run" ]] && DRY=1
OUT_DIR=${OUT_DIR:-bench-gpu-out}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python}
WEIGHTS=${WEIGHTS:-$OUT_DIR/dreamsim-random-weights}
# photos to re-encode into the JPEG set: the shared data when this checkout sits next to it, else the test fixtures
PHOTOS=${PHOTOS:-}
if [[ -z "$PHOTOS" ]]; then
  for d in ../shared/data/imagenet-samples ../../shared/data/imagenet-samples shared/data/imagenet-samples; do
    [[ -d "$d" ]] && PHOTOS=$d && break
  done
  PHOTOS=${PHOTOS:-tests/fixtures/photos}
fi

if [[ $DRY == 1 ]]; then
  DEVICE=cpu; BATCHES="2"; EMBED_DTYPES="auto"; REPEATS=1; JPEGS=16; INDEX_BATCH=8; INDEX_LIMIT=8
  VECTORS=20000; CAP=900; BUDGET=${BUDGET:-3600}; export CUDA_VISIBLE_DEVICES=""
  MODEL=dreamsim_dino_vitb16  # one ViT branch: the ensemble's code path at a third of the CPU time
else
  DEVICE=cuda; BATCHES="256 512 1024"; EMBED_DTYPES="bf16"; REPEATS=5; JPEGS=${JPEGS:-2048}; INDEX_BATCH=256
  INDEX_LIMIT=0; VECTORS=1000000; CAP=150; MODEL=dreamsim
  export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}  # tests/conftest.py hides GPUs unless this is set
fi

BUDGET=${BUDGET:-460}  # seconds for all steps together: the whole script stays under 8 minutes
step() {  # step NAME CAP_SECONDS COMMAND...: run with a time cap, tee the log, report the status
  local name=$1 cap=$2; shift 2
  local left=$((BUDGET - SECONDS))
  if (( left < 15 )); then
    echo "=== $name: SKIPPED (the ${BUDGET}s budget is spent)"; echo "$name skipped" >> "$OUT_DIR/summary.txt"; return
  fi
  (( cap > left )) && cap=$left
  echo; echo "=== $name (cap ${cap}s): $*"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$cap" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  local rc=${PIPESTATUS[0]}
  if [[ $rc == 124 ]]; then echo "=== $name: STOPPED at its ${cap}s cap"; else echo "=== $name: rc $rc"; fi
  echo "$name rc=$rc seconds=$((SECONDS - t0))" >> "$OUT_DIR/summary.txt"
}

: > "$OUT_DIR/summary.txt"
$PY - <<'EOF' | tee "$OUT_DIR/machine.txt"
import os, platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
else:
    print("no CUDA device")
try:
    import faiss
    print(f"faiss {faiss.__version__}, GPUs visible to faiss: {faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0}")
except ImportError:
    print("faiss not installed")
from lookalike.metric._precision import describe_auto
print("dtype auto:", describe_auto("cuda" if torch.cuda.is_available() else "cpu"))
EOF

# Peak dense bf16 TFLOP/s for the MFU column (H100 / H200 SXM 989, A100 312, L40S 362); override with PEAK_TFLOPS.
PEAK=${PEAK_TFLOPS:-$($PY -c "
import torch
n = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''
print(next((v for k, v in (('H100', 989), ('H200', 989), ('A100', 312), ('L40S', 362)) if k in n), ''))")}
PEAK_ARG=(); [[ -n "$PEAK" ]] && PEAK_ARG=(--peak-tflops "$PEAK")

step 1-pytest-gpu "$CAP" $PY -m pytest -m gpu -q -p no:cacheprovider tests/

for b in $BATCHES; do
  step "2-embed-b$b" "$CAP" $PY bench/embed.py --models "$MODEL" --dtypes $EMBED_DTYPES --device "$DEVICE" \
    --batch "$b" --repeats "$REPEATS" --cache "$WEIGHTS" "${PEAK_ARG[@]}"
done

INDEX_ARGS=(--metric "$MODEL" --cache "$WEIGHTS" --device "$DEVICE" --dtypes fp32,auto --folder "$PHOTOS"
            --min-images "$JPEGS" --batch-size "$INDEX_BATCH" --model-images $((JPEGS < 1024 ? JPEGS : 1024)))
[[ $INDEX_LIMIT != 0 ]] && INDEX_ARGS+=(--limit "$INDEX_LIMIT")
step 3-index-e2e $((CAP * 2)) $PY bench/index.py "${INDEX_ARGS[@]}" --fast-decode

step 4-search-1m "$CAP" $PY bench/search.py --sizes "$VECTORS" --exact-only
step 5-dedup-1m $((CAP * 2)) $PY bench/dedup.py --sizes "$VECTORS" --faiss Flat

echo; echo "=== summary ($OUT_DIR/summary.txt)"; cat "$OUT_DIR/summary.txt"
