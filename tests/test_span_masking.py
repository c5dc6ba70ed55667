"""SpanBERT span masking (spactor.span_masking): span lengths, budget, whole words, 80/10/10, and the gin hook."""
import os

import numpy as np
import pytest
import seqio
import tensorflow as tf

from spactor import preprocessors as pp
from spactor import span_lengths
from spactor import span_masking as sm
from spactor import vocab as vocab_lib


def _draw_rows(length, ratio, rows, starts=None):
  """select_spans on `rows` rows of `length` eligible tokens (one traced function): (modes, spans) numpy."""
  starts = tf.ones([length], bool) if starts is None else tf.constant(starts)
  one = lambda seed: tf.stack(sm.select_spans(tf.ones([length], bool), starts, seed, ratio))
  many = tf.function(lambda seeds: tf.map_fn(one, seeds, fn_output_signature=tf.int32))
  out = many(tf.stack([tf.range(rows), tf.fill([rows], 11)], axis=1)).numpy()
  return out[:, 0], out[:, 1]


def _span_extents(span_row):
  """Words (here tokens) from the first to the last position of each span of a row, the last span left out."""
  ids = np.unique(span_row[span_row >= 0])
  return [np.ptp(np.flatnonzero(span_row == s)) + 1 for s in ids[:-1]]


def test_span_length_distribution_has_spanberts_mean():
  probs = sm.span_length_probabilities()
  assert probs.shape == (10,) and np.isclose(probs.sum(), 1.0)
  np.testing.assert_allclose(probs[1:] / probs[:-1], 0.8)  # geometric, p = 0.2
  assert abs(sm.mean_span_length() - 3.8) < 0.005  # SpanBERT: "a mean span length of 3.8"


def test_sampled_spans_have_mean_length_3_8_words():
  """At a low ratio spans rarely touch, so each span's extent is its drawn length: mean 3.80 +- 0.15 (5 se)."""
  _, spans = _draw_rows(2048, 0.02, rows=150)
  extents = np.concatenate([_span_extents(row) for row in spans])
  assert len(extents) > 1200
  assert extents.max() <= 10
  assert abs(extents.mean() - sm.mean_span_length()) < 5 * 2.4 / np.sqrt(len(extents))


def test_budget_is_spent_exactly_with_one_token_words_and_never_exceeded():
  modes, _ = _draw_rows(512, 0.15, rows=40)
  assert ((modes > 0).sum(axis=1) == round(0.15 * 512)).all()
  # Words of 1 to 4 tokens: whole words may leave a row a few tokens short, never over.
  rng = np.random.default_rng(0)
  starts = np.zeros(512, bool)
  boundaries = np.cumsum(rng.integers(1, 5, size=512))
  starts[boundaries[boundaries < 512]] = True
  starts[0] = True
  modes, _ = _draw_rows(512, 0.15, rows=40, starts=starts)
  masked = (modes > 0).sum(axis=1)
  assert (masked <= 77).all() and masked.mean() > 0.97 * 77


def test_only_whole_words_within_segments_are_masked(small_sotu_vocab):
  """Real SentencePiece words through the preprocessor: a word is masked whole or not at all, never EOS or a
  sentinel, and a span never runs across a sentinel."""
  text = ('The economy of the United States grew steadily while Congress debated appropriations, tariffs, '
          'and the national defense of our Republic. ') * 6
  tokens = np.asarray(small_sotu_vocab.encode(text), np.int32)[:200]
  sentinel = small_sotu_vocab.vocab_size - 1
  tokens[[40, 41, 90]] = [sentinel, sentinel - 1, sentinel - 2]
  tokens = np.concatenate([tokens, [vocab_lib.EOS_ID]]).astype(np.int32)
  features = {'inputs': seqio.Feature(small_sotu_vocab), 'targets': seqio.Feature(small_sotu_vocab)}
  ds = tf.data.Dataset.from_tensors({'inputs': tokens, 'targets': tokens[:5]}).repeat(30)
  with seqio.map_seed_manager(3):
    examples = list(pp.mlm_mask(ds, features, mlm_ratio=0.15, strategy='spanbert').as_numpy_iterator())
  table = sm.word_start_table(small_sotu_vocab)
  eligible = (tokens > 2) & (tokens < small_sotu_vocab.vocab_size - small_sotu_vocab.extra_ids)
  word = np.cumsum(eligible & (table[tokens] | ~np.concatenate([[False], eligible[:-1]]))) - 1
  budget = round(0.15 * eligible.sum())
  masks = np.stack([ex['mlm_mask'] for ex in examples]).astype(bool)
  assert not (masks & ~eligible).any()
  for mask in masks:
    for w in np.unique(word[eligible]):
      in_word = eligible & (word == w)
      assert mask[in_word].all() or not mask[in_word].any(), f'word {w} masked in part'
    assert budget - 3 <= mask.sum() <= budget
  assert len({m.tobytes() for m in masks}) > 25  # a new draw per example
  for ex in examples:
    np.testing.assert_array_equal(ex['inputs_clean'], tokens)
    np.testing.assert_array_equal(ex['inputs'][~ex['mlm_mask'].astype(bool)], tokens[~ex['mlm_mask'].astype(bool)])


def test_replacement_is_80_10_10_per_span():
  modes, spans = _draw_rows(512, 0.15, rows=60)
  span_modes = [set(modes[r][spans[r] == s]) for r in range(len(spans)) for s in np.unique(spans[r][spans[r] >= 0])]
  assert all(len(m) == 1 for m in span_modes)  # one replacement per span
  kinds = np.array([m.pop() for m in span_modes])
  n = len(kinds)
  assert n > 1000
  for kind, share in ((sm.MODE_MASK, 0.8), (sm.MODE_RANDOM, 0.1), (sm.MODE_KEEP, 0.1)):
    assert abs((kinds == kind).mean() - share) < 5 * np.sqrt(share * (1 - share) / n)
  tokens = tf.constant([7] * 512)
  mode = tf.constant(modes[0])
  out = sm.replace(tokens, mode, tf.constant([1, 2]), mask_id=36, random_low=3, random_high=26).numpy()
  assert (out[modes[0] == sm.MODE_MASK] == 36).all()
  assert (out[(modes[0] == sm.MODE_KEEP) | (modes[0] == 0)] == 7).all()
  random = out[modes[0] == sm.MODE_RANDOM]
  assert ((random >= 3) & (random < 26)).all()


def test_mask_count_respects_the_trainers_static_bound(small_sotu_vocab):
  """Whatever the words, a row has at most round(ratio * eligible) masked tokens, within max_mlm_positions."""
  text = 'Fellow citizens of the Senate and House of Representatives, among the vicissitudes incident to life. ' * 4
  tokens = np.asarray(small_sotu_vocab.encode(text), np.int32)
  rows = [np.concatenate([tokens[i:i + 39], [vocab_lib.EOS_ID]]).astype(np.int32) for i in range(20)]
  ds = tf.data.Dataset.from_generator(lambda: ({'inputs': r, 'targets': r[:3]} for r in rows),
                                      output_signature={'inputs': tf.TensorSpec([None], tf.int32),
                                                        'targets': tf.TensorSpec([None], tf.int32)})
  features = {'inputs': seqio.Feature(small_sotu_vocab), 'targets': seqio.Feature(small_sotu_vocab)}
  with seqio.map_seed_manager(1):
    out = list(pp.mlm_mask(ds, features, mlm_ratio=0.15, strategy='spanbert').as_numpy_iterator())
  bound = span_lengths.max_mlm_positions(40, 0.15)
  assert all(0 < ex['mlm_mask'].sum() <= min(bound, round(0.15 * 39)) for ex in out)
  assert set(out[0]) == {'inputs', 'targets', 'inputs_clean', 'mlm_mask'}


def test_unknown_strategy_is_named(tiny_vocab):
  features = {'inputs': seqio.Feature(tiny_vocab), 'targets': seqio.Feature(tiny_vocab)}
  with pytest.raises(ValueError, match="MLM_STRATEGY must be one of.*'whole_words'"):
    pp.mlm_mask(tf.data.Dataset.range(1), features, strategy='whole_words')


def test_gin_macro_selects_spanbert(tiny_vocab, monkeypatch):
  """MLM_STRATEGY in the objective's gin file reaches the hybrid task's mlm_mask (default: the paper's tokens)."""
  import gin
  calls = []
  monkeypatch.setattr(sm, 'span_mlm_mask', lambda ds, features, ratio: calls.append(ratio) or ds)
  features = {'inputs': seqio.Feature(tiny_vocab), 'targets': seqio.Feature(tiny_vocab)}
  ds = tf.data.Dataset.from_tensors({'inputs': tf.constant([5, 6, 7, 1]), 'targets': tf.constant([5, 1])})
  objective = os.path.join(os.path.dirname(__file__), '..', 'gin', 'objectives', 'spactor.gin')
  try:
    for strategy, expected_calls in (('random_tokens', []), ('spanbert', [0.25])):
      gin.clear_config()
      with gin.unlock_config():
        gin.parse_config_files_and_bindings([objective], ['MLM_RATIO = 0.25', f'MLM_STRATEGY = {strategy!r}'],
                                            skip_unknown=True)
      with seqio.map_seed_manager(0):
        pp.mlm_mask(ds, features)
      assert calls == expected_calls, strategy
  finally:
    gin.clear_config()
