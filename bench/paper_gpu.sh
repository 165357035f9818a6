#!/bin/bash
# The paper recipe (configs/mnist.py: L2L-DA and PGD-10) trained on lent GPUs in chunks.
#
# A lent machine lives a few minutes, has JAX but no TensorFlow and no network, and only what
# its command writes under $OUT comes back. So each lending trains both runs for as long as
# it allows, from where the previous lending stopped, and sends back a small workdir (the
# config, the newest checkpoint and best checkpoint only, the logs); here it is unpacked into
# the git-ignored .device/ and carried to the next lending.
#
# Once, here (as for bench/device_run.sh):
#   python bench/offline_data.py save --snapshot=.device/mnist.npz
#   pip download --no-deps ml_collections==1.1.0 -d .device/whl
# Each lending, there (the run tool's `carry` names .device):
#   TRAIN_SECONDS=420 bash bench/paper_gpu.sh train        # -> $OUT/paper_<method>.tgz
# then here, with the folder the files came back to:
#   bash bench/paper_gpu.sh unpack FILES_AT                 # -> .device/runs/paper_<method>
# When a run has reached the recipe's last step (its results.json exists), there:
#   bash bench/paper_gpu.sh eval                           # the full suite -> $OUT/results.tgz
# `bash bench/paper_gpu.sh status` here prints each run's step and last validation line.
# A rehearsal here: LOCAL=1 RUNS=/tmp/r OUT=/tmp/o METHODS=pgd CONFIG=configs/mnist.py:cpu \
#   TRAIN_SECONDS=60 CHECKPOINT_EVERY=100 bash bench/paper_gpu.sh train
set -u
mode=${1:-train}
methods=${METHODS:-"l2lda pgd"}
runs=${RUNS:-.device/runs}
out=${OUT:-/tmp/device_out}

newest() {  # newest DIR: the highest-numbered step folder in DIR (empty if none)
  ls "$1" 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -1
}

setup_device() {
  export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
  mkdir -p "$out"
  [ -n "${LOCAL:-}" ] && return  # a rehearsal on this machine: its packages are installed
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
  nvidia-smi -L 2>/dev/null || python3 -c "import jax; print(jax.devices())"
}

pack() {  # pack METHOD: the small workdir that comes back
  local dir=$runs/paper_$1 ckpt best
  ckpt=$(newest "$dir/checkpoints")
  best=$(newest "$dir/best")
  local files=(config.json chunks.log)
  [ -n "$ckpt" ] && files+=("checkpoints/$ckpt")
  [ -n "$best" ] && files+=("best/$best")
  [ -f "$dir/results.json" ] && files+=(results.json)
  [ -d "$dir/tensorboard" ] && files+=(tensorboard)
  tar czf "$out/paper_$1.tgz" -C "$dir" "${files[@]}"
}

case "$mode" in
  train)
    setup_device
    budget=${TRAIN_SECONDS:-420}
    for method in $methods; do  # both at once: one LeNet-5 run leaves the card mostly idle
      dir=$runs/paper_$method
      mkdir -p "$dir"
      if [ -f "$dir/results.json" ]; then echo "$method: finished"; continue; fi
      (
        echo "=== chunk started $(date -u +%FT%TZ), from step $(newest "$dir/checkpoints")" >> "$dir/chunks.log"
        # SIGTERM at the budget; a save in flight is atomic, so the last finished
        # checkpoint is what the next chunk resumes from.
        timeout -s TERM -k 20 "$budget" python3 bench/offline_train.py \
          --snapshot=.device/mnist.npz --config="${CONFIG:-configs/mnist.py}" --config.method="$method" \
          --config.checkpoint.every_steps="${CHECKPOINT_EVERY:-1000}" \
          --workdir="$dir" >> "$dir/chunks.log" 2>&1
        rc=$?  # 124: stopped at the budget, to be continued
        echo "=== chunk ended $(date -u +%FT%TZ) rc=$rc, newest checkpoint $(newest "$dir/checkpoints")" >> "$dir/chunks.log"
        pack "$method"
      ) &
    done
    wait
    tail -n 3 $runs/paper_*/chunks.log
    ;;
  unpack)
    from=${2:?usage: paper_gpu.sh unpack FOLDER}
    for archive in "$from"/paper_*.tgz; do
      name=$(basename "$archive" .tgz)
      rm -rf "$runs/$name.new" && mkdir -p "$runs/$name.new"
      tar xzf "$archive" -C "$runs/$name.new" || exit 1
      rm -rf "$runs/$name" && mv "$runs/$name.new" "$runs/$name"
      echo "$name: step $(newest "$runs/$name/checkpoints")"
    done
    ;;
  status)
    for dir in $runs/paper_*; do
      echo "$(basename "$dir"): checkpoint $(newest "$dir/checkpoints"), best $(newest "$dir/best")"
      grep 'validation at step' "$dir/chunks.log" | tail -1
    done
    ;;
  eval)
    setup_device
    res=/tmp/paper_results
    mkdir -p "$res"
    for method in $methods; do
      dir=$runs/paper_$method
      [ -f "$dir/results.json" ] || { echo "$method: not finished, skipped"; continue; }
      timeout "${EVAL_SECONDS:-500}" python3 bench/offline_data.py evaluate \
        --snapshot=.device/mnist.npz --workdir="$dir" --noprogress --checks --batch_size=2000 \
        --attacks=clean,fgsm,pgd10,pgd100,pgd100x10,cw100,cw1000,l2lda,square \
        --output="$res/eval_paper_$method.json" --figures_dir="$res/figures_$method" \
        > "$res/eval_paper_$method.log" 2>&1 &
    done
    wait
    tar czf "$out/results.tgz" -C "$res" .
    ;;
  *)
    echo "usage: paper_gpu.sh train|unpack FOLDER|status|eval" >&2
    exit 2
    ;;
esac
