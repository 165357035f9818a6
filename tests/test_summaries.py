"""The TensorFlow-free events writer writes scalars that the curve scripts read back."""

from bench.training_curves import read_scalars
from l2lda_jax import summaries


def test_events_writer_round_trips_scalars(tmp_path):
  writer = summaries.EventsWriter(str(tmp_path))
  writer.write_scalars(100, {'loss': 0.5, 'accuracy': 0.25})
  writer.write_scalars(200, {'loss': 0.125})
  writer.close()
  scalars = read_scalars(str(tmp_path))
  assert [(step, value) for step, _, value in scalars['loss']] == [(100, 0.5), (200, 0.125)]
  assert [(step, value) for step, _, value in scalars['accuracy']] == [(100, 0.25)]


def test_other_processes_write_nothing(tmp_path):
  writer = summaries.summary_writer(str(tmp_path), enabled=False)
  writer.write_scalars(1, {'loss': 1.0})
  writer.close()
  assert list(tmp_path.iterdir()) == []
