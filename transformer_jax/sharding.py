"""The device mesh and the one rule table that maps logical axis names onto it.

Mesh axes: `data` (batch split, parameters replicated), `fsdp` (batch split, parameters
and optimizer state split too), `tensor` (attention heads, d_ff and vocabulary split).
Pure data parallelism, FSDP and tensor parallelism are therefore config choices
(`config.mesh`), never code changes.
"""
from __future__ import annotations

import math

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict

from transformer_jax import model as model_lib
from transformer_jax.errors import UserError

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # both split the batch

# Logical axis -> mesh axis (None = replicated). Parameters: `embed` rows go to fsdp,
# the head / feed-forward / vocabulary dimensions to tensor (Megatron-style).
RULES = {
    model_lib.BATCH: BATCH_AXES,
    model_lib.LENGTH: None,
    model_lib.EMBED: 'fsdp',
    model_lib.HEADS: 'tensor',
    model_lib.KV: None,
    model_lib.MLP: 'tensor',
    model_lib.VOCAB: 'tensor',
}


def mesh_shape(mesh_cfg: ConfigDict, num_devices: int) -> tuple[int, int, int]:
  """Axis sizes from config, one of them -1 = whatever devices remain."""
  sizes = [mesh_cfg[axis] for axis in MESH_AXES]
  described = ', '.join(f'mesh.{a}={s}' for a, s in zip(MESH_AXES, sizes))
  if sizes.count(-1) > 1:
    raise UserError(f'At most one mesh axis may be -1, got {described}.')
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if num_devices % known:
      raise UserError(f'{described} cannot cover {num_devices} devices: {num_devices} is '
                      f'not divisible by {known}.')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise UserError(f'{described} multiply to {math.prod(sizes)} but there are '
                    f'{num_devices} devices; make them multiply to {num_devices} '
                    '(or set one axis to -1).')
  return tuple(sizes)


def make_mesh(mesh_cfg: ConfigDict, devices=None) -> Mesh:
  """A mesh over `devices` (default: all), laid out to follow the TPU topology."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh(mesh_shape(mesh_cfg, len(devices)), MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes) -> P:
  return P(*(RULES[a] for a in axes))


def state_specs(state) -> object:
  """PartitionSpecs for an nnx.State of Params, from their logical axis metadata."""
  def spec(var):
    axes = var.get_metadata().get('out_sharding')
    return var.replace(logical_to_spec(axes) if axes else P())
  return jax.tree.map(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def update_specs(param_specs, shapes, mesh: Mesh):
  """Weight-update sharding (Xu et al., 2020, "Automatic Cross-Replica Sharding of Weight
  Update in Data-Parallel Training"): each parameter's spec with `data` added to its
  largest dimension that still divides evenly. Adam's moments and the update take these
  specs, so each of the `data` replicas reads and writes 1/data of the optimizer's state
  per step, and the new parameters are all-gathered (on the TPU program of
  configs/tpu_v5e_8_base.py the gradients stay one all-reduce). A parameter with no such
  dimension keeps its spec."""
  data = mesh.shape['data']

  def spec(p: P, shape) -> P:
    axes = [() if e is None else (e,) if isinstance(e, str) else tuple(e)
            for e in list(p) + [None] * (len(shape.shape) - len(p))]
    per_shard = [n // math.prod(mesh.shape[a] for a in ax) for n, ax in zip(shape.shape, axes)]
    free = [i for i, n in enumerate(per_shard) if n % data == 0]
    if data == 1 or not free:
      return p
    i = max(free, key=lambda i: per_shard[i])
    axes[i] += ('data',)
    return P(*(None if not ax else ax[0] if len(ax) == 1 else ax for ax in axes))
  return jax.tree.map(spec, param_specs, shapes, is_leaf=lambda x: isinstance(x, P))


def named(mesh: Mesh, specs):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def token_shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
  """Hidden states [tokens, D] and logits [tokens, V] with the batch's rows flattened to
  tokens: split as the batch is, V as the rules split the vocabulary (loss.py)."""
  return (NamedSharding(mesh, P(BATCH_AXES, None)),
          NamedSharding(mesh, P(BATCH_AXES, RULES[model_lib.VOCAB])))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches [rows, length] split over every batch axis of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES, None))


def rows_sharding(mesh: Mesh) -> NamedSharding:
  """Arrays of any rank whose first axis is the batch's rows, split as batches are."""
  return NamedSharding(mesh, P(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(global_rows: int, mesh: Mesh) -> None:
  size = data_parallel_size(mesh)
  if global_rows % size:
    raise UserError(f'data.batch_size={global_rows} is not divisible by the data-parallel '
                    f'size {size} (mesh.data x mesh.fsdp); use a multiple of {size}.')


def place_batch(batch: dict, mesh: Mesh) -> dict:
  """This host's rows -> global arrays sharded over the mesh's batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def abstract_with_shardings(abstract_tree, shardings):
  """Shapes and dtypes with where each array lives: a target to compile for or restore into."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)
