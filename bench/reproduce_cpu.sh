#!/usr/bin/env bash
# The CPU-scale reproduction in the order that gives results soonest: Table 2 (its models are
# the defenses everything else uses), Figure 2 and Table 3 in the same workdir (they reuse
# Table 2's models), then Table 1 in a workdir of its own at the shorter ablation budget that
# docs/reproduction/README.md states. Each command skips what is done and resumes what is not,
# so the script can be killed and rerun at any point.
#   L2LDA_MANUAL_DIR=../shared/data/mnist bash bench/reproduce_cpu.sh WORKDIR TABLE1_WORKDIR
set -euo pipefail
workdir=${1:?usage: reproduce_cpu.sh WORKDIR TABLE1_WORKDIR}
table1_workdir=${2:?usage: reproduce_cpu.sh WORKDIR TABLE1_WORKDIR}
python=${PYTHON:-python}
for target in table2 figure2 table3; do
  "$python" -m l2lda_jax.reproduce --target="$target" --scale=cpu --workdir="$workdir"
done
"$python" -m l2lda_jax.reproduce --target=table1 --scale=cpu --workdir="$table1_workdir" \
  --override=l2lda_run.steps=9000 --override='l2lda_run.lr_decay_steps=(7000,8500)'
