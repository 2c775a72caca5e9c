"""Mixed-precision products (precision.py): bf16 operands and gradients, fp32 sums."""
import jax
import jax.numpy as jnp
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

