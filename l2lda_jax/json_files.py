"""JSON reports and records on disk: read back leniently, replaced whole when written."""

import contextlib
import json
import os
from typing import Optional


def read_json_object(path: str) -> Optional[dict]:
  """The JSON object at `path`; None if it is missing, torn, or not an object (a report
  that an interrupted run left, or a file of someone else's)."""
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError):
    return None
  return data if isinstance(data, dict) else None


def write_json_atomic(data: dict, path: str) -> None:
  """Writes `data` to `path` through a temporary file and a rename, so that a kill during
  the write leaves the previous file, never half of a new one."""
  with replaced_whole(path) as f:
    json.dump(data, f, indent=2)


@contextlib.contextmanager
def replaced_whole(path: str, mode: str = 'w'):
  """A file to write `path` through: it is `path`.tmp, renamed onto `path` once written, so
  a kill during the write leaves the previous file. open() gives it the umask's mode."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + '.tmp', mode) as f:
    yield f
  os.replace(path + '.tmp', path)
