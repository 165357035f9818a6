"""host_memory: freed large blocks are reused instead of re-faulted from the kernel."""

import os
import subprocess
import sys


# Allocates, touches and frees a block twice; prints the page faults of the second touch.
# Runs in a fresh process: the malloc settings must precede any thread.
_SCRIPT = """
import ctypes, ctypes.util, resource, sys
from l2lda_jax import host_memory
kept = host_memory.keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = int(sys.argv[1])
def touch_and_free():
  block = libc.malloc(size)
  assert block, 'malloc failed'
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  ctypes.memset(block, 1, size)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  libc.free(block)
  return faults
touch_and_free()
print(kept, touch_and_free())
"""


def _second_touch_faults(env_extra, size=64 << 20):
  env = dict(os.environ, **env_extra)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, '-c', _SCRIPT, str(size)], env=env, cwd=root, check=True,
                       capture_output=True, text=True).stdout.split()
  return out[0] == 'True', int(out[1])


def _assert_reused(kept, faults):
  if not sys.platform.startswith('linux'):
    assert not kept  # no glibc: keep_freed_memory is a no-op and says so
    return
  assert kept
  assert faults < 256


def test_freed_block_is_reused_without_page_faults():
  # 64 MiB is 16,384 pages of 4 KiB: a re-faulted block shows thousands.
  _assert_reused(*_second_touch_faults({'L2LDA_KEEP_MALLOC_DEFAULTS': '0'}))


def test_blocks_over_2_gib_are_reused_too():
  """The paper-shape L2L-DA step frees gigabytes at once: past any int trim threshold."""
  _assert_reused(*_second_touch_faults({'L2LDA_KEEP_MALLOC_DEFAULTS': '0'},
                                       size=(1 << 31) + (64 << 20)))


def test_opt_out_leaves_malloc_alone():
  kept, _ = _second_touch_faults({'L2LDA_KEEP_MALLOC_DEFAULTS': '1'})
  assert not kept
