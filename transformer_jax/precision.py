"""Mixed-precision matrix products: bf16 operands, fp32 results, in both directions.

With `model.dtype=float32` and `model.matmul_dtype=bfloat16`, activations, the residual
stream, softmaxes, LayerNorms, the loss and the optimizer stay fp32; only the operands
of matrix products are rounded to bf16, and products accumulate in fp32 (what TPUs do in
hardware). On CPUs with AMX bf16 tiles XLA runs such products about 3x faster than fp32
ones. JAX's own autodiff of a product with `preferred_element_type=float32` computes the
backward products in fp32 again (it upcasts the bf16 operand), so the custom VJP here
writes them as bf16 products too: the incoming gradient is rounded to bf16 like the
operands are, as in any bf16 mixed-precision training.

CPUs without bf16 dot-product units (AMD Zen 3 and older, Intel before Cooper Lake) get
bf16 products emulated: slower than fp32 ones, so training warns there (`cpu_warning`).
"""
from __future__ import annotations

import functools
import pathlib
import string

import jax
import jax.numpy as jnp


def einsum(spec: str, a: jax.Array, b: jax.Array, matmul_dtype) -> jax.Array:
  """`jnp.einsum(spec, a, b)`; with a `matmul_dtype` other than the operands', a product
  of operands in that dtype accumulated in theirs (custom VJP)."""
  if matmul_dtype is None or jnp.dtype(matmul_dtype) == jnp.result_type(a, b):
    return jnp.einsum(spec, a, b)
  return _mixed_einsum(spec, jnp.dtype(matmul_dtype).name, a.dtype.name, b.dtype.name, a, b)


@functools.lru_cache(maxsize=None)
def einsum_op(matmul_dtype: str):
  """For `nnx.Einsum(einsum_op=...)`: one function object per dtype, so module graphs
  (and the jit caches keyed on them) of equal configs compare equal."""
  def op(spec, a, b, precision=None, out_sharding=None, preferred_element_type=None):
    del precision, out_sharding, preferred_element_type  # defaults only (see model.py)
    return einsum(spec, a, b, matmul_dtype)
  return op


@functools.lru_cache(maxsize=None)
def dot_general_op(matmul_dtype: str):
  """For `nnx.Linear(dot_general=...)`: the same product, written as an einsum."""
  def op(a, b, dimension_numbers, precision=None, preferred_element_type=None,
         out_sharding=None):
    del precision, preferred_element_type, out_sharding
    return einsum(_dot_general_spec(a.ndim, b.ndim, dimension_numbers), a, b, matmul_dtype)
  return op


def _dot_general_spec(a_ndim: int, b_ndim: int, dimension_numbers) -> str:
  """The einsum spec of a dot_general: batch dims, then a's free, then b's free dims."""
  (a_contract, b_contract), (a_batch, b_batch) = dimension_numbers
  letters = iter(string.ascii_letters)
  a_axes = [next(letters) for _ in range(a_ndim)]
  b_axes = [next(letters) for _ in range(b_ndim)]
  for i, j in zip((*a_contract, *a_batch), (*b_contract, *b_batch)):
    b_axes[j] = a_axes[i]
  out = ([a_axes[i] for i in a_batch]
         + [x for i, x in enumerate(a_axes) if i not in (*a_contract, *a_batch)]
         + [x for j, x in enumerate(b_axes) if j not in (*b_contract, *b_batch)])
  return f'{"".join(a_axes)},{"".join(b_axes)}->{"".join(out)}'


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _mixed_einsum(spec: str, matmul_dtype: str, a_dtype: str, b_dtype: str,
                  a: jax.Array, b: jax.Array) -> jax.Array:
  return _product(spec, matmul_dtype, a, b, jnp.result_type(a_dtype, b_dtype))


def _product(spec, matmul_dtype, a, b, out_dtype):
  inputs, out = spec.split('->')
  a_spec, b_spec = inputs.split(',')
  (a, a_spec), (b, b_spec) = (_canonical(a, a_spec, b_spec, out),
                               _canonical_rhs(b, b_spec, a_spec, out))
  return jnp.einsum(f'{a_spec},{b_spec}->{out}', a.astype(matmul_dtype), b.astype(matmul_dtype),
                    preferred_element_type=out_dtype)


# XLA's CPU library for bf16 products (YNNPACK) takes only a left operand laid out as
# [batch..., free..., contracted...]; any other product falls back to an fp32 one. XLA
# folds a plain transpose into the product's dimension numbers, so the operand is
# reordered through a flat copy it cannot see through. The copy costs a fraction of what
# the fp32 fallback would (gradients of the weights contract over the token axes).


def _canonical(a, a_spec, b_spec, out):
  batch = [i for i in a_spec if i in b_spec and i in out]
  order = ''.join(batch + [i for i in a_spec if i not in b_spec]
                  + [i for i in a_spec if i in b_spec and i not in out])
  return (a, a_spec) if order == a_spec else (_reordered(a, a_spec, order), order)


def _canonical_rhs(b, b_spec, a_spec, out):
  """The right operand may be [batch..., contracted..., free...] or [batch..., free...,
  contracted...]; anything else is reordered to the first."""
  batch = [i for i in b_spec if i in a_spec and i in out]
  contracted = [i for i in b_spec if i in a_spec and i not in out]
  free = [i for i in b_spec if i not in a_spec]
  if b_spec in (''.join(batch + contracted + free), ''.join(batch + free + contracted)):
    return b, b_spec
  order = ''.join(batch + contracted + free)
  return _reordered(b, b_spec, order), order


def _reordered(x, spec, order):
  moved = jnp.einsum(f'{spec}->{order}', x)
  return jax.lax.optimization_barrier(moved.reshape(-1)).reshape(moved.shape)


def _forward(spec, matmul_dtype, a_dtype, b_dtype, a, b):
  out = _product(spec, matmul_dtype, a, b, jnp.result_type(a_dtype, b_dtype))
  return out, (a.astype(matmul_dtype), b.astype(matmul_dtype))


def _backward(spec, matmul_dtype, a_dtype, b_dtype, residuals, g):
  """For `A,B->C` (every index of A or B also in C or the other operand, as in all of
  the model's products): dA = einsum(C,B->A), dB = einsum(A,C->B)."""
  a, b = residuals
  inputs, out = spec.split('->')
  a_spec, b_spec = inputs.split(',')
  g = g.astype(matmul_dtype)
  return (_product(f'{out},{b_spec}->{a_spec}', matmul_dtype, g, b, a_dtype),
          _product(f'{a_spec},{out}->{b_spec}', matmul_dtype, a, g, b_dtype))


_mixed_einsum.defvjp(_forward, _backward)


# x86 /proc/cpuinfo flags of bf16 dot-product units: AMX (Sapphire Rapids and later) and
# AVX512-BF16 (Zen 4, Cooper Lake and later Xeons).
BF16_UNIT_FLAGS = ('amx_bf16', 'avx512_bf16')


def cpu_bf16_units(cpuinfo: str | None = None) -> tuple[str, ...] | None:
  """The flags of BF16_UNIT_FLAGS this x86 CPU lists (empty: it has no bf16 units); None
  where /proc/cpuinfo lists no x86 flags (another OS or architecture: nothing is claimed)."""
  if cpuinfo is None:
    try:
      cpuinfo = pathlib.Path('/proc/cpuinfo').read_text()
    except OSError:
      return None
  for line in cpuinfo.splitlines():
    if line.startswith('flags') and ':' in line:
      flags = line.split(':', 1)[1].split()
      return tuple(flag for flag in BF16_UNIT_FLAGS if flag in flags)
  return None


def cpu_warning(model_cfg, backend: str | None = None, cpuinfo: str | None = None
                ) -> str | None:
  """A warning when this config's matrix products run in bf16 on a CPU that emulates them
  (on a 2-core AMD EPYC Zen 3, 1.3x the fp32 step time: docs/performance.md)."""
  if ((model_cfg.matmul_dtype or model_cfg.dtype) != 'bfloat16'
      or (backend or jax.default_backend()) != 'cpu' or cpu_bf16_units(cpuinfo) != ()):
    return None
  fix = ('--config.model.matmul_dtype=' if model_cfg.dtype != 'bfloat16'
         else '--config.model.dtype=float32 --config.model.matmul_dtype=')
  return ('matrix products in bfloat16 on a CPU without bf16 units (neither '
          f'{" nor ".join(BF16_UNIT_FLAGS)} in /proc/cpuinfo): XLA emulates them here, '
          f'about 1.3x slower than fp32 ones. For fp32 products pass {fix}')
