"""The infilling decoder: KV cache = no cache, reproducible, structured, and truncated as numpy says."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spactor import model as model_lib
from spactor.config import T5Config
from ssr import decoding
from tests.test_ssr_sampling import numpy_nucleus

CONFIG = T5Config(vocab_size=128, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, num_encoder_layers=1,
                  num_decoder_layers=2)
VOCAB = decoding.InfillVocab(vocab_size=120, extra_ids=20)  # pieces 0..99, sentinels 119 down to 100
B, LE, D = 5, 12, 16
NUM_SPANS = np.array([2, 3, 1, 0, 4], np.int32)
BUDGET = np.array([16, 10, 5, 16, 16], np.int32)


@pytest.fixture(scope="module")
def setup():
  model = model_lib.SpacTor(CONFIG)
  enc = jnp.asarray(np.random.default_rng(0).integers(2, 100, (B, LE)), jnp.int32)
  dec = jnp.ones((B, D), jnp.int32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), enc, dec, dec)["params"]
  # Sharpen the output distribution so that nucleus truncation cuts deep.
  params["token_embedder"]["embedding"] = params["token_embedder"]["embedding"] * 4.0
  return model, params, enc


@functools.lru_cache(maxsize=None)
def _compiled(model, use_cache=True, sampling_config=decoding.SamplingConfig(), reserve_per_span=1):
  return jax.jit(functools.partial(decoding.infill, model, vocab=VOCAB, max_length=D, max_span_fill=4,
                                   use_cache=use_cache, sampling_config=sampling_config,
                                   reserve_per_span=reserve_per_span))


def _infill(model, params, enc, rng, num_spans=NUM_SPANS, budget=BUDGET, ids=None, **kwargs):
  ids = np.arange(len(enc)) if ids is None else ids
  fn = _compiled(model, **kwargs)
  return jax.device_get(fn(params, enc, jnp.asarray(num_spans), jnp.asarray(budget), jnp.asarray(ids), rng))


def test_cache_matches_no_cache(setup):
  model, params, enc = setup
  cached = _infill(model, params, enc, jax.random.PRNGKey(1), use_cache=True)
  full = _infill(model, params, enc, jax.random.PRNGKey(1), use_cache=False)
  np.testing.assert_array_equal(cached["tokens"], full["tokens"])
  np.testing.assert_array_equal(cached["fill_mask"], full["fill_mask"])
  np.testing.assert_allclose(cached["token_nll"], full["token_nll"], rtol=1e-4, atol=1e-4)


def test_cached_step_logits_match_full_decoder(setup):
  model, params, enc = setup
  tokens = jnp.asarray(np.random.default_rng(1).integers(2, 100, (B, D)), jnp.int32)
  encoded = model.apply({"params": params}, enc, enable_dropout=False, method="encode")
  cache, step = decoding._step_logits_cached(model, params, encoded, enc, D)
  _, full_step = decoding._step_logits_full(model, params, encoded, enc, D)
  step, full_step = jax.jit(step), jax.jit(full_step)
  prev = jnp.zeros((B,), jnp.int32)
  for t in range(D):
    logits, cache = step(cache, prev, None, t)
    reference, _ = full_step(None, None, tokens, t)
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)
    prev = tokens[:, t]


def test_reproducible_and_independent_of_the_batch(setup):
  model, params, enc = setup
  a = _infill(model, params, enc, jax.random.PRNGKey(1))
  b = _infill(model, params, enc, jax.random.PRNGKey(1))
  c = _infill(model, params, enc, jax.random.PRNGKey(2))
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert not np.array_equal(a["tokens"], c["tokens"])
  # The same examples in another order (other rows beside them) give the same samples (seeded by example id).
  order = np.array([4, 1, 0, 3, 2])
  d = _infill(model, params, enc[order], jax.random.PRNGKey(1), NUM_SPANS[order], BUDGET[order], ids=order)
  np.testing.assert_array_equal(d["tokens"], a["tokens"][order])


def test_structure_budget_and_span_cap(setup):
  model, params, enc = setup
  out = _infill(model, params, enc, jax.random.PRNGKey(3))
  for row in range(B):
    tokens, fill_mask = out["tokens"][row], out["fill_mask"][row]
    fills = decoding.split_fills(tokens, fill_mask, NUM_SPANS[row], VOCAB)
    assert len(fills) == NUM_SPANS[row]
    assert all(len(f) <= 4 for f in fills)  # max_span_fill
    assert all(2 <= x < 100 for f in fills for x in f)  # ordinary pieces only
    used = int(np.sum(tokens != 0))
    if NUM_SPANS[row] == 0:
      assert used == 0 and out["loss"][row] == 0
    else:
      assert used <= BUDGET[row] and tokens[used - 1] == decoding.EOS_ID
      assert out["num_fill_tokens"][row] == sum(len(f) for f in fills)
      np.testing.assert_allclose(out["loss"][row], out["token_nll"][row].sum(), rtol=1e-6)
  assert out["loss"][0] > 0


def test_budget_keeps_a_reserve_for_later_spans_and_counts_what_it_forces(setup):
  """With a fill budget of at least one token per span the budget never closes a span empty; with less it must,
  and says so. `num_sampled` counts exactly the tokens whose NLL the loss sums."""
  model, params, enc = setup
  num_spans = np.array([4, 4, 3, 2, 4], np.int32)
  budget = np.array([5, 16, 16, 16, 6], np.int32)  # fill budgets (budget - n - 1): 0, 11, 12, 13, 1
  for seed in range(3):
    out = _infill(model, params, enc, jax.random.PRNGKey(seed), num_spans, budget)
    assert (out["budget_empty"][0], out["budget_cut"][0], out["num_sampled"][0]) == (4, 0, 0)  # all forced
    assert out["loss"][0] == 0
    np.testing.assert_array_equal(out["budget_empty"][1:4], 0)  # the reserve held
    assert out["num_fill_tokens"][4] <= 1
    np.testing.assert_array_equal(out["num_sampled"], np.sum(out["token_nll"] > 0, axis=1))
    for row in range(len(num_spans)):
      fills = decoding.split_fills(out["tokens"][row], out["fill_mask"][row], num_spans[row], VOCAB)
      assert sum(len(f) == 0 for f in fills) >= out["budget_empty"][row]
      assert out["budget_empty"][row] + out["budget_cut"][row] <= num_spans[row]
      assert int(np.sum(out["tokens"][row] != 0)) <= budget[row]


def test_samples_stay_in_the_numpy_nucleus(setup):
  """Every sampled token lies in the nucleus (p = 0.5) that numpy computes from the same step's logits."""
  model, params, enc = setup
  out = _infill(model, params, enc, jax.random.PRNGKey(4), sampling_config=decoding.SamplingConfig(top_p=0.5))
  encoded = model.apply({"params": params}, enc, enable_dropout=False, method="encode")
  _, full_step = decoding._step_logits_full(model, params, encoded, enc, D)
  full_step = jax.jit(full_step)
  ids = np.arange(CONFIG.vocab_size)
  checked = 0
  tail_mass = []
  for t in range(D):
    logits = np.asarray(full_step(None, None, jnp.asarray(out["tokens"]), t)[0])
    for row in range(B):
      sampled = out["token_nll"][row, t] > 0
      if not sampled:
        continue
      tokens = out["tokens"][row]
      opened = int(np.sum((tokens[:t] >= 100)))
      structural = VOCAB.sentinel(opened) if opened < NUM_SPANS[row] else decoding.EOS_ID
      allowed = ((ids > 1) & (ids < 100)) | (ids == structural)
      nucleus = numpy_nucleus(np.where(allowed, logits[row], -1e10), 0.5)
      assert nucleus[tokens[t]], (row, t)
      tail_mass.append(1 - nucleus[allowed].mean())
      checked += 1
  assert checked >= 10
  assert np.mean(tail_mass) > 0.5  # the nucleus really excluded most of the allowed vocabulary


def test_split_fills_rejects_out_of_order_sentinels():
  with pytest.raises(ValueError, match="out of order"):
    decoding.split_fills(np.array([118, 5, 1]), np.array([False, True, False]), 1, VOCAB)
  with pytest.raises(ValueError, match="decoded 1 fills for 2"):
    decoding.split_fills(np.array([119, 5, 1]), np.array([False, True, False]), 2, VOCAB)
