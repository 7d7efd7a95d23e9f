#!/usr/bin/env bash
# Regenerates every benchmark table of bench/README.md (about 3 hours on 2 CPU cores, estimated
# from its parts; never timed whole).
#   pip install -e '.[bench,plots]' && bash bench/run_all.sh
# Results are per host: HOST_SUFFIX=_xeon bash bench/run_all.sh writes results/<name>_xeon.md
# (and .json) instead of results/<name>.md, leaving another host's tables in place.
# The accuracy sweeps (hours) are separate: python bench/accuracy_table.py [--dataset=...], and
# the Sequential net's searches on Fashion-MNIST: python bench/ptq_table.py --dataset=fashion_mnist
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-runs/bench}
host=${HOST_SUFFIX:-}
mkdir -p "$runs"

# The convolutions' kernel gradient tap by tap against XLA's (what conv_kernel_grad='auto' buys).
python bench/conv_kernel_grad.py --reps=7 --out=results/conv_kernel_grad${host}.md

# Training-step overhead against float and Qwix, interleaved in one process per model.
# Every model of the registry; each target is read from the interval of the median ratio
# (bench/intervals.py), which reaches 95 % coverage from 6 repetitions on.
python bench/step_time.py --model=lenet5 --batch_size=128 --reps=5 --processes=5 \
  --out=results/step_time${host}.md
python bench/step_time.py --model=sequential --batch_size=128 --steps=2 --reps=25 \
  --out=results/step_time_sequential${host}.md
python bench/step_time.py --model=resnet20 --batch_size=128 --steps=2 --reps=7 \
  --out=results/step_time_resnet20${host}.md
python bench/step_time.py --model=vgg_small --batch_size=128 --steps=2 --reps=9 \
  --out=results/step_time_vgg_small${host}.md
python bench/step_time.py --model=resnet18 --batch_size=128 --steps=1 --reps=6 \
  --out=results/step_time_resnet18${host}.md
# What the integer products bought: the same rows with the float products of fake-quantized values.
python bench/step_time.py --model=vgg_small --batch_size=128 --steps=2 --reps=9 \
  --integer_products=off --peer=none --rows=uniform/W8A8,uniform/W4A4,esb/W4A4-k2,nuuq/N4,liss/W4A4 \
  --out=results/step_time_vgg_small_float_products${host}.md

# int8 against float32 kernels per layer shape: what quant.integer_products='auto' is decided by.
python bench/int8_products.py --out=results/int8_products${host}.md
python bench/step_time.py --model=resnet20 --batch_size=128 --steps=2 --reps=7 --peer=none \
  --rows=liss/W4A4,uniform/W8A8 --integer_products=off \
  --out=results/step_time_resnet20_float_products${host}.md

# Peak host memory: QAT, the integer emulator and the fixed-point search against float, each job
# also with XLA's older CPU emitters; and what those emitters cost a training step.
python bench/memory.py --reps=2 --out=results/memory${host}.md
python bench/step_time.py --model=lenet5 --batch_size=128 --reps=5 --processes=3 --peer=none \
  --rows=uniform/W8A8-max,esb/W4A4-k2,log/W4A4 --older_emitters \
  --out=results/step_time_older_emitters${host}.md

# Integer emulation throughput against the jitted float model (needs a trained quantized run).
[ -d "$runs/float" ] || python train.py --config=configs/float.py --workdir="$runs/float"
[ -d "$runs/uniform_w8a8" ] || python train.py --config=configs/uniform_w4a4.py \
  --workdir="$runs/uniform_w8a8" --config.init_from="$runs/float" \
  --config.quant.weight.bits=8 --config.quant.act.bits=8
python bench/intsim_throughput.py --workdir="$runs/uniform_w8a8" \
  --out=results/intsim_throughput${host}.md
# ResNet-20 (residual adds, 21 convs): a brief run is enough, throughput does not depend on accuracy.
[ -d "$runs/float_resnet20" ] || python train.py --config=configs/float.py --config.model=resnet20 \
  --config.num_epochs=2 --workdir="$runs/float_resnet20"
[ -d "$runs/uniform_w8a8_resnet20" ] || python train.py --config=configs/uniform_w4a4.py \
  --config.model=resnet20 --config.num_epochs=1 --workdir="$runs/uniform_w8a8_resnet20" \
  --config.init_from="$runs/float_resnet20" --config.quant.weight.bits=8 --config.quant.act.bits=8
python bench/intsim_throughput.py --workdir="$runs/uniform_w8a8_resnet20" --repeats=21 \
  --out=results/intsim_throughput_resnet20${host}.md

# Post-training searches (MXQN and the fixed-point search; wall time of the Sequential search).
python bench/ptq_table.py --workdir="$runs/ptq"

# The training loop against its own bare jitted step (host and device input pipelines).
python bench/loop_efficiency.py --reps=7 --out=results/loop_efficiency${host}.md

# The fixed-point search's wall time on Fashion-MNIST's 6,000 validation images.
python bench/ptq_search_time.py --name="ptq_search_time${host}"

# Training with one CPU device per core against one device.
python bench/cpu_devices.py --steps=80 --reps=3 --out=results/cpu_devices${host}.md
