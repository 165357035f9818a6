"""AutoAttack's standard version (Croce and Hein, ICML 2020): APGD-CE, APGD-T, FAB-T and
Square in sequence, each stage run only on the examples every earlier stage left correct.

Robust accuracy after the last stage is AutoAttack's number; after each stage it shows
what each attack added. The stages are the pure attacks of this package; this module
holds the sequence's bookkeeping (host-side, so an interrupted run resumes at a stage
boundary) and AutoAttack's warnings about evaluations that cannot be trusted.
"""

import dataclasses
import functools
import time
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from l2lda_jax.attacks import apgd, fab, square

STANDARD_STAGES = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
GRADIENT_STAGES = ('apgd-ce', 'apgd-t', 'fab-t')
SQUARE_QUERIES = 5000  # the standard version's budget
ROW_PREFIX = 'autoattack '  # evaluation rows: 'autoattack apgd-ce', ..., one per stage


def stage_attacks(eps: float, square_queries: int = SQUARE_QUERIES) -> dict:
  """Stage name -> `(logits_fn, x, y, key) -> x_adv` with the standard settings (Linf)."""
  return {
      'apgd-ce': functools.partial(apgd.apgd, eps=eps, loss='ce'),
      'apgd-t': functools.partial(apgd.apgd_targeted, eps=eps),
      'fab-t': functools.partial(fab.fab_targeted, eps=eps),
      'square': functools.partial(square.square_linf, eps=eps, n_queries=square_queries),
  }


def row_name(stage: str) -> str:
  return ROW_PREFIX + stage


@dataclasses.dataclass
class StageResult:
  """One stage: robust (per example, after this and every earlier stage) and its cost."""
  stage: str
  robust: np.ndarray  # bool [N]
  attacked: int  # examples this stage ran on (the survivors of the earlier stages)
  seconds: float
  resumed: bool = False


# (stage, indices of the examples still robust) -> (correct [len], x_adv [len, H, W, C])
RunStage = Callable[[str, np.ndarray], tuple]


def run_sequence(run_stage: RunStage, clean_correct: np.ndarray,
                 stages: Sequence[str] = STANDARD_STAGES,
                 done: Optional[Mapping[str, np.ndarray]] = None,
                 on_stage: Optional[Callable] = None) -> list[StageResult]:
  """Runs `stages` in order, each on the examples still robust.

  `done` maps stages finished by an interrupted run to their `robust` bits: those stages
  are not run again (resume). `on_stage(result, indices, x_adv)` is called after each
  stage, with the examples it attacked and the points it found (none for a resumed
  stage), so the caller can save the report and the adversarial examples before the
  next stage starts.
  """
  done = done or {}
  robust = np.asarray(clean_correct, bool).copy()
  results = []
  for stage in stages:
    if stage in done:
      robust = np.asarray(done[stage], bool) & robust
      results.append(StageResult(stage, robust.copy(), 0, 0.0, resumed=True))
      if on_stage:
        on_stage(results[-1], np.zeros(0, np.int64), None)
      continue
    alive = np.flatnonzero(robust)
    start = time.time()
    x_adv = None
    if len(alive):
      correct, x_adv = run_stage(stage, alive)
      robust[alive] = np.asarray(correct, bool)
    results.append(StageResult(stage, robust.copy(), len(alive), time.time() - start))
    if on_stage:
      on_stage(results[-1], alive, x_adv)
  return results


# ----------------------------------------------------------------------------- warnings
def masking_warning(results: Sequence[StageResult]) -> Optional[str]:
  """AutoAttack's flag: Square, which never reads a gradient, broke examples that every
  gradient stage left robust (the gradients point away from adversarial points)."""
  by_stage = {r.stage: r.robust for r in results}
  gradient = [s for s in GRADIENT_STAGES if s in by_stage]
  if 'square' not in by_stage or not gradient:
    return None
  before = by_stage[gradient[-1]]
  found = int(np.sum(before & ~by_stage['square']))
  if not found:
    return None
  return (f'Square broke {found} example(s) that {", ".join(gradient).upper()} left robust '
          f'({100 * found / len(before):.2f} pp): possible gradient masking; the gradient '
          f'attacks alone overstate robustness')
