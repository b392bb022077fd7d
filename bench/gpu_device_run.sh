#!/usr/bin/env bash
# One-shot GPU run: the throughput table (bench/gpu_throughput.py), with 2+ GPUs the
# sequence-parallel check (bench/gpu_sp_check.py), and the device checks of issue #25
# (bench/gpu_check_*.py), all within TOTAL_SECONDS (540, under the device machines' 10-minute
# command limit). For a bare GPU machine: python3 with torch,
# transformers, accelerate, safetensors, numpy, psutil, ... but without deepspeed, pydantic or
# hjson, no internet, and this repository copied but not installed.
#
#   bash bench/gpu_device_run.sh                # in the repository root, with .whl/ beside it
#   PHASES=checks bash bench/gpu_device_run.sh  # only the #25 checks (phase 4): about 8 minutes (estimate)
#   DRY_RUN=1 bash bench/gpu_device_run.sh      # print the phases and commands, run nothing
#   PHASES=checks CHECK_ARGS=--smoke-cpu OUT=/tmp/o bash bench/gpu_device_run.sh   # CPU rehearsal
#
# Phases (PHASES, comma-separated, default all four in this order), each given what is left of TOTAL_SECONDS:
#   1. throughput: 16K/32K/64K, trainer `default` variant vs the plain loop (THROUGHPUT_SECONDS, 300)
#   2. before/after: the pre-#16 behaviour (`zero3` variant) at 16K only, if 90 s are left
#   3. SP check: Ulysses x ring and ring-only stages vs one GPU at 16K, if 2+ GPUs and 120 s are left
#      (otherwise gpu_sp_check.json says why it was skipped)
#   4. checks: every bench/gpu_check_*.py in name order, if 60 s are left, each with --json-out
#      $OUT/<name>.json --log-dir --budget-seconds (what is left) and CHECK_ARGS. A check prints a
#      table, writes one JSON object and exits 0 when it holds. Issue #25: gpu_check_eval.py (items
#      1 and 4: evaluation peak per rank vs the planner's estimate, unsharded and sharded over the
#      GPUs, chunked prefill vs the old one-shot cached prefill, the ring kernel CUDA picks),
#      gpu_check_grad_accum.py (item 5: bf16 gradients accumulated over 32 micro-batches at ZeRO 2/3
#      against a float64 sum, with and without data_types.grad_accum_dtype), gpu_check_memory.py
#      (item 4: the planner's estimate vs the trainer's peak), gpu_check_preemption.py (item 2:
#      SIGTERM to the torchrun agent as PID 1 during a 40 s step; checkpoint, resume). These two
#      import the trainer tests' helpers, so the machine needs pytest importable (a pytest wheel
#      with its dependencies in .whl/fallback/ otherwise). A new bench/gpu_check_<name>.py with the
#      same options runs here without editing this script.
#
# .whl/ (git-ignored, carried to the machine) holds the wheels the trainer path needs and the
# machine lacks: deepspeed 0.19.8 (pure Python, built here with no ops), pydantic + pydantic-core
# (cp312), annotated-types, typing-inspection, typing-extensions, hjson. They are installed with
# --no-deps into $SITE, which goes first on PYTHONPATH with operator/ and trainer_image/ (the two
# import packages' roots, see pyproject.toml); gpu_throughput.py passes the same to its cells.
# .whl/fallback/ holds wheels installed only when the machine cannot import them already
# (setuptools: torch's cpp_extension, which DeepSpeed imports, needs it; Python 3.12 has no distutils).
# Optional wheels found in .whl/optional/ (flash-attn, ring-flash-attn, liger-kernel built for the
# machine's torch/CUDA) are installed the same way; without them the trainer falls back to sdpa,
# its PyTorch ring kernel and its own fused cross-entropy, and says so in each stage's runtime.
#
# Left in $OUT (and copied to bench/results/ of this checkout, named by GPU and UTC time):
# gpu_throughput.log (everything printed), gpu_throughput.json (the main table, rewritten after
# every cell), gpu_throughput_zero3.json, gpu_sp_check.json, gpu_check_*.json, cell_logs.tgz. Exit
# code: that of the main table (0 = every cell ok), else of the first failing check.
#
# Knobs (environment): OUT (default /tmp/gpu-out), PYTHON (python3), WHEELS (.whl), SITE
# (/tmp/site), TOTAL_SECONDS (540), THROUGHPUT_SECONDS (300), BENCH_ARGS (replaces the main
# table's arguments; used for the CPU rehearsal with --smoke-cpu), ZERO3_ARGS, SP_ARGS (likewise
# for phases 2 and 3; SP_ARGS="--smoke-cpu --nproc 4 ..." rehearses the SP check on CPU), PHASES,
# CHECK_ARGS (added to every check of phase 4), CHECKS (a glob of the checks phase 4 runs, default
# gpu_check_*; e.g. CHECKS='gpu_check_[gp]*' for items 2 and 5 alone: the four checks together need
# about 8 minutes, more than one 540 s run leaves them), DRY_RUN=1 (print, run nothing).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
OUT=${OUT:-/tmp/gpu-out}
TOTAL=${TOTAL_SECONDS:-540}
BUDGET=${THROUGHPUT_SECONDS:-${BUDGET_SECONDS:-300}}
START=$(date +%s)
CELL_LOGS=$(mktemp -d /tmp/gpu-cell-logs.XXXXXX)
mkdir -p "$OUT"
DEFAULT_ARGS="--lengths 16384,32768,65536 --variants default --steps 3 --warmup 1 --timeout 150 --plain-timeout 100"
read -r -a BENCH <<<"${BENCH_ARGS:-$DEFAULT_ARGS}"
read -r -a ZERO3 <<<"${ZERO3_ARGS:---lengths 16384 --variants zero3 --skip-plain --steps 3 --warmup 1 --timeout 80}"
read -r -a SPCHECK <<<"${SP_ARGS:---seq-len 16384 --steps 3 --timeout 100}"
read -r -a CHECKARGS <<<"${CHECK_ARGS:-}"
PHASES=",${PHASES:-throughput,zero3,sp,checks},"
DRY=${DRY_RUN:-0}

phase() { [[ $PHASES == *",$1,"* ]]; }

# Run a phase's command, or with DRY_RUN=1 only print it.
run() {
    if [[ $DRY == 1 ]]; then
        echo "DRY_RUN: $*"
    else
        "$@"
    fi
}

left() { echo $((TOTAL - ($(date +%s) - START))); }

install_wheels() {
    rm -rf "$SITE" && mkdir -p "$SITE"
    shopt -s nullglob
    local wheels=("$WHEELS"/*.whl "$WHEELS"/optional/*.whl) wheel module
    for wheel in "$WHEELS"/fallback/*.whl; do
        module=${wheel##*/} && module=${module%%-*}
        if "$PY" -c "import $module" 2>/dev/null; then
            echo "fallback ${wheel##*/}: not needed, $module is importable"
        else
            wheels+=("$wheel")
        fi
    done
    shopt -u nullglob
    if ((${#wheels[@]} == 0)); then
        echo "warning: no wheels in $WHEELS; deepspeed/pydantic must already be importable"
        return 0
    fi
    if "$PY" -m pip --version >/dev/null 2>&1 &&
        "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$SITE" "${wheels[@]}"; then
        echo "installed with pip into $SITE: ${wheels[*]##*/}"
    else  # no pip (or it refused): a wheel is a zip laid out for site-packages
        echo "pip unavailable or failed; unzipping the wheels into $SITE"
        "$PY" - "$SITE" "${wheels[@]}" <<'EOF'
import sys
import zipfile

for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(sys.argv[1])
    print("  unzipped", wheel)
EOF
    fi
}

preflight() {
    # Every import the trainer path makes, from where it comes; no CUDA work.
    "$PY" - <<'EOF'
import importlib
import sys

print("python", sys.version.split()[0], sys.executable)
for name in ("torch", "transformers", "accelerate", "safetensors", "setuptools", "typing_extensions", "pydantic",
             "pydantic_core", "hjson", "deepspeed", "ctxext", "ctxext_trainer", "flash_attn", "ring_flash_attn",
             "liger_kernel"):
    try:
        module = importlib.import_module(name)
        print(f"  {name:18} {getattr(module, '__version__', '?'):24} {getattr(module, '__file__', '?')}")
    except Exception as exc:  # report, don't stop: the benchmark reports per cell
        print(f"  {name:18} NOT IMPORTABLE: {type(exc).__name__}: {exc}")
import torch

print("torch.cuda.is_available():", torch.cuda.is_available(), "CUDA", torch.version.cuda,
      "devices:", torch.cuda.device_count())
try:
    import ctxext_trainer.stage  # noqa: F401  (pulls in deepspeed, the ctxext API, prometheus_client)

    print("import ctxext_trainer.stage: ok")
except Exception as exc:
    print(f"import ctxext_trainer.stage FAILED: {type(exc).__name__}: {exc}")
EOF
}

main() {
    echo "== $(date -u +%FT%TZ) $(hostname) $(getconf _NPROCESSORS_ONLN) CPUs; git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi || echo "(no nvidia-smi)"
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit,driver_version --format=csv 2>/dev/null
    free -g 2>/dev/null
    df -h /dev/shm /tmp 2>/dev/null
    echo "== wheels"
    ls -l "$WHEELS" 2>/dev/null
    [[ $DRY == 1 ]] || install_wheels
    export PYTHONPATH="$SITE:$PWD/operator:$PWD/trainer_image${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME=${HF_HOME:-/tmp/hf-home}
    export DS_BUILD_OPS=0 DS_SKIP_CUDA_CHECK=1
    echo "PYTHONPATH=$PYTHONPATH"
    echo "== preflight"
    [[ $DRY == 1 ]] || preflight
    local rc=0 budget
    if phase throughput; then
        echo "== 1. bench/gpu_throughput.py ${BENCH[*]} --budget-seconds $BUDGET"
        run "$PY" bench/gpu_throughput.py "${BENCH[@]}" --budget-seconds "$BUDGET" \
            --json-out "$OUT/gpu_throughput.json" --log-dir "$CELL_LOGS" || rc=$?
        echo "== gpu_throughput.py exit code $rc at $(date -u +%FT%TZ), $(left) s left"
    fi
    budget=$(($(left) - 20))
    if ! phase zero3; then
        echo "== 2. not in PHASES"
    elif ((budget >= 90)); then
        echo "== 2. bench/gpu_throughput.py ${ZERO3[*]} --budget-seconds $budget"
        run "$PY" bench/gpu_throughput.py "${ZERO3[@]}" --budget-seconds "$budget" \
            --json-out "$OUT/gpu_throughput_zero3.json" --log-dir "$CELL_LOGS" || echo "(zero3 phase: exit $?)"
    else
        echo "== 2. skipped: $budget s left"
    fi
    budget=$(($(left) - 10))
    if ! phase sp; then
        echo "== 3. not in PHASES"
    elif ((budget >= 120)); then
        echo "== 3. bench/gpu_sp_check.py ${SPCHECK[*]} (timeout $budget s)"
        run timeout "$budget" "$PY" bench/gpu_sp_check.py "${SPCHECK[@]}" --json-out "$OUT/gpu_sp_check.json" \
            --log-dir "$CELL_LOGS" || echo "(SP check: exit $?)"
    else
        echo "== 3. skipped: $budget s left"
        echo '{"bench": "gpu_sp_check", "skipped": "no time left in the device run"}' >"$OUT/gpu_sp_check.json"
    fi
    if phase checks; then
        run_checks || { ((rc == 0)) && rc=1; }
    else
        echo "== 4. not in PHASES"
    fi
    save_results
    return "$rc"
}

run_checks() {
    # Phase 4: each bench/gpu_check_*.py, given what is left; a check that fails or runs out of time
    # fails the phase, and a skipped one says so in its JSON.
    local check name budget failed=0 code
    for check in bench/${CHECKS:-gpu_check_*}.py; do
        [[ -f $check ]] || continue
        name=$(basename "$check" .py)
        budget=$(($(left) - 10))
        if ((budget < 60)); then
            echo "== 4. $name skipped: $budget s left"
            echo "{\"bench\": \"$name\", \"skipped\": \"no time left in the device run\"}" >"$OUT/$name.json"
            failed=1
            continue
        fi
        echo "== 4. $check ${CHECKARGS[*]} --budget-seconds $((budget * 2 / 3)) (timeout $budget s)"
        code=0
        run timeout "$budget" "$PY" "$check" "${CHECKARGS[@]}" --budget-seconds "$((budget * 2 / 3))" \
            --json-out "$OUT/$name.json" --log-dir "$CELL_LOGS" || code=$?
        echo "== $name exit code $code at $(date -u +%FT%TZ), $(left) s left"
        ((code == 0)) || failed=1
    done
    return "$failed"
}

save_results() {
    # bench/results/ of this checkout too (on a lent device machine only $OUT comes back)
    local gpu stamp f
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -cs 'A-Za-z0-9' '_' | tr 'A-Z' 'a-z')
    stamp=$(date -u +%Y%m%dT%H%MZ)
    mkdir -p bench/results
    for f in "$OUT"/gpu_throughput.json "$OUT"/gpu_throughput_zero3.json "$OUT"/gpu_sp_check.json \
        "$OUT"/gpu_check_*.json; do
        [[ -f "$f" ]] && cp "$f" "bench/results/$(basename "$f" .json)_${gpu:-cpu}_$stamp.json"
    done
    echo "== results copied to bench/results/*_${gpu:-cpu}_$stamp.json"
}

main 2>&1 | tee "$OUT/gpu_throughput.log"
rc=${PIPESTATUS[0]}
tar -czf "$OUT/cell_logs.tgz" -C "$CELL_LOGS" . 2>/dev/null || true
rm -rf "$CELL_LOGS"
exit "$rc"
