"""summaries.training_clock: working time of a paused or resumed run."""

import pytest

from bench.robustness_vs_minutes import minute_of_step
from l2lda_jax.summaries import training_clock


def test_uninterrupted_run_is_its_wall_clock():
  events = [[(0, 100.0), (100, 120.0), (200, 140.0), (300, 160.0)]]
  assert training_clock(events) == [(0, 0.0), (100, 20.0), (200, 40.0), (300, 60.0)]


def test_a_pause_counts_as_one_typical_gap():
  # Paused for 1,000 s between steps 200 and 300 (SIGSTOP): counted as 20 s, the median gap
  # between logged steps (several scalars share a step; their events are one step's time).
  events = [[(0, 0.0), (0, 0.1), (100, 20.0), (100, 20.1), (200, 40.0), (300, 1040.0),
             (300, 1040.1), (400, 1060.0)]]
  clock = dict(training_clock(events, max_gap_s=300))
  assert clock[300] == pytest.approx(60.0)
  assert clock[400] == pytest.approx(80.0)


def test_steps_redone_after_a_resume_are_counted_once():
  # Killed after step 300, resumed an hour later from the checkpoint at 200: the first
  # process's step 200 and 300 were redone, so only the second process's count.
  first = [(0, 0.0), (100, 20.0), (200, 40.0), (300, 60.0)]
  second = [(200, 3660.0), (300, 3680.0), (400, 3700.0)]
  clock = training_clock([first, second], max_gap_s=300)
  assert [step for step, _ in clock] == [0, 100, 200, 300, 400]
  assert dict(clock)[400] == pytest.approx(80.0)
  assert minute_of_step(clock, 250) == pytest.approx(60.0 / 60)


def test_a_resumed_runs_training_time_in_the_reproduction_table_covers_every_process(
    tmp_path, monkeypatch):
  """reproduce's model record: results.json's seconds are the last process's only, so a
  resumed run's time is read from the events both processes wrote (the same working time
  as above: 80 s, not the 40 s of the second process nor the hour between them)."""
  import os
  from l2lda_jax import paper_tables, reproduce, summaries
  processes = [[(0, 0.0), (100, 20.0), (200, 40.0), (300, 60.0)],
               [(200, 3660.0), (300, 3680.0), (400, 3700.0)]]
  for i, times in enumerate(processes):
    folder = tmp_path / f'process{i}'  # one events file per process, as train.py writes
    writer = summaries.EventsWriter(str(folder))
    for step, wall in times:
      monkeypatch.setattr(summaries.time, 'time', lambda wall=wall: 1e9 + wall)
      writer.write_scalars(step, {'loss': 1.0})
    writer.close()
    (path,) = folder.iterdir()
    # File times say the opposite order (a git checkout's); the events' own times count.
    os.utime(path, (2e9 - i, 2e9 - i))
    path.rename(tmp_path / path.name)
  resumed = reproduce.TrainedModel(paper_tables.PGD100, 0, str(tmp_path), 'cmd', {
      'train_seconds_this_process': 40.0, 'resumed_from_step': 200})
  assert reproduce.train_seconds(resumed) == pytest.approx(80.0)
  one_process = dict(resumed.results, resumed_from_step=None)
  assert reproduce.train_seconds(
      reproduce.TrainedModel(paper_tables.PGD100, 0, str(tmp_path), 'cmd', one_process)) == 40.0
