#!/usr/bin/env bash
# One GPU check, start to finish, on a machine with an NVIDIA GPU and driver (>= r580), no system CUDA needed:
#
#   1. a fresh venv with zoo's gpu extra (+ tensorrt, dev), from this checkout
#   2. zoo doctor --require cuda             (stops here when CUDA cannot run; the doctor says why)
#   3. zoo train cnn_bn (3 epochs), zoo export --fold-bn --onnx --fp16
#   4. zoo parity on ORT CUDA, then on TensorRT (the CPU rule: atol = rtol = 1e-5, float16 at 1e-3)
#   5. keras.applications ResNet50 224x224 (random weights and BN statistics), exported with --fp16;
#      zoo bench on ORT CUDA, float32 and float16 (baseline: float32 on CUDA), batch 1/8/32, IO binding;
#      on TensorRT, batch 1
#   6. zoo serve throughput on CUDA with the trained cnn_bn (benchmarks/serve_throughput.py --device cuda --onnx),
#      with and without --cuda-graph
#   7. every figure, command, exit code and wall time in one JSON: benchmarks/results/gpu_check.json
#
#   benchmarks/gpu_check.sh              # the real run (goal: under 8 minutes)
#   benchmarks/gpu_check.sh --dry-run    # print every step's command and check it on this machine (no GPU needed)
#   options: --out FILE (results JSON), --work DIR (keep the work folder), --python PYTHON (for the venv),
#            --venv DIR (reuse an existing venv instead of a fresh one), --no-venv (run this checkout with
#            --python as it is: its packages must be installed), --no-tensorrt,
#            --stage cpu|gpu (split the check for a GPU machine without TensorFlow or network: `--stage cpu
#            --work DIR` trains, exports and records the Keras outputs parity needs (gpu_check.py record) where
#            TensorFlow runs; `--stage gpu --work DIR` on the GPU machine runs the rest, with parity judged
#            against the recorded outputs (gpu_check.py replay) instead of `zoo parity`)
#
# A failing step is recorded and the script goes on where it can (parity and bench failures still leave figures);
# the exit code is 1 when any step failed. The dry run exits 1 when any step's command does not check out.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/benchmarks/results/gpu_check.json"
DRY=0
WORK=""
PYTHON="${PYTHON:-python3}"
VENV=""
TENSORRT=1
STAGE=all
NO_VENV=0
usage() { sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    --python) PYTHON="$2"; shift ;;
    --venv) VENV="$2"; shift ;;
    --no-tensorrt) TENSORRT=0 ;;
    --no-venv) NO_VENV=1 ;;
    --stage) STAGE="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

case "$STAGE" in all|cpu|gpu) ;; *) echo "error: --stage takes all, cpu or gpu, not '$STAGE'" >&2; exit 2 ;; esac
if [ "$STAGE" != all ] && [ -z "$WORK" ]; then
  echo "error: --stage $STAGE needs --work DIR (the folder the cpu stage fills and the gpu stage reads)" >&2; exit 2
fi
WORK_CREATED=0
if [ -z "$WORK" ]; then WORK="$(mktemp -d "${TMPDIR:-/tmp}/zoo-gpu-check.XXXXXX")"; WORK_CREATED=1; fi
mkdir -p "$WORK/steps"
FRESH_VENV=1
if [ -n "$VENV" ]; then FRESH_VENV=0; else VENV="$WORK/venv"; fi
if [ "$DRY" = 1 ]; then
  # the dry run checks the commands with this checkout's environment: its venv if there is one
  CHECK_PY="$ROOT/.venv/bin/python"; [ -x "$CHECK_PY" ] || CHECK_PY="$PYTHON"
fi
PY="$VENV/bin/python"
ZOO="$VENV/bin/zoo"
if [ "$NO_VENV" = 1 ]; then
  # this checkout with --python as it is: `zoo` is a wrapper running `python -m zoo.cli` from here
  FRESH_VENV=0; VENV=""; PY="$(command -v "$PYTHON")"; ZOO="$WORK/bin/zoo"
  mkdir -p "$WORK/bin"
  printf '#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" -m zoo.cli "$@"\n' "$ROOT" "$PY" > "$ZOO"
  chmod +x "$ZOO"
fi
EXTRAS="gpu,dev"; [ "$TENSORRT" = 1 ] && EXTRAS="gpu,tensorrt,dev"
FAILED=0
START=$(date +%s)
declare -A HELP  # zoo SUBCOMMAND --help, once per subcommand (dry run)

# step NAME TIMEOUT_S COMMAND...: run (or, with --dry-run, print and check) one step; its command, exit code,
# wall time in ms and its output go to $WORK/steps/NAME.{cmd,rc,ms,log} (functions of this script run untimed)
step() {
  local name="$1" limit="$2"; shift 2
  printf '%s\n' "$*" > "$WORK/steps/$name.cmd"
  if [ "$DRY" = 1 ]; then
    echo "[$name] $*"
    if check_command "$@"; then echo "  ok"; else echo "  FAILED: the command does not check out"; FAILED=1; fi
    return 0
  fi
  echo "== [$name] $*"
  local t0 rc
  t0=$(date +%s%N)
  if declare -F "$1" > /dev/null; then "$@" > "$WORK/steps/$name.log" 2>&1; else
    timeout "$limit" "$@" > "$WORK/steps/$name.log" 2>&1; fi
  rc=$?
  echo "$rc" > "$WORK/steps/$name.rc"
  echo $(( ($(date +%s%N) - t0) / 1000000 )) > "$WORK/steps/$name.ms"
  tail -n 40 "$WORK/steps/$name.log"
  if [ "$rc" != 0 ]; then echo "== [$name] exit code $rc"; FAILED=1; fi
  return "$rc"
}

# check_command COMMAND...: the dry run's check of one step. A zoo command must exist and accept every --option it
# is given (from `zoo SUBCOMMAND --help`, with this checkout's zoo); a Python script must exist and accept its
# options (--help); the venv step needs python -m venv and the extras in pyproject.toml.
check_command() {
  local program="$1"; shift
  case "$program" in
    "$ZOO")
      local sub="$1" help
      [ "$sub" = train ] || [ "$sub" = export ] || [ "$sub" = parity ] || [ "$sub" = bench ] || \
        [ "$sub" = serve ] || [ "$sub" = doctor ] || return 1
      if [ -z "${HELP[$sub]+x}" ]; then
        HELP[$sub]="$(cd "$ROOT" && COLUMNS=200 "$CHECK_PY" -m zoo.cli "$sub" --help 2>&1)" || return 1
      fi
      local options=0
      options_in "${HELP[$sub]}" "$@" || options=1
      runtimes_known "$@" && return "$options" ;;
    "$PY")
      local script="$1" help; shift
      local sub=()
      [ -f "$script" ] || { echo "  no $script"; return 1; }
      case "${1:-}" in --*|"") ;; *) sub=("$1") ;; esac  # a subcommand (gpu_check.py resnet50)
      help="$(cd "$ROOT" && "$CHECK_PY" "$script" ${sub[@]+"${sub[@]}"} --help 2>&1)" || {
        echo "$help" | tail -3; return 1; }
      options_in "$help" "$@" ;;
    make_venv)
      "$PYTHON" -m venv --help > /dev/null || return 1
      for extra in ${EXTRAS//,/ }; do
        grep -q "^$extra = " "$ROOT/pyproject.toml" || { echo "  no extra $extra in pyproject.toml"; return 1; }
      done ;;
    summarize)
      help="$(cd "$ROOT" && "$CHECK_PY" "$ROOT/benchmarks/gpu_check.py" report --help 2>&1)" || return 1 ;;
    *) return 1 ;;
  esac
}

# options_in HELP ARG...: every --option among ARG appears in HELP
options_in() {
  local help="$1"; shift
  local arg ok=0
  for arg in "$@"; do
    case "$arg" in
      --*) grep -q -- "${arg%%=*}" <<< "$help" || { echo "  unknown option $arg"; ok=1; } ;;
    esac
  done
  return "$ok"
}

# runtimes_known ARG...: the value of --runtimes, if any, names runtimes of the runtime table
runtimes_known() {
  while [ $# -gt 0 ]; do
    if [ "$1" = --runtimes ]; then
      (cd "$ROOT" && "$CHECK_PY" -c "import sys; from export.bench import parse_runtimes; parse_runtimes(sys.argv[1])" \
        "$2") || { echo "  unknown runtime in --runtimes $2"; return 1; }
    fi
    shift
  done
}

make_venv() {
  if [ "$FRESH_VENV" = 1 ]; then "$PYTHON" -m venv "$VENV" || return 1; fi
  "$VENV/bin/pip" install -q --upgrade pip || return 1
  "$VENV/bin/pip" install -q -e "$ROOT[gpu,dev]" || return 1
  if [ "$TENSORRT" = 1 ]; then
    # NVIDIA serves the TensorRT wheels from its own index (the PyPI packages are stubs that fetch them from there)
    "$VENV/bin/pip" install -q -e "$ROOT[$EXTRAS]" --extra-index-url https://pypi.nvidia.com || {
      echo "TensorRT could not be installed: its steps are skipped"; TENSORRT=0; EXTRAS="gpu,dev"; }
  fi
}

summarize() {
  "$PY" "$ROOT/benchmarks/gpu_check.py" report "$WORK" --out "$OUT" --started "$START" --extras "$EXTRAS" \
    --fresh-venv "$FRESH_VENV" --stage "$STAGE" --venv "${VENV:-none: $PY}"
}

CNN="$WORK/runs/cnn_bn/export"
RESNET="$WORK/resnet50_export"
# parity_step NAME EXPORT DEVICE: `zoo parity` where Keras runs; in the gpu stage, against the cpu stage's recording
parity_step() {
  if [ "$STAGE" = gpu ]; then
    step "$1" 600 "$PY" "$ROOT/benchmarks/gpu_check.py" replay "$2" --reference "$2.reference.npz" \
      --device "$3" --json "$WORK/$1.json"
  else
    step "$1" 600 "$ZOO" parity "$2" --device "$3" --json "$WORK/$1.json"
  fi
}

if [ "$NO_VENV" = 0 ]; then
  step venv 600 make_venv || { [ "$DRY" = 1 ] || { summarize; exit 1; }; }
fi
if [ "$STAGE" = all ]; then
  step doctor 120 "$ZOO" doctor --require cuda --json "$WORK/doctor.json" || { [ "$DRY" = 1 ] || { summarize; exit 1; }; }
elif [ "$STAGE" = gpu ]; then
  # no TensorFlow on this machine by design, so the doctor's CPU rows fail: recorded, and the CUDA steps go on
  step doctor 120 "$ZOO" doctor --require cuda --json "$WORK/doctor.json"
fi
if [ "$STAGE" != gpu ]; then
  step train 300 "$ZOO" train cnn_bn --epochs 3 --out "$WORK/runs/cnn_bn"
  step export 300 "$ZOO" export "$WORK/runs/cnn_bn" --fold-bn --onnx --fp16 --no-parity
  step resnet50 300 "$PY" "$ROOT/benchmarks/gpu_check.py" resnet50 --out "$WORK/resnet50.keras"
  step resnet50_export 600 "$ZOO" export "$WORK/resnet50.keras" --out "$RESNET" --fold-bn --onnx \
    --fp16 --no-savedmodel --no-parity
fi
if [ "$STAGE" = cpu ]; then
  step record 300 "$PY" "$ROOT/benchmarks/gpu_check.py" record "$CNN" --out "$CNN.reference.npz"
  step resnet50_record 300 "$PY" "$ROOT/benchmarks/gpu_check.py" record "$RESNET" \
    --out "$RESNET.reference.npz"
else
  parity_step parity_cuda "$CNN" cuda
  [ "$TENSORRT" = 1 ] && parity_step parity_tensorrt "$CNN" tensorrt
  parity_step resnet50_parity_cuda "$RESNET" cuda
  step bench_cuda 600 "$ZOO" bench "$RESNET" --runtimes ort-cuda,ort-cuda-fp16 --baseline ort-cuda --device cuda \
    --batch 1,8,32 --io-binding --warmup 10 --runs 50 --json "$WORK/bench_cuda.json"
  if [ "$TENSORRT" = 1 ]; then
    step bench_tensorrt 900 "$ZOO" bench "$RESNET" --runtimes ort-tensorrt,ort-tensorrt-fp16 \
      --baseline ort-tensorrt --device tensorrt --batch 1 --io-binding --warmup 20 --runs 100 \
      --json "$WORK/bench_tensorrt.json"
  fi
  step serve_cuda 300 "$PY" "$ROOT/benchmarks/serve_throughput.py" --device cuda --onnx "$CNN/model.onnx" \
    --max-batch 1,8,32 --concurrency 200 --rounds 3 --json "$WORK/serve_cuda.json"
  step serve_cuda_graph 300 "$PY" "$ROOT/benchmarks/serve_throughput.py" --device cuda --cuda-graph \
    --onnx "$CNN/model.onnx" --max-batch 1,8,32 --concurrency 200 --rounds 3 --json "$WORK/serve_cuda_graph.json"
fi

if [ "$DRY" = 1 ]; then
  step report 60 summarize
  echo "dry run: every step's command printed and checked$([ "$FAILED" = 1 ] && echo ', with FAILURES above')"
  [ "$WORK_CREATED" = 1 ] && rm -rf "$WORK"
  exit "$FAILED"
fi
summarize || FAILED=1
echo "work folder: $WORK"
exit "$FAILED"
