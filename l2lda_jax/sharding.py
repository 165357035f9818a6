"""The ('data',) device mesh: batches sharded along it, state replicated.

With several processes (l2lda_jax/distributed.py) the mesh spans the devices of all of them:
each process puts only its own rows of a batch on its devices, and the global batch is
assembled from those process-local rows.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over all (or the given) devices, with automatic sharding propagation."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def describe_devices() -> str:
  """'1 x cpu (TFRT_CPU_0)' or '8 x gpu (NVIDIA H100 80GB HBM3), 2 processes'."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices} - {devices[0].platform})
  text = f'{len(devices)} x {devices[0].platform}' + (f' ({", ".join(kinds)})' if kinds else '')
  return text + (f', {jax.process_count()} processes' if jax.process_count() > 1 else '')


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def process_rows(mesh, global_rows: int) -> slice:
  """The rows of a global batch of `global_rows` that this process's devices hold.

  Read from the sharding itself rather than assumed from the process index, since the
  mesh's device order is JAX's choice. One process: slice(0, global_rows).
  """
  indices = batch_sharding(mesh).addressable_devices_indices_map((global_rows,)).values()
  bounds = sorted(index[0].indices(global_rows)[:2] for index in indices)
  start, stop = bounds[0][0], bounds[-1][1]
  if sum(b - a for a, b in set(bounds)) != stop - start:
    raise ValueError(f'this process\'s rows of the batch are not contiguous: {bounds}')
  return slice(start, stop)


def assemble_batch(mesh, global_rows: int, *local_arrays: np.ndarray):
  """The global batch from this process's rows (`process_rows`) of each array.

  One process: plain device_put of the whole batch, as before multi-process support.
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return tuple(jax.device_put(a, sharding) for a in local_arrays)
  return tuple(jax.make_array_from_process_local_data(sharding, a, (global_rows, *a.shape[1:]))
               for a in local_arrays)


def shard_batch(mesh, *arrays: np.ndarray):
  """Places host arrays on the mesh, split along the leading (batch) axis.

  Every process passes the same whole batch and puts only its own rows on its devices.
  """
  if jax.process_count() == 1:
    return assemble_batch(mesh, len(arrays[0]), *arrays)
  rows = process_rows(mesh, len(arrays[0]))
  return assemble_batch(mesh, len(arrays[0]), *(a[rows] for a in arrays))


def to_host(array) -> np.ndarray:
  """The whole of an array as numpy, gathered from the other processes when this one holds
  only its rows (a per-example output of a sharded batch)."""
  if (isinstance(array, jax.Array) and not array.is_fully_addressable
      and not array.is_fully_replicated):
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
  return np.asarray(array)


def replicate(mesh, tree):
  return jax.device_put(tree, replicated_sharding(mesh))
