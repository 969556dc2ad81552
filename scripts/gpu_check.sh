#!/usr/bin/env bash
# GPU check: a randomly initialised model with Llama-3.1-8B's shapes (32 layers, 32 heads, 8 key/value heads,
# width 4096, the real Llama 3 tokenizer), then fv doctor, M0, M2 (exact, bf16 and fp32), fv run, and the
# indirect-effect benchmark, and the per-stage table of the runtime's cost in forward passes per trial
# (benchmarks/bench_pipeline.py); one summary file. Sized to finish within 10 minutes on one H100.
#
#   bash scripts/gpu_check.sh                      # on a GPU machine, 8B shape
#   bash scripts/gpu_check.sh --dry-run            # print every step's command, run nothing (any machine)
#   SRC_ROOT=/path/to/function_vectors/src BAUKIT_ROOT=/path/to/baukit bash scripts/gpu_check.sh
#   DEVICE=cpu LAYERS=12 WIDTH=256 HEADS=8 KV=2 MLP=512 bash scripts/gpu_check.sh   # the same steps, small, on a CPU
#
# Environment: OUT (default results_fv/gpu_check), DEVICE (cuda), LAYERS, WIDTH, HEADS, KV, MLP, TRIALS (1),
# BENCH_TRIALS (10, fast mode's trials in the per-stage table), BENCH_REFERENCE (1: the reference in that table
# too, slow at 128k vocabulary), SRC_ROOT, BAUKIT_ROOT, PYTHON (python). Without SRC_ROOT, M2 has no reference and no goldens for this random
# model: its tests skip with that reason, and the summary says so.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg'; the only option is --dry-run (settings go in environment variables, see the header)." >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
OUT=${OUT:-results_fv/gpu_check}
DEVICE=${DEVICE:-cuda}
LAYERS=${LAYERS:-32}; WIDTH=${WIDTH:-4096}; HEADS=${HEADS:-32}; KV=${KV:-8}; MLP=${MLP:-14336}
# one trial by default: exact M2 on an 8B shape is 2 x 1024 full passes per trial and dtype, the bulk of the budget
TRIALS=${TRIALS:-1}
BENCH_TRIALS=${BENCH_TRIALS:-10}
EDIT=$(( LAYERS > 9 ? 9 : LAYERS - 1 ))
MODEL="$OUT/llama-random-L${LAYERS}-d${WIDTH}"
[ "$DRY" = 1 ] || mkdir -p "$OUT"
SUMMARY="$OUT/gpu_check_summary.txt"
[ "$DRY" = 1 ] && SUMMARY=/dev/null
: > "$SUMMARY"
SRC_ARGS=(); [ -n "${SRC_ROOT:-}" ] && SRC_ARGS=(--src-root "$SRC_ROOT" --src-compat)
[ -n "${BAUKIT_ROOT:-}" ] && export FV_BAUKIT_ROOT="$BAUKIT_ROOT"
export PYTHONUNBUFFERED=1

step() {  # step NAME COMMAND...: run, time, and record the last lines (--dry-run: print the command only)
  local name=$1; shift
  if [ "$DRY" = 1 ]; then printf 'step %-14s %s\n' "$name" "$*"; return 0; fi
  local t0=$EPOCHREALTIME
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')
  printf '%-14s rc=%-3s %7.1fs  %s\n' "$name" "$rc" "$dt" "$(grep -E 'passed|failed|skipped|error|wrote|OK, |ratio' "$OUT/$name.log" | tail -1)" | tee -a "$SUMMARY"
}

{ echo "fv GPU check $(date -u +%FT%TZ)$([ "$DRY" = 1 ] && echo ' (dry run: nothing is executed)')"; echo "shape: layers=$LAYERS width=$WIDTH heads=$HEADS kv=$KV mlp=$MLP device=$DEVICE trials=$TRIALS";
  [ "$DRY" = 1 ] || $PY -c "import torch;print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"; } | tee -a "$SUMMARY"

[ -f "$MODEL/config.json" ] && [ "$DRY" = 0 ] || step build-model $PY -m fv build-model --out "$MODEL" --tokenizer llama3 --n-layers "$LAYERS" \
  --d-model "$WIDTH" --n-heads "$HEADS" --n-kv-heads "$KV" --d-mlp "$MLP" --init torch --device "$DEVICE" --dtype bfloat16
step doctor $PY -m fv doctor --model "$MODEL" --device "$DEVICE" --edit-layer "$EDIT" ${SRC_ROOT:+--src-root "$SRC_ROOT"}
step make-trials $PY -m fv make-trials --dataset fixtures/antonym_tiny.json --tokenizer "$MODEL" --out "$OUT/trials.json" --n-trials 10 --n-shots 10 --seed 0
step m0 $PY -m pytest -q -m m0 --fv-model "$MODEL" --fv-device "$DEVICE" --fixed-trials "$OUT/trials.json" "${SRC_ARGS[@]}" -p no:cacheprovider
for DT in bfloat16 float32; do
  step "m2-$DT" $PY -m pytest -q -m m2 -k "not perturbed and not fast" --fv-model "$MODEL" --fv-device "$DEVICE" --fv-dtype "$DT" \
    --fixed-trials "$OUT/trials.json" --max-trials "$TRIALS" --edit-layer "$EDIT" --fv-out "$OUT/m2-$DT" "${SRC_ARGS[@]}" -p no:cacheprovider
done
step fv-run $PY -m fv run --model "$MODEL" --device "$DEVICE" --dtype bfloat16 --fixed-trials "$OUT/trials.json" --max-trials "$TRIALS" \
  --mode fast --edit-layer "$EDIT" --out "$OUT/run" --quiet
step benchmark $PY benchmarks/bench_indirect_effect.py --model "$MODEL" --device "$DEVICE" --dtype bfloat16 --fixed-trials "$OUT/trials.json" \
  --n-trials "$TRIALS" --reps 2 --memory-trials "2,10" --skip-exact ${SRC_ROOT:+--src-root "$SRC_ROOT"} --json "$OUT/benchmark.json"
[ "$DRY" = 1 ] || grep -E "^(fv fast|fv exact|reference|ratio|max abs)" "$OUT/benchmark.log" | sed 's/^/  /' | tee -a "$SUMMARY"
# the runtime's cost per stage in forward passes per trial (exact on TRIALS trials, fast on BENCH_TRIALS)
step bench-pipeline $PY benchmarks/bench_pipeline.py --model "$MODEL" --device "$DEVICE" --dtype bfloat16 \
  --fixed-trials "$OUT/trials.json" --n-trials "$BENCH_TRIALS" --exact-trials "$TRIALS" --memory-trials 2 --reps 3 \
  ${SRC_ROOT:+--src-root "$SRC_ROOT" --src-compat} ${BENCH_REFERENCE:+--reference-large} \
  --plot "$OUT/cost_per_trial.png" --json "$OUT/bench_pipeline.json"
[ "$DRY" = 1 ] || awk '/^== /{on=1} on{print "  " $0} /^picture:/{on=0}' "$OUT/bench-pipeline.log" | tee -a "$SUMMARY"
echo "summary: $SUMMARY"
