"""Each epoch's order (data/shuffle.py): a permutation of all pairs, another each epoch,
evaluated at any positions at once."""
import numpy as np
import pytest

from transformer_jax.data import shuffle


@pytest.mark.parametrize('n', [1, 2, 7, 1000, 4097])
def test_each_epochs_order_is_a_permutation_of_its_own(n):
  orders = [shuffle.permute(np.arange(n), n, shuffle.keys(0, e))
            for e in (0, 1)]
  for order in orders:
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
  if n > 7:
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[0], np.arange(n))
    some = np.asarray([5, 3, n - 1])  # any positions, at once
    np.testing.assert_array_equal(shuffle.permute(
        some, n, shuffle.keys(0, 0)), orders[0][some])


def test_neighbours_in_an_order_are_as_far_apart_as_in_a_random_one():
  """A weak permutation (few rounds, a poor mix) keeps neighbours near: |a - b| of
  uniformly random a, b in [0, n) averages n / 3."""
  n = 100_000
  order = shuffle.permute(np.arange(n), n, shuffle.keys(7, 3))
  assert abs(np.abs(np.diff(order)).mean() / (n / 3) - 1) < 0.02
  assert abs(np.corrcoef(np.arange(n), order)[0, 1]) < 0.02
