#!/usr/bin/env bash
# Issue #15, section 2: one paper-scale reproduction protocol on one GPU, prepared so that the device time
# goes to training. On the GPU machine, from the repository root, with .whl/ and .gpu/ carried (made here by
# bench/gpu_prepare.sh):
#
#     bash bench/gpu_protocols.sh framegan-1ball      # or framegan-3ball, tgan-mnist
#
# It installs the carried wheels into /tmp/site (nothing can be fetched there), runs
# `python -m recipes.reproduce NAME --scale paper --device cuda` (bf16 autocast, torch.compile) with the stage
# lengths of STEPS below (or $STEPS), stops it after $BUDGET_S seconds (a later call resumes the same --out,
# stage by stage, from its last checkpoint), and copies the report, the training logs, the GPU's name and
# memory and a sample image into $OUT, flat, as the device tool brings files back.
# DEVICE=cpu runs the same path without a GPU (a plumbing check: the paper's models are slow on a CPU).
# Lengths: set from the step rates a first run measures (metrics.csv's steps_per_s); until then a guess.
set -uo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: bash bench/gpu_protocols.sh framegan-1ball|framegan-3ball|tgan-mnist}
declare -A STEPS_OF=([framegan-1ball]="stage1=2000,stage2=1500" [framegan-3ball]="stage1=2000,stage2=1500"
                     [tgan-mnist]="train=4000")
steps=${STEPS:-${STEPS_OF[$name]:?unknown protocol $name}}
out=${OUT:-gpu-out}
run=${RUN_DIR:-/tmp/repro-$name}
mkdir -p "$out"
export PYTHONPATH="$PWD:$PWD/.gpu${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! python3 -c "import orjson, dask.distributed, webdataset" 2> /dev/null; then  # the GPU image lacks them
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || { echo "carry .whl/ (bash bench/gpu_prepare.sh)" >&2; exit 2; }
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
python3 -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))" \
    | tee "$out/torch.txt"
start=$(date +%s)
timeout --signal=INT "${BUDGET_S:-540}" python3 -m recipes.reproduce "$name" --out "$run" --scale paper \
    --device "${DEVICE:-cuda}" --steps "$steps" 2>&1 | tee "$out/$name.log"
rc=${PIPESTATUS[0]}
echo "rc=$rc seconds=$(( $(date +%s) - start )) steps=$steps" | tee -a "$out/$name.log"
nvidia-smi --query-gpu=memory.used --format=csv >> "$out/gpu.csv" 2>&1
du -sh "$run" >> "$out/$name.log"  # a paper-scale FrameGAN checkpoint is 4.3 GB
cp "$run/report.json" "$out/$name-report.json" 2>/dev/null
for stage in "$run"/stage1 "$run"/stage2 "$run"/run; do
    [ -f "$stage/metrics.csv" ] && cp "$stage/metrics.csv" "$out/$name-$(basename "$stage")-metrics.csv"
done
sample=$(ls "$run"/stage2/samples/videos-*.png "$run"/run/samples/step-*.png 2>/dev/null | tail -1)
[ -n "$sample" ] && cp "$sample" "$out/$name-sample.png"
exit "$rc"
