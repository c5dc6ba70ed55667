"""Greedy and beam search: exact against exhaustive search on tiny vocabularies, through the real KV cache too."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spactor import beam_search
from spactor import config as config_lib
from spactor import model as model_lib

EOS = beam_search.EOS_ID


# --- a toy decoder whose next-token logits depend on the whole prefix --------------------------------------


def toy_table(vocab: int, seed: int, buckets: int = 997):
  return jnp.asarray(np.random.default_rng(seed).normal(scale=2.0, size=(buckets, vocab)), jnp.float32)


def toy_step(table):
  """state: a per-row hash of the prefix; logits are a random table row per hash (so a prefix's own)."""
  def step(state, token):
    h = (state['hash'] * 7 + token + 1) % table.shape[0]
    return table[h], {'hash': h}
  return step


def toy_log_probs(table, prefix):
  """Host-side replay of the toy decoder: log-probabilities of the next token after `prefix` (pad forbidden)."""
  h = 0
  for token in [0] + list(prefix):
    h = (h * 7 + token + 1) % table.shape[0]
  logits = np.array(table[h], np.float64)
  logits[0] = -np.inf
  return logits - np.logaddexp.reduce(logits)


def exhaustive(log_probs_fn, vocab: int, max_length: int, alpha: float):
  """Every sequence the search may return (ends at EOS, or runs to max_length) with its score, best first."""
  out, cache = [], {}
  log_probs = lambda prefix: cache[prefix] if prefix in cache else cache.setdefault(prefix, log_probs_fn(prefix))
  for n in range(1, max_length + 1):
    for seq in itertools.product(range(1, vocab), repeat=n):
      if EOS in seq[:-1] or (seq[-1] != EOS and n < max_length):
        continue
      logp = sum(log_probs(seq[:i])[seq[i]] for i in range(n))
      out.append((logp / ((5.0 + n) / 6.0) ** alpha, seq))
  return sorted(out, key=lambda x: -x[0])


def strip(row):
  row = list(np.asarray(row))
  return tuple(row[:row.index(EOS) + 1]) if EOS in row else tuple(t for t in row if t)


@pytest.mark.parametrize('alpha', [0.0, 0.6, 2.0])
def test_a_wide_beam_is_exhaustive_search(alpha):
  vocab, max_length, batch = 4, 4, 2
  beam = (vocab - 2) ** (max_length - 1) + 4  # more than every unfinished prefix: the search is exact
  tables = [toy_table(vocab, seed) for seed in (0, 1)]
  # One batch of two examples: each example has its own table (row b's hash is offset so tables never mix).
  table = jnp.concatenate(tables)

  def step(state, token):
    h = (state['hash'] * 7 + token + 1) % 997
    return table[h + state['offset']], {'hash': h, 'offset': state['offset']}

  state = {'hash': jnp.zeros((batch * beam,), jnp.int32), 'offset': jnp.repeat(jnp.array([0, 997]), beam)}
  seqs, scores = jax.jit(lambda s: beam_search.beam_search(step, s, batch, beam, max_length, alpha=alpha))(state)
  for b in range(batch):
    want = exhaustive(lambda p: toy_log_probs(tables[b], p), vocab, max_length, alpha)[:beam]
    np.testing.assert_allclose(np.asarray(scores[b]), [s for s, _ in want], rtol=1e-5)
    assert strip(seqs[b, 0]) == want[0][1]
    assert {strip(r) for r in seqs[b]} == {seq for _, seq in want}


def test_beams_score_at_least_greedy_and_a_narrow_beam_beats_it():
  """Beam 1 keeps greedy's sequence among its finished candidates (EOS is in its top 2 where greedy ends), so it
  never scores lower; a beam of 4 finds a better sequence than greedy on some of these decoders."""
  vocab, max_length = 6, 5
  found_better = False
  greedy_fn = jax.jit(lambda t: beam_search.greedy_search(toy_step(t), {'hash': jnp.zeros((1,), jnp.int32)}, 1,
                                                          max_length))
  beam_fns = {beam: jax.jit(lambda t, beam=beam: beam_search.beam_search(
      toy_step(t), {'hash': jnp.zeros((beam,), jnp.int32)}, 1, beam, max_length, alpha=0.0)) for beam in (1, 4)}
  for seed in range(6):
    table = toy_table(vocab, seed)
    greedy = greedy_fn(table)
    score_of = {seq: s for s, seq in exhaustive(lambda p: toy_log_probs(table, p), vocab, max_length, 0.0)}
    greedy_score = score_of[strip(greedy[0])]
    for beam, search in beam_fns.items():
      seqs, scores = search(table)
      np.testing.assert_allclose(scores[0, 0], score_of[strip(seqs[0, 0])], rtol=1e-5)
      assert scores[0, 0] >= greedy_score - 1e-5
    found_better |= bool(scores[0, 0] > greedy_score + 1e-3)
  assert found_better  # the search is not greedy in disguise


def test_greedy_pads_after_eos_and_never_emits_pad():
  table = jnp.zeros((997, 5), jnp.float32).at[:, 0].set(9.0).at[:, 3].set(1.0)  # pad most likely, then 3
  table = table.at[(1 * 7 + 3 + 1) % 997, EOS].set(5.0)  # after one 3, EOS
  tokens = beam_search.greedy_search(toy_step(table), {'hash': jnp.zeros((1,), jnp.int32)}, 1, 6)
  assert tokens.tolist() == [[3, EOS, 0, 0, 0, 0]]


def test_bad_beam_settings_are_refused():
  with pytest.raises(ValueError, match='beam_size'):
    beam_search.beam_search(None, None, 1, 0, 4)
  with pytest.raises(ValueError, match='alpha'):
    beam_search.beam_search(None, None, 1, 2, 4, alpha=-1.0)


# --- the real model through its KV cache ---------------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_model():
  cfg = config_lib.T5Config(vocab_size=5, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=1,
                            num_decoder_layers=1)
  module = model_lib.SpacTor(cfg)
  tokens = jnp.array([[2, 3, 4, 1], [4, 4, 1, 0]], jnp.int32)
  params = jax.jit(module.init)(jax.random.PRNGKey(3), tokens, tokens, tokens)['params']
  params = jax.tree.map(lambda p: p * 3.0, params)  # sharper distributions: beams and greedy part ways
  return module, params, tokens


def teacher_forced_log_probs(module, params, tokens, prefixes, length: int):
  """{(row, prefix): next-token log-probabilities} by teacher forcing whole prefixes in one batch (no cache).

  Each prefix is padded with a non-pad token to `length`: causal attention keeps later positions out of the
  logits at the prefix's end.
  """
  rows = [(b, p) for b in range(tokens.shape[0]) for p in prefixes]
  targets = jnp.asarray([list(p) + [2] * (length - len(p)) for _, p in rows], jnp.int32)
  decoder_inputs = jnp.pad(targets, ((0, 0), (1, 0)))[:, :length]
  encoder = tokens[jnp.asarray([b for b, _ in rows])]
  logits = jax.jit(lambda p: module.apply({'params': p}, encoder, decoder_inputs, targets,
                                          enable_dropout=False))(params)
  logits = np.array(logits, np.float64)[np.arange(len(rows)), [len(p) for _, p in rows]]
  logits[:, 0] = -np.inf
  return {row: lp - np.logaddexp.reduce(lp) for row, lp in zip(rows, logits)}


def test_cached_beam_search_of_the_model_is_exhaustive_search(tiny_model):
  module, params, tokens = tiny_model
  max_length, beam, alpha = 3, 12, 0.6
  prefixes = [p for n in range(max_length) for p in itertools.product((2, 3, 4), repeat=n)]
  reference = teacher_forced_log_probs(module, params, tokens, prefixes, max_length)
  seqs, scores = jax.jit(lambda p: beam_search.beam_decode(module, p, tokens, max_length, beam, alpha))(params)
  for b in range(2):
    want = exhaustive(lambda p: reference[(b, p)], 5, max_length, alpha)[:beam]
    np.testing.assert_allclose(np.asarray(scores[b]), [s for s, _ in want], rtol=1e-4, atol=1e-5)
    assert strip(seqs[b, 0]) == want[0][1]


def test_cached_greedy_decoding_is_the_argmax_of_teacher_forcing(tiny_model):
  module, params, tokens = tiny_model
  length = 6
  out = np.asarray(jax.jit(lambda p: beam_search.decode(module, p, tokens, length))(params))
  prefixes = {tuple(out[b, :n]) for b in range(2) for n in range(length) if EOS not in out[b, :n]}
  reference = teacher_forced_log_probs(module, params, tokens, sorted(prefixes), length)
  for b in range(2):
    row = out[b].tolist()
    end = row.index(EOS) + 1 if EOS in row else length
    assert all(row[n] == int(np.argmax(reference[(b, tuple(row[:n]))])) for n in range(end))
    assert row[end:] == [0] * (length - end)
