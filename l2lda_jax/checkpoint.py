"""Checkpoints (the project's only orbax import): the latest N, plus the best on validation."""

import os

import orbax.checkpoint as ocp

BEST_METRIC = 'val_robust_accuracy'


def _manager(directory: str, **options) -> ocp.CheckpointManager:
  # Synchronous saves: a checkpoint on disk is complete when save() returns, and
  # orbax's write-to-temp-then-rename makes a save killed half-way invisible.
  return ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(
          create=True, enable_async_checkpointing=False, **options))


class Checkpoints:
  """`workdir/checkpoints` keeps the latest `keep`; `workdir/best` keeps the best one."""

  def __init__(self, workdir: str, keep: int):
    self.workdir = os.path.abspath(workdir)
    self.latest = _manager(os.path.join(self.workdir, 'checkpoints'), max_to_keep=keep)
    self.best = _manager(os.path.join(self.workdir, 'best'), max_to_keep=1,
                         best_fn=lambda metrics: metrics[BEST_METRIC], best_mode='max')

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def best_step(self) -> int | None:
    return self.best.best_step()

  def save(self, step: int, state) -> None:
    self.latest.save(step, args=ocp.args.StandardSave(state))

  def save_if_best(self, step: int, state, metrics: dict) -> None:
    """Offers the state to the best-on-validation slot; orbax keeps the higher metric."""
    self.best.save(step, args=ocp.args.StandardSave(state),
                   metrics={BEST_METRIC: float(metrics[BEST_METRIC])})

  def restore(self, template, step: int | None = None, best: bool = False):
    """Restores into the structure and shardings of `template`."""
    manager = self.best if best else self.latest
    step = (manager.best_step() if best else manager.latest_step()) if step is None else step
    if step is None:
      raise FileNotFoundError(f'no {"best" if best else "latest"} checkpoint in {self.workdir}')
    return manager.restore(step, args=ocp.args.StandardRestore(template))

  def restore_raw(self):
    """The best checkpoint (else the latest) as saved, without a template; None if none."""
    for manager, step in ((self.best, self.best.best_step()),
                          (self.latest, self.latest.latest_step())):
      if step is not None:
        return manager.restore(step, args=ocp.args.StandardRestore())
    return None

  def restore_named(self, which: str = 'best'):
    """(raw state, step) for 'best' (falling back to 'latest' if there is none), 'latest' or
    a step number kept in either slot; FileNotFoundError / ValueError name what is missing."""
    which = str(which).strip().lower()
    if which == 'best' and self.best.best_step() is None:
      which = 'latest'
    if which in ('best', 'latest'):
      manager = self.best if which == 'best' else self.latest
      step = manager.best_step() if which == 'best' else manager.latest_step()
      if step is None:
        raise FileNotFoundError(f'no checkpoint in {self.workdir}')
    else:
      if not which.isdigit():
        raise ValueError(f'{which!r} is not best, latest or a step number')
      step = int(which)
      kept = {s: m for m in (self.latest, self.best) for s in m.all_steps()}
      if step not in kept:
        raise FileNotFoundError(f'no checkpoint of step {step} in {self.workdir} '
                                f'(kept: {sorted(kept) or "none"})')
      manager = kept[step]
    return manager.restore(step, args=ocp.args.StandardRestore()), step

  def close(self):
    self.latest.close()
    self.best.close()


def restore_directory(path: str):
  """(raw state, step) from one saved step directory, e.g. WORKDIR/best/12000."""
  path = os.path.abspath(path)
  item = os.path.join(path, 'default')
  if not os.path.isdir(item):
    raise FileNotFoundError(f'--checkpoint_dir: {path} is not a checkpoint step directory '
                            f'(expected {item})')
  name = os.path.basename(path)
  with ocp.StandardCheckpointer() as checkpointer:
    raw = checkpointer.restore(item)
  return raw, int(name) if name.isdigit() else -1
