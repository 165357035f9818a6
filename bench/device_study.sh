#!/bin/bash
# A recipe study on a lent GPU: several `configs/mnist.py:cpu` variants trained at once on the
# one card (each is small), then each judged on validation images by clean, PGD-100 and Square,
# with the state of its generator's z pathway. Ranking only: the chosen recipe is then trained
# and timed on the development CPU.
#
# Prepare here as for bench/device_run.sh (.device/mnist.npz and .device/whl with ml_collections
# and clu), then run there:
#   bash bench/device_study.sh TRAIN_SECONDS 'NAME|--config.FIELD=VALUE ...' ...
# Results (logs, evaluation JSONs, z pathway lines, TensorBoard events) go to $OUT/study.tgz.
set -u
train_seconds=$1; shift
out=${OUT:-/tmp/device_out}
res=/tmp/study_results
runs=/tmp/study_runs
mkdir -p "$out" "$res" "$runs"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
nvidia-smi -L | tee "$res/device.txt"

for variant in "$@"; do
  name=${variant%%|*}; overrides=${variant#*|}
  # shellcheck disable=SC2086  # the overrides are separate flags
  timeout "$train_seconds" python3 bench/offline_train.py --snapshot=.device/mnist.npz \
    --config=configs/mnist.py:cpu --workdir="$runs/$name" $overrides > "$res/$name.log" 2>&1 &
done
wait
for variant in "$@"; do
  name=${variant%%|*}
  echo "$name: $(grep -c 'validation at step' "$res/$name.log") validations, last: $(grep 'validation at step' "$res/$name.log" | tail -1 | cut -c60-)"
  cp "$runs/$name"/events.* "$res/$name.events" 2>/dev/null
  python3 bench/z_pathway.py --workdir="$runs/$name" > "$res/$name.z.jsonl" 2>/dev/null &
  timeout 240 python3 bench/offline_data.py evaluate --snapshot=.device/mnist.npz \
    --workdir="$runs/$name" --attacks=clean,pgd100,square --split=validation \
    --num_examples=1000 --batch_size=1000 --output="$res/$name.eval.json" --noprogress \
    > "$res/$name.eval.log" 2>&1 &
done
wait
for variant in "$@"; do
  name=${variant%%|*}
  echo "$name: $(tail -1 "$res/$name.z.jsonl") $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('step', d['checkpoint_step'], {r['attack']: r['accuracy'] for r in d['rows']}, 'worst', d['worst_case_accuracy'])" "$res/$name.eval.json" 2>&1 | tail -1)"
done
tar czf "$out/study.tgz" -C "$res" .
