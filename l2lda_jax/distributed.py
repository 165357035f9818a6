"""Multi-process runs: whether to call jax.distributed.initialize, and with what.

Every host (or every GPU, one process each) runs the same train.py command. Process 0's
address is the coordinator through which the processes find each other; after that the
('data',) mesh spans the devices of all of them (l2lda_jax/sharding.py). A single-process
run calls nothing here and behaves exactly as before.

`initialization_arguments` is a pure function of the flags and the environment, so what a
launcher's variables do is testable without starting anything.
"""

import re
from typing import Mapping

MODES = ('auto', 'on', 'off')

# A cluster launcher says "you are one of N processes" through these; JAX reads them itself
# when jax.distributed.initialize() gets no arguments (Slurm, Open MPI, Cloud TPU on GKE).
# Each entry: (variable naming the process count, variable that must also be set).
_LAUNCHER_COUNTS = (('SLURM_NTASKS', 'SLURM_JOB_ID'),
                    ('OMPI_COMM_WORLD_SIZE', 'OMPI_MCA_orte_hnp_uri'))
_TPU_HOST_LISTS = ('TPU_PROCESS_ADDRESSES', 'TPU_WORKER_HOSTNAMES')
_ADDRESS = re.compile(r'^(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):(\d+)$')  # host:port, [v6]:port


class DistributedError(ValueError):
  """A distributed flag holds a bad value, or the processes could not connect; the message
  names the flag."""


def _int_or_zero(text) -> int:
  try:
    return int(text)
  except (TypeError, ValueError):
    return 0


def environment_request(environ: Mapping[str, str]) -> str | None:
  """The variable by which the environment asks for a multi-process run, or None.

  JAX_COORDINATOR_ADDRESS (JAX's own), a Slurm or Open MPI job of more than one task, or a
  Cloud TPU slice listing more than one host. A one-task job is a single-process run.
  """
  if environ.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS'
  for count, companion in _LAUNCHER_COUNTS:
    if environ.get(companion) and _int_or_zero(environ.get(count)) > 1:
      return count
  for hosts in _TPU_HOST_LISTS:
    if len([h for h in environ.get(hosts, '').split(',') if h.strip()]) > 1:
      return hosts
  return None


def validate_flags(mode: str, coordinator_address: str, num_processes, process_id) -> None:
  """Raises DistributedError naming the first bad flag."""
  if mode not in MODES:
    raise DistributedError(f'--distributed: {mode!r} must be one of {", ".join(MODES)}')
  if coordinator_address and not _ADDRESS.match(coordinator_address):
    raise DistributedError(f'--coordinator_address: {coordinator_address!r} must be '
                           'host:port (process 0\'s address and a free port)')
  port = int(_ADDRESS.match(coordinator_address).group(2)) if coordinator_address else 1
  if not 1 <= port <= 65535:
    raise DistributedError(f'--coordinator_address: port {port} must be in [1, 65535]')
  if num_processes is not None and num_processes < 1:
    raise DistributedError(f'--num_processes: {num_processes} must be >= 1')
  if process_id is not None and process_id < 0:
    raise DistributedError(f'--process_id: {process_id} must be >= 0')
  if process_id is not None and num_processes is not None and process_id >= num_processes:
    raise DistributedError(f'--process_id: {process_id} must be < --num_processes '
                           f'({num_processes})')
  given = [name for name, value in (('--coordinator_address', coordinator_address),
                                    ('--num_processes', num_processes),
                                    ('--process_id', process_id)) if value not in (None, '')]
  if mode == 'off' and given:
    raise DistributedError(f'{given[0]}: set, but --distributed=off runs one process')


def initialization_arguments(mode: str, coordinator_address: str, num_processes, process_id,
                             environ: Mapping[str, str]) -> dict | None:
  """The keyword arguments of jax.distributed.initialize, or None for a single-process run.

  'auto' initialises when any of the three flags is set or `environment_request` finds a
  launcher's variables; 'on' always (JAX detects the rest: Cloud TPU slices, Slurm, Open
  MPI); 'off' never. Unset flags are left to JAX's own detection.
  """
  validate_flags(mode, coordinator_address, num_processes, process_id)
  explicit = {name: value for name, value in (('coordinator_address', coordinator_address),
                                              ('num_processes', num_processes),
                                              ('process_id', process_id))
              if value not in (None, '')}
  if mode == 'off' or (mode == 'auto' and not explicit and not environment_request(environ)):
    return None
  return explicit


def _describe(arguments: dict) -> str:
  return ', '.join(f'--{k}={v}' for k, v in arguments.items()) or 'detected from the environment'


def initialize(arguments: dict | None) -> None:
  """jax.distributed.initialize(**arguments), before any JAX computation; nothing for None.

  Its failures (an unreachable coordinator, values JAX could not detect) become one
  DistributedError line.
  """
  if arguments is None:
    return
  import jax
  try:
    jax.distributed.initialize(**arguments)
  except Exception as e:  # pylint: disable=broad-except  # XLA raises its own runtime types
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    hint = ('' if 'num_processes' in arguments and 'process_id' in arguments else
            '; outside Slurm, Open MPI and Cloud TPU set --num_processes and --process_id')
    raise DistributedError(f'--distributed: jax.distributed.initialize '
                           f'({_describe(arguments)}) failed: {reason}{hint}') from e


def is_main_process() -> bool:
  """Process 0: the one that writes logs, results, config.json and TensorBoard events."""
  import jax
  return jax.process_index() == 0
