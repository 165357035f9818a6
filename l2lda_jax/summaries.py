"""TensorBoard scalar events, with or without TensorFlow.

clu's SummaryWriter imports TensorFlow. A machine with JAX and no TensorFlow (a lent GPU, a
TPU VM image) still trains: the `tensorboard` package alone writes the same scalar events.
"""

import time

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
