"""TensorBoard scalar events, with or without TensorFlow, and a run's working time read back
from them.

clu's SummaryWriter imports TensorFlow. A machine with JAX and no TensorFlow (a lent GPU, a
TPU VM image) still trains: the `tensorboard` package alone writes the same scalar events.
"""

import glob
import os
import statistics
import time
from typing import Optional

from absl import logging


class EventsWriter:
  """write_scalars / flush / close (clu's writer interface) on tensorboard's event writer."""

  def __init__(self, workdir: str):
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    self._writer = EventFileWriter(workdir)

  def write_scalars(self, step: int, scalars: dict) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
              for tag, value in scalars.items()]
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary_pb2.Summary(value=values)))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class NoWriter:
  """The writer of every process but the first: writes nothing."""

  def write_scalars(self, step: int, scalars: dict) -> None:
    del step, scalars

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def summary_writer(workdir: str, enabled: bool = True):
  """clu's SummaryWriter when TensorFlow is installed, else EventsWriter; NoWriter if not
  `enabled` (processes other than 0)."""
  if not enabled:
    return NoWriter()
  try:
    from clu import metric_writers
  except ImportError as e:  # clu.metric_writers imports TensorFlow
    logging.info('TensorBoard events through the tensorboard package (%s)', e)
    return EventsWriter(workdir)
  return metric_writers.SummaryWriter(workdir)


# ----------------------------------------------------------------------------- reading back
def read_event_times(workdir: str) -> list[list[tuple[int, float]]]:
  """[(step, wall time)] of every logged event, one list per events file (process), the
  oldest process first (by its first event: a git checkout does not keep file times)."""
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
  files = []
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    files.append([(int(event.step), event.wall_time)
                  for event in EventFileLoader(path).Load() if event.summary.value])
  return sorted((times for times in files if times), key=lambda times: times[0][1])


def training_clock(event_files: list[list[tuple[int, float]]],
                   max_gap_s: float = 300.0) -> list[tuple[int, float]]:
  """[(step, training seconds)] along the path the final model took.

  Each events file is one process; a step's time is that of its first event (one event
  per scalar). Steps that a later process redid (it resumed from an older checkpoint) are
  dropped from the earlier file. A gap longer than `max_gap_s` between consecutive logged
  steps (a paused process, the time between a kill and a resume) is counted as one
  typical gap (the median), not as its wall time.
  """
  kept = []
  for i, times in enumerate(event_files):
    later_starts = [min(step for step, _ in later) for later in event_files[i + 1:]]
    limit = min(later_starts, default=float('inf'))
    first_wall = {}
    for step, wall in times:
      if step < limit:
        first_wall[step] = min(wall, first_wall.get(step, wall))
    kept += [(wall, step) for step, wall in first_wall.items()]
  kept.sort()
  if not kept:
    return []
  gaps = [b[0] - a[0] for a, b in zip(kept, kept[1:])]
  typical = statistics.median(gaps) if gaps else 0.0
  clock, seconds = [(kept[0][1], 0.0)], 0.0
  for gap, (_, step) in zip(gaps, kept[1:]):
    seconds += gap if gap <= max_gap_s else typical
    clock.append((step, seconds))
  return clock


def training_seconds(workdir: str) -> Optional[float]:
  """A run's working time over all its processes (a killed and resumed run's too), read from
  its events; None without events."""
  clock = training_clock(read_event_times(workdir))
  return clock[-1][1] if clock else None
