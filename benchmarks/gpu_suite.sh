#!/usr/bin/env bash
# Issue 16's device run in one call (<= 5 minutes): versions, carried wheels, native kernel tests, correctness,
# loss speed, decode throughput, training step, launch-config sweep. Each stage runs under `timeout` inside a
# global deadline, writes <stage>.json + <stage>.md + <stage>.log; at the end everything is merged into at most
# 4 files under $OUT (suite.md, suite.json, suite.log, stages.tar.gz: the run tool returns 8 files at most).
#
#   bash benchmarks/gpu_suite.sh            # on the device (run tool: carry [".whl"])
#   bash benchmarks/gpu_suite.sh --dry-run  # here: argument parsing and the tiny CPU paths; DRY_RUN=1 too
set -u
DRY=${DRY_RUN:-0}
[ "${1:-}" = "--dry-run" ] && DRY=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-/tmp/gpu_out}
STAGES_DIR=$OUT/stages
mkdir -p "$STAGES_DIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
BUDGET=${SUITE_BUDGET_S:-285}
T0=$(date +%s)
SUMMARY=()

HAVE_CUDA=0
$PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null && HAVE_CUDA=1
[ "$DRY" = 1 ] && HAVE_CUDA=0

stage() {  # stage NAME CAP_SECONDS CMD...: run under min(cap, time left), log to $STAGES_DIR/NAME.log
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - T0) - 5 ))
  local limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 5 ]; then SUMMARY+=("$name|skipped: out of time|0"); echo "== $name: skipped (out of time)"; return; fi
  echo "== $name (limit ${limit}s): $*"
  local s=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$STAGES_DIR/$name.log" 2>&1
  local rc=$? d=$(( $(date +%s) - s ))
  tail -n 25 "$STAGES_DIR/$name.log"
  local st="ok"; [ $rc -ne 0 ] && st="FAILED rc=$rc"; [ $rc -eq 124 ] || [ $rc -eq 137 ] && st="TIMEOUT after ${limit}s"
  SUMMARY+=("$name|$st|$d")
}

# 0. device and versions
stage env 20 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 || echo 'nvidia-smi: not available'; uname -m; $PY - <<'PYEOF'
import json, platform, sys, importlib.metadata as m
import torch
info = {'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda,
        'cuda_available': torch.cuda.is_available()}
for n in ['triton', 'numpy', 'pydantic', 'pycocotools', 'safetensors', 'typer', 'rich', 'POT']:
    try: info[n] = m.version(n)
    except m.PackageNotFoundError: info[n] = None
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=p.name, sms=p.multi_processor_count, mem_GiB=p.total_memory / 2**30)
print(json.dumps(info, indent=1))
open('$STAGES_DIR/env.json', 'w').write(json.dumps(info))
PYEOF"

# 1. carried wheels (only if .whl/ holds any; never in a dry run)
if ls .whl/*.whl >/dev/null 2>&1; then
  if [ "$DRY" = 1 ]; then
    echo "== wheels: dry run, would install: $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"; SUMMARY+=("wheels|dry run: not installed|0")
  else
    stage wheels 40 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  fi
else
  echo "== wheels: no .whl/ folder: nothing to install"; SUMMARY+=("wheels|none carried|0")
fi
$PY -c 'import dmpose' 2>/dev/null || echo "WARNING: dmpose does not import (missing packages? carry .whl, see benchmarks/gpu_wheels.sh)"

if [ "$HAVE_CUDA" = 0 ]; then
  echo "no CUDA device: GPU stages skipped$([ "$DRY" = 1 ] && echo ' (dry run)'); running the CPU paths"
  stage syntax 20 bash -n benchmarks/gpu_suite.sh
  stage correctness 60 $PY benchmarks/gpu_correctness.py --cpu-smoke --json "$STAGES_DIR/correctness.json" --md "$STAGES_DIR/correctness.md"
  stage loss 60 $PY benchmarks/bench_loss_triton.py --cpu-smoke --dtypes fp32 --stages loss,decode --json "$STAGES_DIR/loss.json" --md "$STAGES_DIR/loss.md"
  stage decode 20 $PY benchmarks/bench_loss_triton.py --dry-run --stages decode --sizes 96x72 --problems 2176 --dtypes fp32,bf16,fp16 --json "$STAGES_DIR/decode.json"
  stage configs 20 $PY benchmarks/bench_loss_triton.py --dry-run --stages configs --sizes 96x72 --config-problems 544,2176 --configs 128x4,256x4,256x8,512x4,512x8,1024x4,1024x8,1024x16 --json "$STAGES_DIR/configs.json"
  stage train 30 $PY benchmarks/bench_train_gpu.py --dry-run --json "$STAGES_DIR/train.json"
else
  # 2. the kernel tests natively (no TRITON_INTERPRET)
  stage kernels 75 env -u TRITON_INTERPRET $PY -m pytest -q -x -p no:cacheprovider -W ignore::RuntimeWarning tests/kernels/interpret_checks.py
  # 3. correctness: Triton vs torch, 3 shapes x 3 dtypes x 2 grads x 2 tolerances, dm_loss, decode
  stage correctness 40 $PY benchmarks/gpu_correctness.py --json "$STAGES_DIR/correctness.json" --md "$STAGES_DIR/correctness.md"
  # 4. loss speed: 544 and 2176 problems, 64x48 and 96x72, fp32 and bf16, default tol and tol=0, vs torch, floors
  stage loss 85 $PY benchmarks/bench_loss_triton.py --stages loss --sizes 64x48,96x72 --problems 544,2176 --dtypes fp32,bf16 --reps 5 --no-pot --json "$STAGES_DIR/loss.json" --md "$STAGES_DIR/loss.md"
  # 5. decode throughput at 2176 x 96x72 vs copy bandwidth
  stage decode 20 $PY benchmarks/bench_loss_triton.py --stages decode --sizes 96x72,64x48 --problems 2176,544 --dtypes fp32,bf16,fp16 --reps 20 --json "$STAGES_DIR/decode.json" --md "$STAGES_DIR/decode.md"
  # 6. training step: HRNet-W32 256x192 batch 64 bf16 autocast channels_last: MSE, DM default, DM tol=0
  stage train 60 $PY benchmarks/bench_train_gpu.py --model hrnet_w32 --batch 64 --input 256x192 --steps 8 --warmup 3 --json "$STAGES_DIR/train.json" --md "$STAGES_DIR/train.md"
  # 7. launch configurations at 96x72, 544 and 2176 problems
  stage configs 40 $PY benchmarks/bench_loss_triton.py --stages configs --sizes 96x72 --dtypes fp32 --config-problems 544,2176 --configs 128x4,256x4,256x8,512x4,512x8,1024x4,1024x8,1024x16 --reps 5 --json "$STAGES_DIR/configs.json" --md "$STAGES_DIR/configs.md"
fi

# merge: suite.md (summary + every table), suite.json (every stage's JSON), suite.log, stages.tar.gz
{
  echo "# GPU suite ($(date -u +%Y-%m-%dT%H:%MZ), dry_run=$DRY, cuda=$HAVE_CUDA, $(( $(date +%s) - T0 )) s)"; echo
  echo "| stage | status | seconds |"; echo "|---|---|---:|"
  for r in "${SUMMARY[@]}"; do echo "| ${r//|/ | } |"; done; echo
  for f in "$STAGES_DIR"/*.md; do [ -f "$f" ] && { echo "## $(basename "$f" .md)"; echo; cat "$f"; echo; }; done
} > "$OUT/suite.md"
$PY - "$STAGES_DIR" "$OUT/suite.json" <<'PYEOF'
import json, pathlib, sys
d = pathlib.Path(sys.argv[1]); out = {}
for f in sorted(d.glob("*.json")):
    try: out[f.stem] = json.loads(f.read_text())
    except ValueError as e: out[f.stem] = {"unreadable": str(e)}
pathlib.Path(sys.argv[2]).write_text(json.dumps(out, indent=1, default=str))
PYEOF
for f in "$STAGES_DIR"/*.log; do [ -f "$f" ] && { echo "===== $(basename "$f")"; cat "$f"; }; done > "$OUT/suite.log"
tar -czf "$OUT/stages.tar.gz" -C "$OUT" stages && rm -rf "$STAGES_DIR"

echo; echo "== summary ($(( $(date +%s) - T0 )) s; files: $(ls "$OUT" | tr '\n' ' '))"
printf '%-12s %-28s %s\n' stage status seconds
for r in "${SUMMARY[@]}"; do IFS='|' read -r a b c <<< "$r"; printf '%-12s %-28s %s\n' "$a" "$b" "$c"; done
[ "$HAVE_CUDA" = 0 ] && echo "no CUDA device: GPU stages skipped"
exit 0
