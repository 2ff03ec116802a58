#!/usr/bin/env bash
# One GPU run of every benchmark, into one markdown report (bench/README.md, "gpu.sh").
#
#   bash bench/gpu.sh                  # on a GPU machine: make venv, then each step below within its time budget
#   bash bench/gpu.sh --dry-run        # on a CPU: every step at its smallest size (seconds), the same report
#   bash bench/gpu.sh --out FILE       # the report's path (default bench/results/gpu-<date>[-dry-run].md)
#
# Steps, in order, each under `timeout` with its budget (seconds; all together at most STEPS_BUDGET, so the whole
# stays under 9 minutes on one H100 / H200; the venv install before them is timed apart): `make paper-smoke` (which
# ends with its per-rule costs), bench/extract.py (SD 1.5 and DiT-XL/2; then SDXL, PixArt-Sigma, SD3.5-medium and
# FLUX.1 at full size and 1024 px, with their memory), bench/sae.py, bench/infodecomp.py,
# bench/diffc.py (on the fly vs cached), bench/precision.py (bf16 vs fp32), and last bench/gpu_hours.py (the
# GPU-hours of the paper grids from the rows measured here). A step that fails or runs out of time is marked in the
# report and the others still run; the script then exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="${2:?--out needs a file}"; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/gpu.sh: unknown argument '$1' (allowed: --dry-run, --out FILE, --help)" >&2; exit 2 ;;
  esac
  shift
done

STEPS_BUDGET=510   # seconds for all steps together (9 minutes with margin)
RESERVED=20        # kept back for the last step, the GPU-hours arithmetic
PY=.venv/bin/python
DATE=$(date +%Y-%m-%d)
if [ "$DRY" = 1 ]; then OUT=${OUT:-bench/results/gpu-$DATE-dry-run.md}; else OUT=${OUT:-bench/results/gpu-$DATE.md}; fi
mkdir -p "$(dirname "$OUT")"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/difflens-gpu-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
BODY="$WORK/body.md"
: > "$BODY"
FAILED=()
START=$SECONDS

note() { printf '%s\n' "$@" >> "$BODY"; }

# step TITLE SLUG BUDGET COMMAND...: run COMMAND under `timeout` (BUDGET s, and no more than the steps' budget left;
# the last step, gpu_hours, always gets its own), show its output, and add a section to the report: the command, its
# status and its output (diffusers' dtype warnings and progress bars left out), as a code block or, for the steps
# whose output is markdown, as it is. The output stays in $WORK/SLUG.log for the later steps.
MARKDOWN_STEPS=" rule_times gpu_hours "
step() {
  local title=$1 slug=$2 budget=$3
  shift 3
  local left=$((STEPS_BUDGET - RESERVED - (SECONDS - START)))
  note "## $title" "" "\`$*\`" ""
  if [ "$slug" != gpu_hours ]; then
    if [ "$left" -lt 10 ]; then
      note "**Skipped**: the steps' budget of $STEPS_BUDGET s is spent." ""
      FAILED+=("$title (skipped)")
      return 0
    fi
    budget=$((budget < left ? budget : left))
  fi
  echo "== $title (budget $budget s): $*"
  local t0=$SECONDS rc status
  { timeout --kill-after=10 "$budget" "$@" 2>&1 || echo $? > "$WORK/$slug.rc"; } | tee "$WORK/$slug.log"
  rc=$(cat "$WORK/$slug.rc" 2>/dev/null || echo 0)
  local took=$((SECONDS - t0))
  case $rc in
    0) status="exit 0 after $took s (budget $budget s)" ;;
    124|137) status="**timed out** after $took s (budget $budget s)"; FAILED+=("$title (timed out)") ;;
    *) status="**failed** (exit $rc) after $took s (budget $budget s)"; FAILED+=("$title (exit $rc)") ;;
  esac
  note "$status" ""
  local fence='```'
  case "$MARKDOWN_STEPS" in *" $slug "*) fence="" ;; esac
  [ -z "$fence" ] || note "$fence"
  grep -v -e 'should be kept in float32' -e '^Loading weights' -e $'\r' "$WORK/$slug.log" >> "$BODY" || true
  [ -z "$fence" ] || note "$fence"
  note ""
}

# ---- setup --------------------------------------------------------------------------------------------------
SETUP="uses the existing .venv"
if [ "$DRY" = 0 ]; then
  if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "bench/gpu.sh: no GPU visible (nvidia-smi -L failed); on a CPU run: bash bench/gpu.sh --dry-run" >&2
    exit 2
  fi
  t0=$SECONDS
  SETUP="make venv"
  make venv
  if [ -f requirements-bench.txt ]; then
    $PY -m pip install -q --no-deps -r requirements-bench.txt  # pinned in full there; --no-deps keeps torch's pins
    SETUP="$SETUP + pip install --no-deps -r requirements-bench.txt"
  fi
  SETUP="$SETUP: $((SECONDS - t0)) s"
  START=$SECONDS
elif [ ! -x "$PY" ]; then
  echo "bench/gpu.sh: $PY is missing: run make venv first" >&2
  exit 2
fi

# ---- the steps ----------------------------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
  note "## paper smoke" "" "\`make paper-smoke\`" ""
  if make -n paper-smoke >/dev/null 2>&1; then
    note "Not run in a dry run (a whole pipeline run): the GPU run calls \`make paper-smoke\`, which ends with" \
         "the per-rule costs (\`bench/rule_times.py\` on \`results/paper_smoke/benchmarks/\`)." ""
  else
    note "**Skipped**: the Makefile has no \`paper-smoke\` target yet; the GPU run calls \`make paper-smoke\`." ""
  fi
  step "activation extraction (bench/extract.py)" extract 120 \
    $PY bench/extract.py --arch both --smoke --json "$WORK/extract.json"
  step "newer families at full size (bench/extract.py --arch families)" families 60 \
    $PY bench/extract.py --arch families --smoke --timesteps 1
  step "k-SAE (bench/sae.py)" sae 60 $PY bench/sae.py --smoke --saes difflens --sets activations
  step "information decomposition (bench/infodecomp.py)" infodecomp 60 \
    $PY bench/infodecomp.py --smoke --json "$WORK/infodecomp.json"
  step "Diff-C on the fly vs cached (bench/diffc.py)" diffc 60 $PY bench/diffc.py --smoke --json "$WORK/diffc.json"
  step "bf16 vs fp32 (bench/precision.py)" precision 60 $PY bench/precision.py --smoke
else
  step "paper smoke (make paper-smoke)" paper_smoke 120 make paper-smoke
  if [ -f "$WORK/paper_smoke.rc" ]; then  # make paper-smoke ends with this table; cut short, it did not get there
    step "paper smoke: cost per rule of the jobs that finished" rule_times 10 \
      $PY bench/rule_times.py results/paper_smoke/benchmarks
  fi
  step "activation extraction (bench/extract.py)" extract 100 \
    $PY bench/extract.py --arch both --images 32 --json "$WORK/extract.json"
  step "newer families at full size (bench/extract.py --arch families)" families 75 \
    $PY bench/extract.py --arch families --size 1024 --images 8 --batch-size 4 --timesteps 1
  step "k-SAE (bench/sae.py)" sae 60 $PY bench/sae.py --device cuda --steps 100  # 6 runs; rows print as they end
  step "information decomposition (bench/infodecomp.py)" infodecomp 50 \
    $PY bench/infodecomp.py --skip-shapes --items 4 --json "$WORK/infodecomp.json"
  step "Diff-C on the fly vs cached (bench/diffc.py)" diffc 50 $PY bench/diffc.py --json "$WORK/diffc.json"
  step "bf16 vs fp32 (bench/precision.py)" precision 50 $PY bench/precision.py
fi
step "GPU-hours of the paper grids (bench/gpu_hours.py)" gpu_hours 20 $PY bench/gpu_hours.py \
  --extract "$WORK/extract.json" --diffc "$WORK/diffc.json" --infodecomp "$WORK/infodecomp.json" \
  --sae-log "$WORK/sae.log"

# ---- the report ---------------------------------------------------------------------------------------------
MACHINE=$( (nvidia-smi -L 2>/dev/null || true) | head -1 | sed 's/ (UUID.*//')
MACHINE=${MACHINE:-$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ "$COMMIT" != unknown ] && [ -n "$(git status --porcelain 2>/dev/null)" ] && COMMIT="$COMMIT (with local changes)"
TORCH=$($PY -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null || echo unknown)
{
  echo "# difflens benchmarks on one GPU, $DATE"
  echo
  if [ "$DRY" = 1 ]; then
    echo "**Dry run** (\`bash bench/gpu.sh --dry-run\`): every step at its smallest size on the CPU. No number here"
    echo "is a GPU figure; the run checks that every benchmark and the report still work."
  else
    echo "\`bash bench/gpu.sh\` on a GPU machine."
  fi
  echo
  echo "- machine: ${MACHINE:-unknown}, $(nproc) CPU cores"
  echo "- commit: $COMMIT; torch $TORCH"
  echo "- setup: $SETUP"
  echo "- steps: $((SECONDS - START)) s in all (budget $STEPS_BUDGET s)"
  echo "- failed, timed out or skipped: ${FAILED[*]:-none}"
  echo
  cat "$BODY"
} > "$OUT"
echo "report: $OUT"
[ ${#FAILED[@]} -eq 0 ]
