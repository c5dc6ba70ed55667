"""Span corruption (T5-exact) and SpacTor MLM masking.

Golden outputs marked "T5 0.9.4" were produced by the T5 library itself (`pip install --no-deps t5==0.9.4`,
t5.data.preprocessors.random_spans_noise_mask / select_random_chunk / span_corruption followed by
seqio.preprocessors.append_eos_after_trim, same seeds, same seqio test vocabulary). Beyond these pins, our
implementation was compared with T5's on 582 noise masks and 12 full pipelines (300 random documents, 4 seeds,
3 lengths): all identical. T5 itself fails where the non-noise tokens are fewer than the spans; we clip there.
"""

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
from scipy import stats
from seqio.test_utils import assert_dataset

from spactor import preprocessors as pp
from spactor import vocab as vocab_lib


def _features(vocab):
  return {'inputs': seqio.Feature(vocab), 'targets': seqio.Feature(vocab)}


def _token_docs(docs):
  return tf.data.Dataset.from_generator(lambda: ({'targets': np.asarray(d, np.int32)} for d in docs),
                                        output_signature={'targets': tf.TensorSpec([None], tf.int32)})


def _sc(docs, vocab, sequence_length, **kwargs):
  """span_corruption + EOS, as a task runs them (call under seqio.map_seed_manager)."""
  feats = _features(vocab)
  ds = pp.span_corruption(_token_docs(docs), sequence_length=sequence_length, output_features=feats, **kwargs)
  return seqio.preprocessors.append_eos_after_trim(ds, output_features=feats, sequence_length=sequence_length)


def _sc_with_eos(docs, vocab, sequence_length, seed, **kwargs):
  with seqio.map_seed_manager(seed):
    return _sc(docs, vocab, sequence_length, **kwargs)


def _mask(length, density, seeds, mean=3.0):
  return pp.random_spans_noise_mask(length, density, tf.constant(seeds, tf.int32), mean).numpy().astype(int)


def _masks(length, density, seeds, mean=3.0):
  """One mask per seed pair in `seeds` [n, 2, 2], in one traced function (eager calls are slow)."""
  one = lambda s: pp.random_spans_noise_mask(length, density, s, mean)
  many = tf.function(lambda ss: tf.map_fn(one, ss, fn_output_signature=tf.bool))
  return many(tf.constant(seeds, tf.int32)).numpy().astype(int)


def _runs(mask):
  """Lengths of the alternating runs of a 0/1 mask."""
  edges = np.flatnonzero(np.diff(mask)) + 1
  return np.diff(np.concatenate([[0], edges, [len(mask)]]))


# --- lengths -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('inputs_length, raw, targets', [(512, 568, 114), (128, 141, 29), (256, 284, 58),
                                                         (12, 12, 4), (20, 21, 5)])
def test_random_spans_helper(inputs_length, raw, targets):
  assert pp.random_spans_helper(inputs_length) == (raw, targets)


def test_targets_length_follows_gin_bindings():
  assert pp.targets_length_for(512) == 114
  with gin.unlock_config():
    gin.parse_config(['NOISE = 0.3', 'spactor.preprocessors.span_corruption.noise_density = %NOISE',
                      'spactor.preprocessors.span_corruption.mean_noise_span_length = 2.0'])
  try:
    assert pp.targets_length_for(20) == pp.random_spans_helper(20, 0.3, 2.0)[1] == 12
  finally:
    gin.clear_config()


# --- noise mask --------------------------------------------------------------------------------------------


@pytest.mark.parametrize('length, density, mean, seeds, expected', [  # T5 0.9.4
    (20, 0.15, 3.0, ((1, 2), (3, 4)), '00000000000000000111'),
    (20, 0.3, 3.0, ((5, 6), (7, 8)), '01111000000000000011'),
    (37, 0.15, 2.0, ((0, 0), (0, 1)), '0100000000000000000011000000000000111'),
    (1, 0.15, 3.0, ((1, 1), (1, 1)), '0'),
])
def test_noise_mask_matches_t5(length, density, mean, seeds, expected):
  assert ''.join(map(str, _mask(length, density, seeds, mean))) == expected


def test_noise_mask_zero_density_is_all_clean():
  assert _mask(9, 0.0, ((1, 2), (3, 4))).tolist() == [0] * 9


def test_noise_mask_counts_and_shape_over_many_seeds():
  length, density, mean = 141, 0.15, 3.0
  masks = _masks(length, density, [((s, 1), (2, s)) for s in range(300)])
  num_noise = int(np.round(np.float32(length) * np.float32(density)))  # T5: round(L * density) in float32
  num_spans = int(np.round(np.float32(num_noise) / np.float32(mean)))
  assert (masks.sum(1) == num_noise).all()
  for mask in masks:
    runs = _runs(mask)
    assert mask[0] == 0 and mask[-1] == 1  # starts clean, ends noise (random_roll=False)
    assert len(runs) == 2 * num_spans  # alternating clean / noise spans
  assert len({m.tobytes() for m in masks}) > 290  # seeds matter
  # Every split into positive parts is equally likely, so a noise span's mean length is num_noise / num_spans
  # and each position other than the first is noise about equally often.
  noise_runs = np.concatenate([_runs(m)[1::2] for m in masks])
  assert noise_runs.mean() == pytest.approx(num_noise / num_spans)
  assert masks[:, 1:-num_noise].mean() == pytest.approx(num_noise / length, abs=0.05)


def _compositions(total, parts):
  """Every split of `total` into `parts` positive parts, in lexicographic order."""
  if parts == 1:
    return [(total,)]
  return [(first,) + rest for first in range(1, total - parts + 2) for rest in _compositions(total - first, parts - 1)]


def test_noise_mask_span_lengths_follow_their_exact_law():
  """num_noise and num_nonnoise are each split into num_spans positive parts uniformly over the compositions, the
  two splits independently: a chi-square over all 10 noise and 78 non-noise compositions of 3000 masks."""
  length, density, mean, count = 20, 0.3, 2.0, 3000  # 6 noise tokens in 3 spans, 14 non-noise in 3 spans
  masks = _masks(length, density, [((s, 7), (11, s)) for s in range(count)], mean)
  runs = np.stack([_runs(m) for m in masks])  # clean, noise, clean, noise, ...
  assert runs.shape == (count, 6)
  for observed_parts, total in ((runs[:, 1::2], 6), (runs[:, 0::2], 14)):
    cells = {c: i for i, c in enumerate(_compositions(total, 3))}
    observed = np.bincount([cells[tuple(r)] for r in observed_parts], minlength=len(cells))
    assert stats.chisquare(observed).pvalue > 1e-3, (total, observed)
  # Independence of the two splits: the first noise span against the first non-noise span.
  table = np.histogram2d(runs[:, 1], runs[:, 0], bins=[np.arange(1, 6) - 0.5, [0.5, 2.5, 4.5, 6.5, 12.5]])[0]
  assert stats.chi2_contingency(table).pvalue > 1e-3


def test_noise_mask_counts_for_many_lengths():
  mask_fn = tf.function(lambda n, s: pp.random_spans_noise_mask(n, 0.15, s),
                        input_signature=[tf.TensorSpec([], tf.int32), tf.TensorSpec([2, 2], tf.int32)])
  for length in range(2, 400, 7):
    mask = mask_fn(length, tf.constant([[length, 3], [4, 5]])).numpy().astype(int)
    expected = min(max(int(np.round(np.float32(length) * np.float32(0.15))), 1), length - 1)
    assert mask.sum() == expected and len(mask) == length and mask[-1] == 1


# --- sentinels ---------------------------------------------------------------------------------------------


def test_sentinel_replacement_by_hand(tiny_vocab):
  tokens = tf.range(10, 20)
  mask = tf.constant([0, 0, 1, 1, 0, 1, 0, 0, 1, 1]) > 0
  s0, s1, s2 = 35, 34, 33  # vocab_size 36: sentinel k = 35 - k
  assert pp.noise_span_to_unique_sentinel(tokens, mask, tiny_vocab).numpy().tolist() == [
      10, 11, s0, 14, s1, 16, 17, s2]
  assert pp.nonnoise_span_to_unique_sentinel(tokens, mask, tiny_vocab).numpy().tolist() == [
      s0, 12, 13, s1, 15, s2, 18, 19]


# --- the pipeline ------------------------------------------------------------------------------------------


def test_select_random_chunk_matches_t5():
  docs = [np.arange(3, 3 + n) for n in (25, 7, 31, 0, 10)]
  with seqio.map_seed_manager(3):
    ds = pp.select_random_chunk(_token_docs(docs), max_length=10)
  assert_dataset(ds, [  # T5 0.9.4; the empty document is dropped
      {'targets': [23, 24, 25, 26, 27]}, {'targets': list(range(3, 10))},
      {'targets': list(range(23, 33))}, {'targets': list(range(3, 13))}])


def test_concat_and_split_by_hand():
  docs = [[3, 4, 5], [6, 7], [8, 9, 10, 11, 12]]
  ds = pp.reduce_concat_tokens(_token_docs(docs), batch_size=2)
  assert_dataset(ds, [{'targets': [3, 4, 5, 6, 7]}, {'targets': [8, 9, 10, 11, 12]}])
  with seqio.map_seed_manager(0):
    ds = pp.split_tokens(ds, max_tokens_per_segment=2)
  assert_dataset(ds, [{'targets': [3, 4]}, {'targets': [5, 6]}, {'targets': [7]},
                      {'targets': [8, 9]}, {'targets': [10, 11]}, {'targets': [12]}])


def test_span_corruption_matches_t5(tiny_vocab):
  docs = [np.arange(3, 17), np.arange(5, 15), np.arange(3, 25)]
  ds = _sc_with_eos(docs, tiny_vocab, {'inputs': 20, 'targets': 16}, seed=7, noise_density=0.3,
                    mean_noise_span_length=2.0)
  assert_dataset(ds, [  # T5 0.9.4
      {'inputs': [3, 4, 5, 6, 7, 8, 9, 35, 13, 14, 15, 34, 6, 7, 8, 33, 10, 11, 32, 1],
       'targets': [35, 10, 11, 12, 34, 16, 5, 33, 9, 32, 12, 1]},
      {'inputs': [13, 14, 3, 35, 7, 34, 9, 10, 11, 12, 13, 33, 15, 16, 17, 18, 19, 20, 32, 1],
       'targets': [35, 4, 5, 6, 34, 8, 33, 14, 32, 21, 22, 1]},
      {'inputs': [23, 35, 1], 'targets': [35, 24, 1]},
  ])


def test_span_corruption_defaults_match_t5(tiny_vocab):
  docs = [np.arange(3, 17), np.arange(5, 15), np.arange(20, 26)]
  ds = _sc_with_eos(docs, tiny_vocab, {'inputs': 12, 'targets': 4}, seed=7)
  assert_dataset(ds, [  # T5 0.9.4: 12 raw tokens, one span (at the end: random_roll=False)
      {'inputs': [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 35, 1], 'targets': [35, 13, 14, 1]},
      {'inputs': [15, 16, 5, 6, 7, 8, 9, 10, 11, 12, 35, 1], 'targets': [35, 13, 14, 1]},
      {'inputs': [20, 21, 22, 23, 24, 35, 1], 'targets': [35, 25, 1]},
  ])


def _random_docs(n, seed=0):
  rng = np.random.RandomState(seed)
  return [rng.randint(3, 26, size=rng.randint(0, 200)) for _ in range(n)]


def test_span_corruption_reassembles_the_stream_and_fills_inputs(tiny_vocab):
  docs = _random_docs(60)
  examples = list(_sc_with_eos(docs, tiny_vocab, {'inputs': 40, 'targets': 12}, seed=3).as_numpy_iterator())
  stream = []
  for ex in examples:
    inputs, targets = ex['inputs'][:-1], ex['targets'][:-1]
    assert ex['inputs'][-1] == ex['targets'][-1] == 1
    spans = {}  # sentinel -> the tokens it stands for, read off the targets
    for t in targets:
      if t >= 26:
        sentinel, spans[t] = t, []
      else:
        spans[sentinel].append(t)
    assert [t for t in inputs if t >= 26] == list(spans) == list(range(35, 35 - len(spans), -1))
    stream += [x for t in inputs for x in (spans[t] if t >= 26 else [t])]
  assert stream == [t for d in docs for t in d]  # nothing lost, nothing reordered
  lengths = [len(ex['inputs']) for ex in examples]
  assert lengths[:-1] == [40] * (len(lengths) - 1)  # full length but the stream's last piece
  assert max(len(ex['targets']) for ex in examples) <= 12


def test_span_corruption_errors(tiny_vocab):
  docs = _random_docs(2)
  with pytest.raises(ValueError, match='targets of 29 tokens'):
    _sc_with_eos(docs, tiny_vocab, {'inputs': 128, 'targets': 20}, seed=0)
  with pytest.raises(ValueError, match='only 10 sentinels'):  # 568 raw tokens -> 28 spans
    _sc_with_eos(docs, tiny_vocab, {'inputs': 512, 'targets': 114}, seed=0)
  with pytest.raises(ValueError, match='noise_density'):
    _sc_with_eos(docs, tiny_vocab, {'inputs': 20, 'targets': 20}, seed=0, noise_density=1.0)
  no_sentinels = seqio.test_utils.sentencepiece_vocab(extra_ids=0)
  with pytest.raises(vocab_lib.VocabularyError):
    _sc_with_eos(docs, no_sentinels, {'inputs': 20, 'targets': 20}, seed=0)


# --- MLM masking -------------------------------------------------------------------------------------------


def _hybrid(docs, vocab, seed, sequence_length=None, mlm_ratio=0.15):
  sequence_length = sequence_length or {'inputs': 40, 'targets': 12}
  with seqio.map_seed_manager(seed):  # one seed sequence for the whole chain, as in a task
    ds = _sc(docs, vocab, sequence_length)
    return pp.mlm_mask(ds, output_features=_features(vocab), mlm_ratio=mlm_ratio)


def test_mask_tokens_by_hand():
  tokens = tf.constant([5, 6, 35, 7, 8, 34, 9, 1, 0, 0])
  eligible = tf.constant([1, 1, 0, 1, 1, 0, 1, 0, 0, 0]) > 0
  masked, mask = pp.mask_tokens(tokens, eligible, tf.constant([4, 2]), 0.4, mask_id=36)
  masked, mask = masked.numpy(), mask.numpy()
  assert mask.sum() == 2  # round(0.4 * 5)
  assert set(np.flatnonzero(mask)) <= {0, 1, 3, 4, 6}
  assert (masked == np.where(mask == 1, 36, tokens.numpy())).all()
  # Regression pin of which two positions this seed picks (catches silent changes to the use of seeds).
  assert np.flatnonzero(mask).tolist() == PINNED_MASK_POSITIONS


PINNED_MASK_POSITIONS = [0, 1]


def test_mlm_ratio_zero_masks_nothing():
  tokens = tf.constant([5, 6, 7, 1])
  masked, mask = pp.mask_tokens(tokens, tokens > 1, tf.constant([1, 2]), 0.0, mask_id=36)
  assert masked.numpy().tolist() == [5, 6, 7, 1] and mask.numpy().tolist() == [0, 0, 0, 0]


def test_mlm_eligibility(tiny_vocab):
  tokens = tf.constant([5, 25, 26, 35, 36, 1, 0, 2])
  assert pp.mlm_eligible(tokens, tiny_vocab).numpy().tolist() == [1, 1, 0, 0, 0, 0, 0, 1]


@pytest.mark.parametrize('ratio', [0.15, 0.99])
def test_mlm_masks_exactly_round_ratio_of_eligible_tokens(tiny_vocab, ratio):
  docs = _random_docs(25, seed=1)
  mask_id = vocab_lib.mask_id(tiny_vocab)
  plain = list(_sc_with_eos(docs, tiny_vocab, {'inputs': 40, 'targets': 12}, seed=5).as_numpy_iterator())
  hybrid = list(_hybrid(docs, tiny_vocab, seed=5, mlm_ratio=ratio).as_numpy_iterator())
  assert len(plain) == len(hybrid) > 20
  for sc, ex in zip(plain, hybrid):
    assert set(ex) == {'inputs', 'targets', 'inputs_clean', 'mlm_mask'}
    assert ex['mlm_mask'].dtype == np.int32
    np.testing.assert_array_equal(ex['inputs_clean'], sc['inputs'])  # X_c is the SC input, untouched
    np.testing.assert_array_equal(ex['targets'], sc['targets'])
    clean, mask = ex['inputs_clean'], ex['mlm_mask'].astype(bool)
    eligible = (clean != 0) & (clean != 1) & (clean < 26)
    assert mask.sum() == round(ratio * eligible.sum())  # Python's round: half to even
    assert not (mask & ~eligible).any()  # never a sentinel, EOS or padding
    np.testing.assert_array_equal(ex['inputs'], np.where(mask, mask_id, clean))


def test_mlm_positions_are_uniform(tiny_vocab):
  tokens = tf.constant([5] * 20 + [35, 1], tf.int32)
  eligible = pp.mlm_eligible(tokens, tiny_vocab)
  draw = lambda seed: pp.mask_tokens(tokens, eligible, seed, 0.25, 36)[1]
  seeds = tf.stack([tf.range(2000), tf.fill([2000], 9)], axis=1)
  counts = tf.function(lambda ss: tf.map_fn(draw, ss, fn_output_signature=tf.int32))(seeds).numpy().sum(0)
  assert counts[20:].sum() == 0
  # Each of the 20 positions is drawn with probability 5/20; 2000 draws -> 500 +- 19 (binomial sd).
  assert np.abs(counts[:20] - 500).max() < 5 * 19


def test_span_corruption_and_mlm_are_deterministic_per_seed(tiny_vocab):
  docs = _random_docs(10)  # inputs 40: 2 spans (with 1 span the SC mask is fixed: the last tokens)
  run = lambda seed: [{k: v.tolist() for k, v in ex.items()}
                      for ex in _hybrid(docs, tiny_vocab, seed).as_numpy_iterator()]
  first, again, other = run(4), run(4), run(5)
  assert first == again
  for key in ('inputs_clean', 'mlm_mask'):
    assert [ex[key] for ex in first] != [ex[key] for ex in other]


@pytest.mark.parametrize('ratio', [1.0, -0.1, 1.5])
def test_invalid_mlm_ratio(tiny_vocab, ratio):
  with pytest.raises(ValueError, match=r'mlm_ratio must be in \[0, 1\)'):
    _hybrid(_random_docs(2), tiny_vocab, seed=0, mlm_ratio=ratio)


def test_mlm_ratio_from_gin(tiny_vocab):
  docs = _random_docs(10)
  with gin.unlock_config():
    gin.parse_config(['MLM_RATIO = 0.5', 'spactor.preprocessors.mlm_mask.mlm_ratio = %MLM_RATIO'])
  try:
    with seqio.map_seed_manager(0):
      ds = pp.mlm_mask(_sc(docs, tiny_vocab, {'inputs': 40, 'targets': 12}), output_features=_features(tiny_vocab))
    for ex in ds.as_numpy_iterator():
      clean = ex['inputs_clean']
      assert ex['mlm_mask'].sum() == round(0.5 * ((clean > 1) & (clean < 26)).sum())
  finally:
    gin.clear_config()
