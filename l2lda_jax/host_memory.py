"""Keeps freed host memory in the process, so that XLA:CPU's step buffers are not re-faulted.

Each execution of a compiled step allocates its buffers (gigabytes for the paper-shape
L2L-DA step) and frees them at the end. glibc's malloc hands blocks over 32 MiB straight
back to the kernel, so every step faults all of them in again: on the 2-core
development VM, 2 million page faults and 20 s of system time per paper-shape step,
which made the step 25 s where it now takes 12-16 s (docs/PERFORMANCE.md). The three
settings below make malloc serve every block from its one heap and never trim it, so
after the first steps the pages are reused.

The memory a process holds stays at its peak, and fragmentation adds to it (3.2 GB
instead of 1.9 GB for the `:cpu` L2L-DA step). Set L2LDA_KEEP_MALLOC_DEFAULTS=1 to leave
malloc as it is.
"""

import ctypes
import ctypes.util
import os
import sys

# mallopt parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

OPT_OUT_VARIABLE = 'L2LDA_KEEP_MALLOC_DEFAULTS'


def keep_freed_memory() -> bool:
  """Tells glibc's malloc to keep freed memory for reuse. Returns whether it took effect.

  Must run before the process starts threads (before JAX, TensorFlow or PyTorch
  initialise): the settings cover the heap threads share, and a thread that already has
  an arena of its own would keep handing large blocks back. A no-op off glibc.
  """
  if os.environ.get(OPT_OUT_VARIABLE) == '1' or not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # musl and other libcs have no mallopt
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  settings = ((_M_ARENA_MAX, 1),  # one heap, so the next two settings cover all threads
              (_M_MMAP_MAX, 0),  # large blocks from the heap, not from fresh mappings
              (_M_TRIM_THRESHOLD, -1))  # -1: never give the heap's top back (man mallopt)
  return all(mallopt(parameter, value) == 1 for parameter, value in settings)
