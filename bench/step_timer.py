"""Times a training step the same way for every framework the benchmark compares."""

import os
import statistics
import time


def time_step(step_fn, warmup: int = 2, repeats: int = 5, synchronize=lambda: None) -> dict:
  """Seconds per call of step_fn: warmup untimed calls, then the median and min of repeats.

  `synchronize` waits for queued device work (torch.cuda.synchronize on a GPU).
  `system_s_per_step` is the kernel CPU time of the timed calls (all threads) per call.
  """
  for _ in range(warmup):
    step_fn()
  synchronize()
  times = []
  cpu_before = os.times()
  for _ in range(repeats):
    start = time.perf_counter()
    step_fn()
    synchronize()
    times.append(time.perf_counter() - start)
  cpu_after = os.times()
  return {'median': statistics.median(times), 'min': min(times), 'repeats': repeats,
          'system_s_per_step': (cpu_after.system - cpu_before.system) / repeats}
