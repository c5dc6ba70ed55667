"""SeqIO preprocessors: T5's span corruption, exactly, and SpacTor's token-level MLM masking after it.

Span corruption follows `span_corruption` of the T5 library (t5/data/preprocessors.py) step by step:
select_random_chunk -> reduce_concat_tokens -> split_tokens (to the raw length that random_spans_helper gives)
-> random-span noise mask -> each noise span becomes one sentinel in the inputs, each non-noise span one sentinel
in the targets. Each random step draws its SeqIO map seed at the same place and uses it the same way as T5, so
under `seqio.map_seed_manager(seed)` the examples are T5's own, token for token (tests/test_preprocessors.py
pins outputs produced by the T5 library 0.9.4). EOS is appended afterwards by seqio's append_eos_after_trim.

MLM masking (SpacTor, Section 2.1, Eq. 2) then replaces round(mlm_ratio * n) of the n SC input tokens that are
not sentinels, EOS or padding, drawn uniformly without replacement, by [M] = spactor.vocab.mask_id(vocab).

Randomness is stateless: every draw comes from the per-example seeds of `seqio.map_over_dataset(num_seeds=1)`,
so a dataset built with the same seed yields the same examples.

gin: `spactor.preprocessors.span_corruption.noise_density`, `....mean_noise_span_length`,
`spactor.preprocessors.mlm_mask.mlm_ratio`, `....strategy` (MLM_STRATEGY: 'spanbert' picks SpanBERT's spans instead).
"""
from typing import Mapping, Sequence, Tuple

import gin
import seqio
import tensorflow as tf

from spactor import vocab as vocab_lib
from spactor.span_lengths import (DEFAULT_MEAN_NOISE_SPAN_LENGTH, DEFAULT_MLM_RATIO, DEFAULT_NOISE_DENSITY,
                                  random_spans_helper)

CHUNK_MAX_LENGTH = 65536  # T5's select_random_chunk length in span_corruption
CONCAT_BATCH_SIZE = 128  # T5's reduce_concat_tokens batch in span_corruption


# --- lengths -----------------------------------------------------------------------------------------------


def span_corruption_settings() -> Tuple[float, float]:
  """(noise_density, mean_noise_span_length) as gin binds them for `span_corruption` (else the defaults)."""
  bound = gin.get_bindings(span_corruption)
  return (bound.get('noise_density', DEFAULT_NOISE_DENSITY),
          bound.get('mean_noise_span_length', DEFAULT_MEAN_NOISE_SPAN_LENGTH))


def targets_length_for(inputs_length: int) -> int:
  """Targets length of span corruption for `inputs_length`, under the gin-bound span corruption settings."""
  noise_density, mean_span = span_corruption_settings()
  return random_spans_helper(inputs_length, noise_density, mean_span)[1]


# --- noise mask and sentinels ------------------------------------------------------------------------------


def _random_segmentation(num_items, num_segments, seed):
  """Lengths of `num_segments` positive parts that sum to `num_items`, every such split equally likely.

  A part starts after each of num_segments - 1 of the num_items - 1 gaps, the gaps picked by a stateless shuffle.
  """
  is_start = tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32)
  is_start = tf.concat([[0], seqio.stateless_shuffle(is_start, seed)], axis=0)
  segment_of_item = tf.cumsum(is_start)
  return tf.math.unsorted_segment_sum(tf.ones_like(segment_of_item), segment_of_item, num_segments)


def random_spans_noise_mask(length, noise_density: float, seeds: Sequence[tf.Tensor],
                            mean_noise_span_length: float = DEFAULT_MEAN_NOISE_SPAN_LENGTH) -> tf.Tensor:
  """Boolean [length] mask of alternating non-noise / noise spans, starting non-noise and ending noise.

  num_noise = clip(round(L * density), 1, L - 1) and num_spans = clip(round(num_noise / mean), 1, L - num_noise)
  with L = max(length, 2); the noise and the non-noise tokens are each split into num_spans positive parts uniformly
  at random (seeds[0] and seeds[1]). T5's algorithm with random_roll=False.
  """
  if noise_density == 0.0:
    return tf.zeros([length], tf.bool)
  orig_length = length
  length = tf.maximum(length, 2)  # so there is room for one noise and one non-noise token
  num_noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
  num_noise = tf.clip_by_value(num_noise, 1, length - 1)
  num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length), tf.int32)
  # At least one span, and no more spans than non-noise tokens (T5 fails there; only tiny or dense masks reach it).
  num_spans = tf.clip_by_value(num_spans, 1, length - num_noise)
  noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])
  nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, seeds[1])
  span_ends = tf.cumsum(tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1]))
  span_of_position = tf.searchsorted(span_ends, tf.range(length), side='right')
  return tf.equal(span_of_position % 2, 1)[:orig_length]


def noise_span_to_unique_sentinel(tokens: tf.Tensor, noise_mask: tf.Tensor, vocabulary) -> tf.Tensor:
  """Each run of noise tokens -> one sentinel; the k-th run (from 0) gets vocab_size - 1 - k."""
  prev_is_noise = tf.concat([[False], noise_mask[:-1]], axis=0)
  run_start = tf.logical_and(noise_mask, tf.logical_not(prev_is_noise))
  sentinels = vocabulary.vocab_size - tf.cumsum(tf.cast(run_start, tokens.dtype))
  tokens = tf.where(run_start, sentinels, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(tf.logical_and(noise_mask, prev_is_noise)))


def nonnoise_span_to_unique_sentinel(tokens: tf.Tensor, noise_mask: tf.Tensor, vocabulary) -> tf.Tensor:
  """The targets side: each run of non-noise tokens -> one sentinel."""
  return noise_span_to_unique_sentinel(tokens, tf.logical_not(noise_mask), vocabulary)


# --- the span corruption pipeline --------------------------------------------------------------------------


def _non_empty(feature_key: str):
  return lambda features: tf.size(features[feature_key]) > 0


def select_random_chunk(dataset: tf.data.Dataset, max_length: int = CHUNK_MAX_LENGTH,
                        feature_key: str = 'targets') -> tf.data.Dataset:
  """One random chunk of at most `max_length` tokens per (non-empty) document, at a multiple of max_length.

  Keeps only `feature_key`.
  """
  @seqio.map_over_dataset(num_seeds=1)
  def chunk(features, seed):
    seeds = tf.random.experimental.stateless_split(seed)  # T5 picks the chunk with the second of two seeds
    tokens = features[feature_key]
    num_chunks = tf.cast(tf.math.ceil(tf.cast(tf.size(tokens), tf.float32) / max_length), tf.int32)
    start = max_length * tf.random.stateless_uniform([], maxval=num_chunks, dtype=tf.int32, seed=seeds[1])
    return {feature_key: tokens[start:start + max_length]}

  return chunk(dataset.filter(_non_empty(feature_key)))


def reduce_concat_tokens(dataset: tf.data.Dataset, feature_key: str = 'targets',
                         batch_size: int = CONCAT_BATCH_SIZE) -> tf.data.Dataset:
  """Concatenates each `batch_size` consecutive documents into one token stream (dropping pad ids, as T5)."""
  dataset = dataset.map(lambda x: {feature_key: x[feature_key]}, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.padded_batch(batch_size, padded_shapes={feature_key: [None]})

  def concat(batch):
    tokens = tf.reshape(batch[feature_key], [-1])
    return {feature_key: tf.boolean_mask(tokens, tf.not_equal(tokens, 0))}

  return dataset.map(concat, num_parallel_calls=tf.data.AUTOTUNE)


def split_tokens(dataset: tf.data.Dataset, max_tokens_per_segment: int,
                 feature_key: str = 'targets') -> tf.data.Dataset:
  """Cuts each token stream into pieces of `max_tokens_per_segment` (only the last piece may be shorter)."""
  @seqio.map_over_dataset(num_seeds=1)
  def segments(features, seed):
    # T5 draws a map seed here (used only for random segment lengths, not in span corruption); drawing it too
    # keeps every later seed, and so every example, identical to T5's.
    del seed
    tokens = features[feature_key]
    starts = tf.range(0, tf.size(tokens), max_tokens_per_segment)
    return tf.data.Dataset.from_tensor_slices(starts).map(
        lambda s: {feature_key: tokens[s:s + max_tokens_per_segment]})

  return segments(dataset.filter(_non_empty(feature_key))).flat_map(lambda pieces: pieces)


def corrupt_spans(dataset: tf.data.Dataset, vocabulary, noise_density: float,
                  mean_noise_span_length: float) -> tf.data.Dataset:
  """{'targets': raw tokens} -> {'inputs': tokens with noise spans as sentinels, 'targets': the noise spans}."""
  @seqio.map_over_dataset(num_seeds=1)
  def corrupt(features, seed):
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 6))  # T5's denoise: 6 seeds, mask uses 2
    tokens = features['targets']
    noise_mask = random_spans_noise_mask(tf.size(tokens), noise_density, seeds[:2], mean_noise_span_length)
    return {'inputs': noise_span_to_unique_sentinel(tokens, noise_mask, vocabulary),
            'targets': nonnoise_span_to_unique_sentinel(tokens, noise_mask, vocabulary)}

  return corrupt(dataset)


def _check_settings(noise_density: float, mean_noise_span_length: float) -> None:
  if not 0.0 <= noise_density < 1.0:
    raise ValueError(f'noise_density must be in [0, 1), got {noise_density!r}')
  if mean_noise_span_length <= 0:
    raise ValueError(f'mean_noise_span_length must be positive, got {mean_noise_span_length!r}')


def _check_sentinels(vocabulary, raw_length: int, noise_density: float, mean_span: float) -> None:
  """An error T5 would not raise: it would silently use ordinary pieces as sentinels."""
  vocab_lib.validate(vocabulary)
  max_spans = max(1, int(round(max(1, round(raw_length * noise_density)) / mean_span)))
  if max_spans > vocabulary.extra_ids:
    raise ValueError(f'span corruption of {raw_length} raw tokens makes up to {max_spans} spans but the '
                     f'vocabulary has only {vocabulary.extra_ids} sentinels; shorten the inputs or raise '
                     'mean_noise_span_length')


@gin.configurable
def span_corruption(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature],
                    noise_density: float = DEFAULT_NOISE_DENSITY,
                    mean_noise_span_length: float = DEFAULT_MEAN_NOISE_SPAN_LENGTH) -> tf.data.Dataset:
  """T5's span corruption of tokenized documents in 'targets' -> {'inputs', 'targets'}, before EOS.

  With EOS appended the inputs are exactly sequence_length['inputs'] long (except the last piece of each group
  of 128 concatenated documents).
  """
  _check_settings(noise_density, mean_noise_span_length)
  vocabulary = output_features['targets'].vocabulary
  if 'inputs' in output_features and output_features['inputs'].vocabulary != vocabulary:
    raise ValueError('span corruption needs one vocabulary for inputs and targets')
  raw_length, targets_length = random_spans_helper(sequence_length['inputs'], noise_density,
                                                   mean_noise_span_length)
  if sequence_length['targets'] < targets_length:
    raise ValueError(f'span corruption of inputs length {sequence_length["inputs"]} makes targets of '
                     f'{targets_length} tokens, more than the configured {sequence_length["targets"]}')
  _check_sentinels(vocabulary, raw_length, noise_density, mean_noise_span_length)
  dataset = select_random_chunk(dataset)
  dataset = reduce_concat_tokens(dataset)
  dataset = split_tokens(dataset, raw_length)
  return corrupt_spans(dataset, vocabulary, noise_density, mean_noise_span_length)


# --- SpacTor MLM masking -----------------------------------------------------------------------------------


def mlm_eligible(tokens: tf.Tensor, vocabulary) -> tf.Tensor:
  """True at ordinary pieces: not padding, not EOS, not a sentinel (nor any id at or above the sentinels)."""
  first_sentinel = vocabulary.vocab_size - vocabulary.extra_ids
  special = tf.logical_or(tf.equal(tokens, vocab_lib.PAD_ID), tf.equal(tokens, vocab_lib.EOS_ID))
  return tf.logical_and(tf.logical_not(special), tf.less(tokens, first_sentinel))


def mask_tokens(tokens: tf.Tensor, eligible: tf.Tensor, seed: tf.Tensor, mlm_ratio: float,
                mask_id: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """(tokens with [M] at round(ratio * n_eligible) eligible positions drawn without replacement, int32 0/1 mask).

  Each eligible position gets a uniform score; the q smallest scores are masked, so no position repeats.
  round() halves to even, computed in float64 (as Python's round(mlm_ratio * n)).
  """
  num_eligible = tf.reduce_sum(tf.cast(eligible, tf.int32))
  num_masked = tf.cast(tf.round(tf.cast(num_eligible, tf.float64) * mlm_ratio), tf.int32)
  scores = tf.where(eligible, tf.random.stateless_uniform(tf.shape(tokens), seed=seed), 2.0)
  rank = tf.argsort(tf.argsort(scores, stable=True), stable=True)
  mask = tf.logical_and(eligible, rank < num_masked)
  return tf.where(mask, tf.cast(mask_id, tokens.dtype), tokens), tf.cast(mask, tf.int32)


MLM_STRATEGIES = ('random_tokens', 'spanbert')


@gin.configurable
def mlm_mask(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
             mlm_ratio: float = DEFAULT_MLM_RATIO, strategy: str = 'random_tokens') -> tf.data.Dataset:
  """SC example -> inputs = X_c^MLM, inputs_clean = X_c, mlm_mask (int32, 1 at [M]); targets unchanged.

  Run after EOS is appended (EOS is never masked). strategy (gin macro MLM_STRATEGY): 'random_tokens', the
  paper's uniform tokens (below), or 'spanbert', SpanBERT's whole-word spans (spactor.span_masking).
  """
  if not 0.0 <= mlm_ratio < 1.0:
    raise ValueError(f'mlm_ratio must be in [0, 1), got {mlm_ratio!r}')
  if strategy not in MLM_STRATEGIES:
    raise ValueError(f'MLM_STRATEGY must be one of {MLM_STRATEGIES}, got {strategy!r}')
  if strategy == 'spanbert':
    from spactor import span_masking  # imports this module: load it only when chosen
    return span_masking.span_mlm_mask(dataset, output_features, mlm_ratio)
  vocabulary = output_features['inputs'].vocabulary
  mask_id = vocab_lib.mask_id(vocabulary)

  @seqio.map_over_dataset(num_seeds=1)
  def add_mlm(features, seed):
    clean = features['inputs']
    masked, mask = mask_tokens(clean, mlm_eligible(clean, vocabulary), seed, mlm_ratio, mask_id)
    return {**features, 'inputs': masked, 'inputs_clean': clean, 'mlm_mask': mask}

  return add_mlm(dataset)
