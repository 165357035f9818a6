#!/usr/bin/env bash
# Copies a reproduce workdir to another folder, keeping what a later rerun of
# `python -m l2lda_jax.reproduce` needs and nothing else: every table, figure and report, and
# per model its config.json, results.json, TensorBoard events, best checkpoint and newest
# checkpoint (an unfinished run resumes from it). The compilation cache and older
# checkpoints stay behind. Used to keep docs/reproduction/cpu (about 1 MB per model) across
# machines that do not keep their disks:
#   bash bench/archive_reproduction.sh /work/runs/repro_cpu docs/reproduction/cpu   # save
#   bash bench/archive_reproduction.sh docs/reproduction/cpu /work/runs/repro_cpu   # restore
set -euo pipefail
source_dir=${1:?usage: archive_reproduction.sh SOURCE_WORKDIR DESTINATION}
destination=${2:?usage: archive_reproduction.sh SOURCE_WORKDIR DESTINATION}
mkdir -p "$destination"
# The best checkpoint is replaced when a later step wins on validation: drop the old copy.
for run in "$source_dir"/runs/*/; do
  [ -d "$run/best" ] && rm -rf "$destination/runs/$(basename "$run")/best"
done
tar -C "$source_dir" --exclude=./xla_cache --exclude='./runs/*/checkpoints' -cf - . |
  tar -C "$destination" -xf -
for run in "$source_dir"/runs/*/; do
  newest=$(ls "$run/checkpoints" 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -1 || true)
  [ -n "$newest" ] || continue
  name=$(basename "$run")
  mkdir -p "$destination/runs/$name/checkpoints"
  # Only the newest: older ones left in the destination by an earlier copy go.
  find "$destination/runs/$name/checkpoints" -mindepth 1 -maxdepth 1 ! -name "$newest" \
    -exec rm -rf {} +
  cp -a "$run/checkpoints/$newest" "$destination/runs/$name/checkpoints/"
done
