"""Checkpoints (the project's only orbax import): the latest N, plus the best on validation.

A save is atomic through orbax itself: it writes `<step>.orbax-checkpoint-tmp` and renames it
to `<step>` only once complete, and lists only renamed steps, so a save killed half-way never
looks like a checkpoint. A complete checkpoint can still become unreadable (a disk that filled
up, a truncated, emptied or deleted file): every restore here then reports it in one line,
naming its step and folder, and falls back to the newest readable checkpoint, saying which;
CheckpointError (one line) only when none is readable, or when an explicitly requested step is.
"""

import glob
import logging as python_logging
import os
import re
import sys
from typing import Any, Callable, NamedTuple

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from l2lda_jax import sharding

BEST_METRIC = 'val_robust_accuracy'
SLOT_FOLDERS = {'best': 'best', 'latest': 'checkpoints'}
UNFINISHED_SUFFIX = ocp.path.atomicity_types.TMP_DIR_SUFFIX
UNREADABLE_SUFFIX = '.unreadable'
MAX_REASON_CHARS = 200
ITEM = 'default'  # the folder of a step's state: orbax's name for a manager's one item

Log = Callable[[str], None]


class CheckpointError(ValueError):
  """No readable checkpoint where one is needed, or the step asked for is unreadable."""


class Restored(NamedTuple):
  tree: Any  # the template's type, or orbax's raw nested dict
  step: int
  slot: str  # 'best' or 'latest': the folder it was read from


def _manager(directory: str, writer: bool = False, **options) -> ocp.CheckpointManager:
  # Synchronous saves: a checkpoint on disk is complete when save() returns, and
  # orbax's write-to-temp-then-rename makes a save killed half-way invisible.
  # Only the writer creates folders (a reader of a run with none must not leave empty
  # ones behind) and removes unfinished temp folders at start, since a reader
  # (evaluate.py during training) would delete a save in progress.
  return ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(
          create=writer, enable_async_checkpointing=False, cleanup_tmp_directories=writer,
          **options))


def failure_reason(error: BaseException) -> str:
  """A failed restore's root cause in one short line.

  TensorStore wraps the useful error (e.g. `OUT_OF_RANGE: Error reading ...`) in a bare
  Exception whose text is a page of spec; the innermost cause says what is wrong.
  """
  while True:  # the chain a traceback would show: causes, and contexts not suppressed
    inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    if inner is None:
      break
    error = inner
  line = (str(error).strip().splitlines() or [''])[0].split(' [tensorstore_spec=')[0]
  line = re.sub(r' in OCDBT database at local file "[^"]*"', '', line)  # the folder is named
  text = f'{type(error).__name__}: {line}'
  return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 3] + '...'


def _target_on_these_devices(item_dir: str):
  """A restore target for the checkpoint item in `item_dir`: its arrays' shapes and dtypes,
  replicated over this process's data mesh (as training keeps its state).

  Without a target orbax puts each array back on the devices it was saved from: a
  checkpoint of an 8-device run does not read on 1 device, and one of a 1-device run reads
  on 8 onto the first alone, where a batch sharded over all 8 cannot meet it.
  """
  saved = ocp.StandardCheckpointHandler().metadata(epath.Path(item_dir)).tree
  replicated = sharding.replicated_sharding(sharding.make_data_mesh())
  here = lambda m: (jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated)
                    if isinstance(m, ocp.metadata.ArrayMetadata) else m)
  return jax.tree_util.tree_map(here, saved)


def _is_abandoned_read_noise(unraisable) -> bool:
  """Whether an 'Exception ignored in' report is a leftover of a failed restore.

  orbax reads each array in a coroutine; when one read fails, the others are abandoned, and
  Python reports each when it collects them (often at exit, after our one-line error); a
  TensorStore callback may also find orbax's event loop closed.
  """
  code = getattr(unraisable.object, 'cr_code', None)
  if code is not None and code.co_name == '_read_array_index_and_device_put':
    return True
  return (unraisable.object is None and isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == 'Event loop is closed')


def _is_abandoned_task_report(record: python_logging.LogRecord) -> bool:
  """Whether an asyncio log record is its report of a failed restore's abandoned read: a
  task or gathering future whose TensorStore error nobody retrieved (the error, or the one
  it was raised from, names TensorStore)."""
  if 'exception was never retrieved' not in str(record.msg) or not record.exc_info:
    return False
  error = record.exc_info[1]
  while error is not None:
    if 'tensorstore_spec' in str(error) or 'TensorStore' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _keeps_asyncio_record(record: python_logging.LogRecord) -> bool:
  return not _is_abandoned_task_report(record)


def _quiet_abandoned_reads() -> None:
  """Drops the tracebacks of a failed restore's leftovers (see _is_abandoned_read_noise and
  _is_abandoned_task_report); every other unraisable exception and asyncio report still
  prints."""
  # The same function each time: logging adds a filter once however often it is asked.
  python_logging.getLogger('asyncio').addFilter(_keeps_asyncio_record)
  previous = sys.unraisablehook
  if getattr(previous, 'drops_abandoned_reads', False):
    return

  def hook(unraisable):
    if not _is_abandoned_read_noise(unraisable):
      previous(unraisable)

  hook.drops_abandoned_reads = True
  sys.unraisablehook = hook


def unfinished_saves(directory: str) -> list[str]:
  """orbax's temp folders in `directory`: saves that were interrupted (or are running)."""
  return sorted(glob.glob(os.path.join(directory, f'*{UNFINISHED_SUFFIX}*')))


def _free_name(path: str) -> str:
  """`path` + UNREADABLE_SUFFIX, numbered if that exists (orbax ignores non-numeric names)."""
  candidate, n = path + UNREADABLE_SUFFIX, 1
  while os.path.exists(candidate):
    n += 1
    candidate = f'{path}{UNREADABLE_SUFFIX}{n}'
  return candidate


def _move_aside(path: str) -> str:
  """Renames `path` to `_free_name(path)`, returning that name.

  With several processes (one workdir, shared) process 0 alone renames, and every process
  waits for it before reading the folder again.
  """
  moved = _free_name(path)
  if jax.process_index() == 0:
    os.rename(path, moved)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'move aside {path}')
  return moved


def _newest_first(steps) -> list[int]:
  return sorted(steps, reverse=True)


class Checkpoints:
  """`workdir/checkpoints` keeps the latest `keep`; `workdir/best` keeps the best one.

  writer=True is for the training run that owns the workdir: it removes unfinished saves at
  start (orbax's cleanup) and moves unreadable checkpoints aside to `<step>.unreadable`, so
  that training re-saves those steps (orbax skips saving a step not newer than its latest).
  Readers (evaluate, export, init_from) only skip them.
  """

  def __init__(self, workdir: str, keep: int, writer: bool = False,
               log: Log = logging.warning):
    self.workdir = os.path.abspath(workdir)
    self.writer = writer
    self.log = log
    if writer:
      for slot in SLOT_FOLDERS.values():
        for path in unfinished_saves(os.path.join(self.workdir, slot)):
          log(f'removing an unfinished checkpoint save (interrupted): {path}')
    self.latest = _manager(self._folder('latest'), writer=writer, max_to_keep=keep)
    self.best = _manager(self._folder('best'), writer=writer, max_to_keep=1,
                         best_fn=lambda metrics: metrics[BEST_METRIC], best_mode='max')

  def _folder(self, slot: str) -> str:
    return os.path.join(self.workdir, SLOT_FOLDERS[slot])

  def _path(self, slot: str, step: int) -> str:
    return os.path.join(self._folder(slot), str(step))

  def _slot(self, slot: str) -> ocp.CheckpointManager:
    return self.best if slot == 'best' else self.latest

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def best_step(self) -> int | None:
    return self.best.best_step()

  def save(self, step: int, state) -> None:
    self.latest.save(step, args=ocp.args.StandardSave(state))

  def save_if_best(self, step: int, state, metrics: dict) -> bool:
    """Offers the state to the best-on-validation slot; orbax keeps the higher metric.
    Returns whether this step is now the best."""
    self.best.save(step, args=ocp.args.StandardSave(state),
                   metrics={BEST_METRIC: float(metrics[BEST_METRIC])})
    return self.best.best_step() == step

  # --------------------------------------------------------------------------- candidates
  def _best_order(self) -> list[tuple[str, int]]:
    """The best step, then the rest of best/, then checkpoints/, newest first."""
    best = self.best.best_step()
    first = [('best', best)] if best is not None else []
    rest = [('best', s) for s in _newest_first(self.best.all_steps()) if s != best]
    return first + rest + [('latest', s) for s in _newest_first(self.latest.all_steps())]

  def _newest_order(self) -> list[tuple[str, int]]:
    """Every kept step of both folders, newest first; checkpoints/ before best/ at a tie."""
    pairs = [(slot, s) for slot in ('latest', 'best') for s in self._slot(slot).all_steps()]
    return sorted(pairs, key=lambda pair: -pair[1])

  def _step_copies(self, step: int) -> list[tuple[str, int]]:
    return [(slot, step) for slot in ('best', 'latest') if step in self._slot(slot).all_steps()]

  # --------------------------------------------------------------------------- restoring
  def _restore(self, slot: str, step: int, template):
    """(slot, step) into `template`, or as saved onto this process's devices when None."""
    if template is None:
      template = _target_on_these_devices(os.path.join(self._path(slot, step), ITEM))
    return self._slot(slot).restore(step, args=ocp.args.StandardRestore(template))

  def _try(self, slot: str, step: int, template) -> tuple[Any, str | None]:
    """(tree, None) if (slot, step) reads, else (None, the reason in one line).

    With a template, a checkpoint that reads without it but not into it is not corrupt but
    another run's (a changed config): that is a CheckpointError, not a fallback.
    """
    # Before the attempt, not after its failure: an abandoned read's callback can find orbax's
    # event loop closed while the failure is still on its way to us.
    _quiet_abandoned_reads()
    try:
      return self._restore(slot, step, template), None
    except Exception as e:  # pylint: disable=broad-except  # TensorStore raises bare Exception
      reason = failure_reason(e)
    if template is not None:
      try:
        self._restore(slot, step, None)
      except Exception:  # pylint: disable=broad-except
        _quiet_abandoned_reads()
        return None, reason
      raise CheckpointError(f'checkpoint step {step} ({self._path(slot, step)}) does not fit '
                            f'the state this config builds: {reason}')
    return None, reason

  def _report(self, slot: str, step: int, reason: str, move: bool) -> None:
    """Reports an unreadable checkpoint in one line; `move` also moves it aside."""
    path = self._path(slot, step)
    if not move:
      self.log(f'checkpoint step {step} ({path}) is unreadable, skipping it: {reason}')
      return
    moved = _move_aside(path)
    self._slot(slot).reload()  # forget the step, so that training saves it again
    self.log(f'checkpoint step {step} ({path}) is unreadable, moved to '
             f'{os.path.basename(moved)}: {reason}')

  def _restore_first(self, candidates: list[tuple[str, int]], template=None,
                     wanted: str = '') -> Restored:
    """Restores the first readable of `candidates` (preferred first), reporting the others.
    `wanted` names an explicit request for the error when none reads.

    The writer moves the unreadable ones aside only once a readable one is found: with
    none, the workdir stays as it was, and the next run stops with the same error.
    """
    if not self.writer:
      for slot in SLOT_FOLDERS.values():
        for path in unfinished_saves(os.path.join(self.workdir, slot)):
          self.log(f'ignoring an unfinished checkpoint save (interrupted or in progress): {path}')
    failures = []
    for slot, step in candidates:
      tree, reason = self._try(slot, step, template)
      if reason is None:
        for failure in failures:
          if self.writer:
            self._report(*failure, move=True)
        if failures:
          first_slot, first_step, _ = failures[0]
          self.log(f'using checkpoint step {step} ({self._path(slot, step)}), the newest '
                   f'readable one, instead of step {first_step} '
                   f'({self._path(first_slot, first_step)})')
        return Restored(tree, step, slot)
      failures.append((slot, step, reason))
      if not self.writer:
        self._report(slot, step, reason, move=False)
    if self.writer:
      for failure in failures:
        self._report(*failure, move=False)
    tried = ', '.join(self._path(slot, step) for slot, step, _ in failures)
    if wanted:
      raise CheckpointError(f'{wanted} is unreadable (tried {tried}): {failures[0][2]}')
    raise CheckpointError(f'no readable checkpoint in {self.workdir} (tried {tried}); '
                          f'the newest: {failures[0][2]}')

  def resume(self, template) -> tuple[Any, int | None]:
    """(state, step) of the newest readable checkpoint, into `template`'s structure and
    shardings; (template, None) if the workdir has none yet."""
    candidates = self._newest_order()
    if not candidates:
      return template, None
    restored = self._restore_first(candidates, template)
    return restored.tree, restored.step

  def restore_best(self, template) -> tuple[Any, int]:
    """(state, step) of the best checkpoint, else the newest readable (best/, then checkpoints/)."""
    if not self._best_order():
      raise FileNotFoundError(f'no checkpoint in {self.workdir}')
    restored = self._restore_first(self._best_order(), template)
    return restored.tree, restored.step

  def read(self, which: str = 'best') -> Restored:
    """The raw state (no template) of 'best' (else the newest readable), 'latest' (the newest
    readable, checkpoints/ or best/) or a step kept in either folder (no substitution).

    FileNotFoundError / ValueError name what is missing; CheckpointError what is unreadable.
    """
    which = str(which).strip().lower()
    if which in ('best', 'latest'):
      candidates = self._best_order() if which == 'best' else self._newest_order()
      if not candidates:
        raise FileNotFoundError(f'no checkpoint in {self.workdir}')
      return self._restore_first(candidates)
    if not which.isdigit():
      raise ValueError(f'{which!r} is not best, latest or a step number')
    step = int(which)
    copies = self._step_copies(step)
    if not copies:
      kept = sorted({s for m in (self.latest, self.best) for s in m.all_steps()})
      raise FileNotFoundError(f'no checkpoint of step {step} in {self.workdir} '
                              f'(kept: {kept or "none"})')
    # The same state saved in both folders: the other copy is no substitution.
    return self._restore_first(copies, wanted=f'checkpoint step {step}')

  def restore_raw(self):
    """The best checkpoint (else the newest readable) as saved, without a template; None if none."""
    if not self._best_order():
      return None
    return self.read('best').tree

  def restore_named(self, which: str = 'best'):
    """(raw state, step) of `read(which)`."""
    restored = self.read(which)
    return restored.tree, restored.step

  def close(self):
    self.latest.close()
    self.best.close()


def restore_directory(path: str):
  """(raw state, step) from one saved step directory, e.g. WORKDIR/best/12000."""
  path = os.path.abspath(path)
  item = os.path.join(path, ITEM)
  if not os.path.isdir(item):
    raise FileNotFoundError(f'--checkpoint_dir: {path} is not a checkpoint step directory '
                            f'(expected {item})')
  name = os.path.basename(path)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      raw = checkpointer.restore(item, _target_on_these_devices(item))
  except Exception as e:  # pylint: disable=broad-except  # TensorStore raises bare Exception
    reason = failure_reason(e)
  else:
    return raw, int(name) if name.isdigit() else -1
  _quiet_abandoned_reads()
  raise CheckpointError(f'--checkpoint_dir: {path} is unreadable: {reason}')
