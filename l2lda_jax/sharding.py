"""The ('data',) device mesh: batches sharded along it, state replicated."""

import jax
import numpy as np
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


def shard_batch(mesh, *arrays: np.ndarray):
  """Places host arrays on the mesh, split along the leading (batch) axis."""
  sharding = batch_sharding(mesh)
  return tuple(jax.device_put(a, sharding) for a in arrays)


def replicate(mesh, tree):
  return jax.device_put(tree, replicated_sharding(mesh))
