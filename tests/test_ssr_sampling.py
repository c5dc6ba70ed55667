"""Top-k / nucleus sampling against a numpy reference on a tiny vocabulary."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssr import sampling


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def numpy_nucleus(logits, p):
  """The smallest set of most probable tokens whose probability sums to >= p."""
  probs = _softmax(logits)
  order = np.argsort(-probs, kind="stable")
  kept, mass = [], 0.0
  for token in order:
    kept.append(token)
    mass += probs[token]
    if mass >= p:
      break
  mask = np.zeros(len(logits), bool)
  mask[kept] = True
  return mask


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 0.99])
def test_top_p_mask_matches_numpy(p):
  rng = np.random.default_rng(0)
  for _ in range(20):
    logits = rng.normal(size=8).astype(np.float32) * 2
    np.testing.assert_array_equal(sampling.top_p_mask(jnp.asarray(logits), p), numpy_nucleus(logits, p))


def test_top_k_mask_matches_numpy():
  logits = np.array([0.1, 2.0, -1.0, 0.5, 3.0, 0.0], np.float32)
  np.testing.assert_array_equal(sampling.top_k_mask(jnp.asarray(logits), 2), [0, 1, 0, 0, 1, 0])
  batch = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
  expected = np.argsort(-batch, axis=-1)[:, :3]
  got = np.asarray(sampling.top_k_mask(jnp.asarray(batch), 3))
  for row, kept in zip(got, expected):
    assert set(np.flatnonzero(row)) == set(kept)


def test_nucleus_sampling_removes_the_tail_and_keeps_proportions():
  # probs 0.5, 0.25, 0.15, 0.06, 0.04: the 0.9-nucleus is the first three tokens.
  probs = np.array([0.5, 0.25, 0.15, 0.06, 0.04])
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  draws = np.asarray(sampling.sample(jax.random.PRNGKey(0), jnp.broadcast_to(logits, (20000, 5)), top_p=0.9))
  counts = np.bincount(draws, minlength=5) / len(draws)
  assert counts[3] == 0 and counts[4] == 0
  np.testing.assert_allclose(counts[:3], probs[:3] / probs[:3].sum(), atol=0.015)


def test_top_k_and_temperature():
  logits = jnp.log(jnp.asarray([0.4, 0.3, 0.2, 0.1]))
  draws = np.asarray(sampling.sample(jax.random.PRNGKey(1), jnp.broadcast_to(logits, (20000, 4)), top_k=2,
                                     temperature=0.5))
  counts = np.bincount(draws, minlength=4) / len(draws)
  # Temperature 0.5 squares the probabilities: 0.16 : 0.09 among the top 2.
  assert counts[2] == 0 and counts[3] == 0
  np.testing.assert_allclose(counts[:2], np.array([0.16, 0.09]) / 0.25, atol=0.015)
  np.testing.assert_array_equal(sampling.sample(None, jnp.asarray([[0.0, 3.0, 1.0]]), temperature=0.0), [1])


def test_sampling_is_reproducible():
  logits = jax.random.normal(jax.random.PRNGKey(2), (64, 16))
  a = sampling.sample(jax.random.PRNGKey(3), logits, top_p=0.9)
  b = sampling.sample(jax.random.PRNGKey(3), logits, top_p=0.9)
  c = sampling.sample(jax.random.PRNGKey(4), logits, top_p=0.9)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
