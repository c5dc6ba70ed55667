"""Logical axis names (t5x's standard set) and the one table that maps them onto a ('data', 'model') mesh.

Parameters carry logical names (see spactor/model.py); activations add 'batch' and 'length'. With the rules and a
mesh in scope (`logical_context`), `with_sharding_constraint` in the model becomes a real constraint; without them
it is a no-op, so the model also runs on one CPU.
"""
import contextlib
from typing import Any, Callable, Optional, Sequence, Tuple

import flax
import flax.linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
import numpy as np

from spactor.errors import UsageError

# Every logical name a parameter may carry. t5x's Adafactor keeps a factor rule for each of these (and raises
# KeyError for any other), so the model uses nothing else on parameters.
PARAM_AXIS_NAMES = frozenset({'vocab', 'embed', 'mlp', 'heads', 'kv', 'joined_kv', 'relpos_buckets'})
ACTIVATION_AXIS_NAMES = frozenset({'batch', 'length'})

# t5x's standard_logical_axis_rules(1, 1): data parallel over 'data', Megatron-style model parallel over 'model'.
LOGICAL_AXIS_RULES: Tuple[Tuple[str, Optional[str]], ...] = (
    ('batch', 'data'),
    ('vocab', 'model'),
    ('embed', None),
    ('mlp', 'model'),
    ('heads', 'model'),
    ('kv', None),
    ('joined_kv', 'model'),
    ('relpos_buckets', None),
    ('length', None),
)
MESH_AXES = ('data', 'model')


def make_mesh(num_partitions: int = 1, devices: Optional[Sequence[Any]] = None) -> jax.sharding.Mesh:
  """A (data, model) mesh over all devices: num_partitions-way model parallel, the rest data parallel."""
  devices = list(jax.devices() if devices is None else devices)
  if num_partitions < 1 or len(devices) % num_partitions:
    raise ValueError(f'num_partitions={num_partitions} must be >= 1 and divide the {len(devices)} devices')
  grid = np.asarray(devices, dtype=object).reshape(len(devices) // num_partitions, num_partitions)
  return jax.sharding.Mesh(grid, MESH_AXES)


def check_batch_divides(batch_size: int, mesh: jax.sharding.Mesh, name: str = 'BATCH_SIZE') -> None:
  """A global batch must split evenly over the data-parallel devices and over the processes that feed them."""
  for ways, what in ((mesh.shape['data'], 'data-parallel devices'), (jax.process_count(), 'processes')):
    if batch_size % ways:
      raise UsageError(f'{name}={batch_size} must be divisible by the {ways} {what}')


@contextlib.contextmanager
def logical_context(mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES):
  """Scope in which the model's logical sharding constraints act: the rules plus the mesh as the current mesh."""
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    yield


def logical_axes(params_axes) -> Any:
  """Logical PartitionSpecs shaped like `params` (a plain dict), from the 'params_axes' collection of `init`."""
  return flax.core.unfreeze(nn_partitioning.get_axis_names(params_axes))


def mesh_shardings(logical_specs, mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
  """NamedShardings for a tree of logical PartitionSpecs."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def param_shardings(params_axes, mesh: jax.sharding.Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
  """NamedShardings shaped like `params`, from the 'params_axes' collection."""
  return mesh_shardings(logical_axes(params_axes), mesh, rules)


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Sharding of [batch, ...] inputs: the leading axis over 'data'."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))


def sharded_init(init_fn: Callable[..., Any], mesh: jax.sharding.Mesh, *args, rules=LOGICAL_AXIS_RULES):
  """Runs `init_fn(*args)` (returning Flax variables) with each param created directly in its sharding.

  Shapes come from jax.eval_shape, so no device ever holds a whole unsharded copy. Collections other than
  'params' (params_axes, cache) are replicated. Returns (variables, shardings).
  """
  with logical_context(mesh, rules):
    abstract = jax.eval_shape(init_fn, *args)
    shardings = jax.tree_util.tree_map(lambda _: replicated(mesh), abstract)
    if 'params' in abstract:
      params = param_shardings(abstract['params_axes'], mesh, rules)
      if isinstance(abstract['params'], flax.core.FrozenDict):
        params = flax.core.freeze(params)
      shardings = dict(shardings, params=params)
    variables = jax.jit(init_fn, out_shardings=shardings)(*args)
  return variables, shardings
