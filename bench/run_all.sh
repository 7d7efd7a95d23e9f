#!/usr/bin/env bash
# Regenerates every benchmark table of bench/README.md (about an hour on 2 CPU cores).
#   pip install -e '.[bench,plots]' && bash bench/run_all.sh
# The accuracy sweep (hours) is separate: python bench/accuracy_table.py
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-runs/bench}
mkdir -p "$runs"

# Training-step overhead against float and Qwix, interleaved in one process per model.
python bench/step_time.py --model=lenet5 --batch_size=128 --out=results/step_time.md
python bench/step_time.py --model=resnet20 --batch_size=128 --steps=5 --reps=5 \
  --out=results/step_time_resnet20.md

# Peak host memory: QAT, the integer emulator and the fixed-point search against float.
python bench/memory.py --out=results/memory.md

# Integer emulation throughput against the jitted float model (needs a trained quantized run).
[ -d "$runs/float" ] || python train.py --config=configs/float.py --workdir="$runs/float"
[ -d "$runs/uniform_w8a8" ] || python train.py --config=configs/uniform_w4a4.py \
  --workdir="$runs/uniform_w8a8" --config.init_from="$runs/float" \
  --config.quant.weight.bits=8 --config.quant.act.bits=8
python bench/intsim_throughput.py --workdir="$runs/uniform_w8a8" \
  --out=results/intsim_throughput.md

# Post-training searches (MXQN and the fixed-point search; wall time of the Sequential search).
python bench/ptq_table.py --workdir="$runs/ptq"
