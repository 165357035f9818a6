#!/bin/bash
# The GPU measurements of docs/RESULTS.md and docs/PERFORMANCE.md, as run on a lent machine
# that has JAX, PyTorch and CUDA but no TensorFlow and no network.
#
# Prepare here (needs the TFDS data and the training runs), into the git-ignored .device/:
#   python bench/offline_data.py save --snapshot=.device/mnist.npz
#   cp -r RUN/{config.json,best,checkpoints} .device/runs/NAME/     # for each run
#   pip download --no-deps ml_collections==1.1.0 -d .device/whl     # not on that machine
#   (evaluation needs only RUN/{config.json,best}; mnist_cpu_pgd15k and mnist_cpu_l2lda for full)
# Then run there:  bash bench/device_run.sh smoke|full  (results go to $OUT/results.tgz), or
#   bash bench/device_run.sh eval RUN...   the complete table, Square included, of each RUN.
set -u
mode=${1:-full}
shift
out=${OUT:-/tmp/device_out}
res=/tmp/device_results
mkdir -p "$out" "$res"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site

nvidia-smi -L | tee "$res/device.txt"
python3 -c "import jax, flax, optax, orbax.checkpoint as o, torch; print('jax', jax.__version__,
  'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, 'torch',
  torch.__version__, jax.devices())" 2>&1 | tee -a "$res/device.txt"

evaluate() {  # evaluate RUN ATTACKS EXTRA_FLAGS...
  local run=$1 attacks=$2; shift 2
  timeout "${EVAL_TIMEOUT:-330}" python3 bench/offline_data.py evaluate --snapshot=.device/mnist.npz \
    --workdir=.device/runs/$run --attacks=$attacks --output="$res/eval_$run.json" \
    --noprogress "$@" > "$res/eval_$run.log" 2>&1
  echo "$run exit $?: $(tail -c 600 "$res/eval_$run.log")"
}

if [ "$mode" = smoke ]; then
  start=$SECONDS
  evaluate mnist_cpu_l2lda clean,pgd100,l2lda --num_examples=1000 --generator_steps=100
  echo "smoke evaluate: $((SECONDS - start)) s"
  timeout 120 python3 bench/benchmark.py --only=pgd10 --repeats=5 2>&1 | tail -4
elif [ "$mode" = eval ]; then
  # Square runs every query for a batch with any survivor: big batches keep it short.
  for run in "$@"; do  # all at once, sharing the GPU
    # The report is rewritten after every row, so a timeout keeps the rows done.
    evaluate "$run" clean,fgsm,pgd10,pgd100,pgd100x10,cw100,cw1000,square,apgd-ce,apgd-t,l2lda --checks \
      --batch_size=2000 --figures_dir="$res/figures_$run" &
  done
  wait
else
  attacks=clean,fgsm,pgd10,pgd100,pgd100x10,cw100,cw1000,l2lda
  for run in mnist_cpu_pgd15k mnist_cpu_l2lda; do  # both at once, sharing the GPU
    evaluate $run $attacks --checks --figures_dir="$res/figures_$run" &
  done
  wait
  timeout "${BENCH_TIMEOUT:-200}" python3 bench/benchmark.py --repeats=10 \
    --only=l2lda_paper,pgd10,l2lda_cpu \
    --json="$res/bench_gpu.json" > "$res/bench_gpu.log" 2>&1
  tail -5 "$res/bench_gpu.log"
fi
tar czf "$out/results.tgz" -C "$res" .
