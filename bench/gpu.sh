#!/usr/bin/env bash
# The GPU figures: results/gpu.md (the README's default run, the training-step and emulator
# benches) and the Fashion-MNIST runs that a GPU makes cheap (ResNet-20, and LeNet-5's rows split
# over processes sharing the one GPU).
#
#   pip install -e '.[cuda,bench]'
#   bash bench/gpu.sh benches   # a few minutes: writes $OUT_DIR/gpu.md
#   bash bench/gpu.sh tables    # the sweeps under $SWEEPS; then, anywhere those runs are:
#   python bench/accuracy_table.py --dataset=fashion_mnist --workdir=$SWEEPS --report_only
#   python bench/accuracy_table.py --dataset=fashion_mnist_resnet20 --workdir=$SWEEPS --report_only
#
# Each part is bounded (DEADLINE seconds for the tables); runs cut off by it stay unfinished and
# the tables say PARTIAL. LeNet-5's float runs are trained first if $SWEEPS lacks them.
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:?usage: bash bench/gpu.sh benches|tables}
out=${OUT_DIR:-results}
sweeps=${SWEEPS:-runs/sweeps}
runs=${RUNS:-runs/gpu}
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes share the GPU
mkdir -p "$out" "$runs" "$sweeps"

device() {
  python - <<'EOF'
import jax
d = jax.devices()[0]
print(f"{d.device_kind} ({d.platform}, {jax.device_count()} device(s)), jax {jax.__version__}")
EOF
}

if [ "$part" = benches ]; then
  {
    echo "# GPU figures"
    echo
    echo "$(date -u +%F), $(device); \`bash bench/gpu.sh benches\`."
    echo
  } > "$out/gpu.md"
  # Float and uniform W4A4/W8A8 beside Qwix's W8A8 (every quantizer on LeNet-5).
  for model in lenet5 resnet20; do
    rows=uniform/W8A8,uniform/W4A4
    [ $model = lenet5 ] && rows=
    python bench/step_time.py --model=$model --batch_size=128 --steps=20 --reps=7 --rows="$rows" \
      --out="$runs/step_time_$model.md" && cat "$runs/step_time_$model.md" >> "$out/gpu.md"
  done
  # The integer emulator on the README's default W4A4 run.
  [ -f "$runs/w4a4/summary.json" ] || python train.py --config=configs/default.py \
    --workdir="$runs/w4a4" --config.tensorboard=False
  python bench/intsim_throughput.py --workdir="$runs/w4a4" --repeats=30 \
    --out="$runs/intsim.md" && cat "$runs/intsim.md" >> "$out/gpu.md"
  # The README's main job: float and W4A4, one process each, start-up and compilation included.
  python bench/default_run.py --seeds=0 --out="$runs/default_run.md" &&
    cat "$runs/default_run.md" >> "$out/gpu.md"
  exit 0
fi

[ "$part" = tables ] || { echo "bench/gpu.sh: unknown part '$part' (benches or tables)"; exit 2; }
deadline=${DEADLINE:-3600}
shards=${SHARDS:-8}
table=(python bench/accuracy_table.py --workdir="$sweeps" --extra_seeds= --levels_layer=)
# LeNet-5's float runs (30 epochs), one process per seed, if not there yet.
for seed in 0 1 2; do
  [ -f "$sweeps/fashion_mnist/full/seed$seed/float/summary.json" ] ||
    timeout "$deadline" "${table[@]}" --dataset=fashion_mnist --seeds=$seed --only='^$' \
      --out_dir="$runs/tables/float$seed" > "$runs/float$seed.log" 2>&1 &
done
# ResNet-20: one process per seed (its float run, then its rows).
for seed in 0 1 2; do
  timeout "$deadline" "${table[@]}" --dataset=fashion_mnist_resnet20 --seeds=$seed \
    --out_dir="$runs/tables/resnet20_seed$seed" > "$runs/resnet20_seed$seed.log" 2>&1 &
done
while [ "$(ls "$sweeps"/fashion_mnist/full/seed{0,1,2}/float/summary.json 2>/dev/null | wc -l)" \
        -lt 3 ] && [ "$SECONDS" -lt "$deadline" ]; do
  sleep 5
done
# LeNet-5's rows, split over processes.
for ((i = 0; i < shards; i++)); do
  timeout $((deadline > SECONDS ? deadline - SECONDS : 1)) "${table[@]}" \
    --dataset=fashion_mnist --shard=$i/$shards \
    --out_dir="$runs/tables/shard$i" > "$runs/shard$i.log" 2>&1 &
done
wait
grep -h "seed .: " "$runs"/*.log | sort
