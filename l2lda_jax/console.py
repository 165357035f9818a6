"""What the command-line tools print: our own lines, and no library chatter unless asked.

TensorFlow (only used to read TFDS files), TFDS, orbax and JAX log INFO lines at start-up
and on every checkpoint (backends that are not there, oneDNN, dataset folders, save
timings). `quiet_libraries` drops INFO from any code outside this project and silences
TensorFlow's C++ INFO/WARNING output; other libraries' warnings still show (orbax's and
TFDS's only when they are errors). While TFDS prepares a dataset (the first run) it also
prints, outside logging, a banner and progress bars: `tfds_preparation_output` hides them.
`--verbose` on train.py / evaluate.py / export.py keeps everything.
"""

import contextlib
import io
import os

from absl import logging

# Paths whose INFO lines are ours: the package's folder and the three entry points beside it.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_OWN_SCRIPTS = tuple(os.path.join(os.path.dirname(_PACKAGE_DIR), name)
                     for name in ('train.py', 'evaluate.py', 'export.py'))


def is_own_code(pathname: str) -> bool:
  path = os.path.abspath(pathname)
  return path.startswith(_PACKAGE_DIR + os.sep) or path in _OWN_SCRIPTS


# Libraries whose warnings are about their own internals, not the run: orbax warns on every
# template-free restore (how we restore); TFDS on cache folders it is about to fill and on
# its own deprecated fields.
_ERRORS_ONLY = ('orbax', 'tensorflow_datasets')


class LibraryInfoFilter:
  """An absl handler filter: everything from this project's code; from other code warnings
  and errors, and from the libraries in _ERRORS_ONLY errors only."""

  def filter(self, record) -> bool:
    if is_own_code(record.pathname):
      return True
    if any(name in record.pathname for name in _ERRORS_ONLY):
      return record.levelno >= logging.converter.STANDARD_ERROR
    return record.levelno >= logging.converter.STANDARD_WARNING


_libraries_quiet = False  # set by quiet_libraries: the tools run without --verbose


def quiet_libraries(verbose: bool) -> None:
  """Call at the top of main(), before TensorFlow or TFDS are imported."""
  global _libraries_quiet
  if verbose:
    return
  _libraries_quiet = True
  # TensorFlow's C++ logs: errors only. Its oneDNN notice (and the absl pre-init warning
  # printed with it) ignores that level, so oneDNN is turned off: TensorFlow only reads
  # TFDS records here, no numerics of ours run through it.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  logging.get_absl_handler().addFilter(LibraryInfoFilter())


@contextlib.contextmanager
def tfds_preparation_output():
  """Around TFDS's download_and_prepare: unless --verbose, hides what it prints there (a
  banner of 'Unknown size' on stdout, three progress bars with cursor-moving escape
  codes on stderr); the tool says in its own line what it is preparing."""
  if not _libraries_quiet:
    yield
    return
  import tensorflow_datasets as tfds
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.display_progress_bar(True)
