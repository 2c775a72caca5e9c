"""Mixed-precision products (precision.py): bf16 operands and gradients, fp32 sums."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from transformer_jax import precision


@pytest.mark.parametrize('spec, a_shape, b_shape', [
    ('bld,dhk->bhlk', (2, 5, 8), (8, 2, 4)), ('bhqk,bhsk->bhqs', (2, 3, 4, 5), (2, 3, 6, 5))])
def test_mixed_products_round_operands_and_gradients_to_bf16_and_sum_in_fp32(
    spec, a_shape, b_shape):
  """Forward and both gradients equal fp32 products of bf16-rounded operands (and of the
  bf16-rounded incoming gradient), which is what the custom VJP promises."""
  keys = jax.random.split(jax.random.key(0), 3)
  a, b = jax.random.normal(keys[0], a_shape), jax.random.normal(keys[1], b_shape)
  rounded = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)
  out, vjp = jax.vjp(lambda a, b: precision.einsum(spec, a, b, 'bfloat16'), a, b)
  g = jax.random.normal(keys[2], out.shape)
  np.testing.assert_allclose(out, jnp.einsum(spec, rounded(a), rounded(b)), rtol=1e-5, atol=1e-6)
  _, vjp32 = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), rounded(a), rounded(b))
  for ours, expected in zip(vjp(g), vjp32(rounded(g))):
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)



def test_mixed_dot_general_is_the_linear_product():
  x = jax.random.normal(jax.random.key(0), (2, 3, 8))
  w = jax.random.normal(jax.random.key(1), (8, 5))
  dims = (((2,), (0,)), ((), ()))
  ours = precision.dot_general_op('bfloat16')(x, w, dims)
  expected = jax.lax.dot_general(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), dims,
                                 preferred_element_type=jnp.float32)
  np.testing.assert_allclose(ours, expected, rtol=1e-6)



ZEN3 = 'processor\t: 0\nflags\t\t: fpu sse2 avx2 fma f16c sha_ni vaes\n'
ZEN4 = 'processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 vaes\n'
SAPPHIRE_RAPIDS = 'processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n'
ARM = 'processor\t: 0\nFeatures\t: fp asimd evtstrm aes bf16\n'


@pytest.mark.parametrize('cpuinfo, expected', [
    (ZEN3, ()), (ZEN4, ('avx512_bf16',)), (SAPPHIRE_RAPIDS, ('amx_bf16',)), (ARM, None)])
def test_bf16_units_are_read_off_the_cpu_flags(cpuinfo, expected):
  assert precision.cpu_bf16_units(cpuinfo) == expected


@pytest.mark.parametrize('model, backend, cpuinfo, fix', [
    (dict(dtype='float32', matmul_dtype='bfloat16'), 'cpu', ZEN3, 'matmul_dtype=\n'),
    (dict(dtype='bfloat16', matmul_dtype=''), 'cpu', ZEN3, 'dtype=float32 '),
    (dict(dtype='float32', matmul_dtype='bfloat16'), 'cpu', ZEN4, None),
    (dict(dtype='float32', matmul_dtype='bfloat16'), 'cpu', ARM, None),  # not known: quiet
    (dict(dtype='float32', matmul_dtype='bfloat16'), 'tpu', ZEN3, None),
    (dict(dtype='float32', matmul_dtype=''), 'cpu', ZEN3, None),
    (dict(dtype='bfloat16', matmul_dtype='float32'), 'cpu', ZEN3, None)])
def test_training_warns_only_where_bf16_products_are_emulated(model, backend, cpuinfo, fix):
  """Training (loop.train) prints this warning: bf16 products on a CPU with no bf16 units
  cost 1.3x the fp32 step time (measured on a Zen 3), and the message names the flag."""
  warning = precision.cpu_warning(ml_collections.ConfigDict(model), backend, cpuinfo)
  if fix is None:
    assert warning is None
  else:
    assert 'without bf16 units' in warning and f'--config.model.{fix}' in warning + '\n'
