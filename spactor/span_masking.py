"""SpanBERT's span masking (Joshi et al. 2020, Section 3.1) as the way SpacTor's stage 1 picks the [M] positions.

Selected with the gin macro MLM_STRATEGY = 'spanbert' (gin/objectives/spactor.gin; the default 'random_tokens' is
the SpacTor paper's token-level masking, spactor.preprocessors.mask_tokens). On the span-corrupted inputs:
- words: a word is a run of ordinary pieces that starts at a piece beginning with '▁' (SentencePiece's word
  boundary) or right after a token that cannot be masked (a sentinel, EOS, padding); only whole words are masked;
- spans: repeatedly, a span length in words is drawn from a geometric distribution (p = 0.2) truncated to at most
  10 words and renormalized (SpanBERT's code; its mean is 3.80 words, the paper's "clipped at 10" figure) and a
  start word uniformly; the span's words are masked in order, never across a sentinel, while they fit in the
  budget; a start word already masked is skipped, as in SpanBERT;
- budget: round(mlm_ratio * eligible tokens), the same count as the random-token strategy and never more, so
  the trainer's static bound on [M] positions (`max_mlm_positions`) holds unchanged; a span stops at the first
  word that does not fit (whole words only), so a row may end a few tokens short of the budget;
- replacement, per span as SpanBERT: 80% of the spans become [M], 10% random ordinary pieces, 10% keep their
  tokens.

The replacement applies to the generator's input (`inputs`, X_c^MLM): the generator is the model that predicts
the selected tokens, as SpanBERT's encoder is. `mlm_mask` marks every selected position, whatever its
replacement: the generator's loss covers all of them (SpanBERT's MLM loss does), and the discriminator sees the
generator's sample at each of them (ELECTRA and SpacTor fill every selected position). A kept or randomly
replaced span thus still reaches D as a generator sample; only G's view of it differs.

Randomness is stateless (the per-example seeds of seqio.map_over_dataset), as the other preprocessors.
"""
from typing import Mapping, Tuple

import numpy as np
import seqio
import tensorflow as tf

from spactor import vocab as vocab_lib

GEOMETRIC_P = 0.2
MAX_SPAN_WORDS = 10
MASK_SPANS, RANDOM_SPANS = 0.8, 0.1  # fractions of spans; the other 0.1 keep their tokens
MODE_NONE, MODE_MASK, MODE_RANDOM, MODE_KEEP = 0, 1, 2, 3
WORD_START = '\u2581'  # SentencePiece's '▁'


def span_length_probabilities(p: float = GEOMETRIC_P, max_words: int = MAX_SPAN_WORDS) -> np.ndarray:
  """P(span = k words), k = 1..max_words: Geo(p) truncated at max_words and renormalized."""
  weights = p * (1.0 - p) ** np.arange(max_words)
  return weights / weights.sum()


def mean_span_length(p: float = GEOMETRIC_P, max_words: int = MAX_SPAN_WORDS) -> float:
  return float(np.dot(np.arange(1, max_words + 1), span_length_probabilities(p, max_words)))


def word_start_table(vocabulary: seqio.SentencePieceVocabulary) -> np.ndarray:
  """bool [vocab_size + 1]: True at pieces that begin a word ('▁...'); sentinels and [M] are False."""
  pieces = vocabulary.vocab_size - vocabulary.extra_ids
  processor = vocabulary.tokenizer
  table = np.zeros(vocabulary.vocab_size + 1, bool)
  table[:pieces] = [processor.id_to_piece(i).startswith(WORD_START) for i in range(pieces)]
  return table


def word_ids(eligible: tf.Tensor, is_word_start: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """(word index of each token, -1 where not eligible; number of words; segment index of each token).

  Segments are the runs between ineligible tokens (sentinels, EOS): spans never cross them.
  """
  previous_eligible = tf.concat([[False], eligible[:-1]], axis=0)
  starts = tf.logical_and(eligible, tf.logical_or(is_word_start, tf.logical_not(previous_eligible)))
  word = tf.cumsum(tf.cast(starts, tf.int32)) - 1
  segment = tf.cumsum(tf.cast(tf.logical_not(eligible), tf.int32))
  return tf.where(eligible, word, -1), tf.reduce_sum(tf.cast(starts, tf.int32)), segment


def select_spans(eligible: tf.Tensor, is_word_start: tf.Tensor, seed: tf.Tensor, mlm_ratio: float,
                 p: float = GEOMETRIC_P, max_words: int = MAX_SPAN_WORDS) -> Tuple[tf.Tensor, tf.Tensor]:
  """(mode of each token: MODE_NONE or the replacement of its span; span index of each token, -1 if none).

  The while loop draws one span per iteration from a pre-drawn table of uniforms; at most 4 * budget + 16
  iterations (a start word already masked costs one), far more than a row needs.
  """
  word, num_words, segment = word_ids(eligible, is_word_start)
  length = tf.shape(eligible)[0]
  budget = tf.cast(tf.round(tf.cast(tf.reduce_sum(tf.cast(eligible, tf.int32)), tf.float64) * mlm_ratio), tf.int32)
  max_iterations = 4 * budget + 16
  draws = tf.random.stateless_uniform([max_iterations, 3], seed=seed, dtype=tf.float32)
  cdf = tf.constant(np.cumsum(span_length_probabilities(p, max_words))[:-1], tf.float32)
  word_or_end = tf.where(eligible, word, num_words)  # ineligible tokens go to an extra, unused segment
  segment_of_word = tf.math.unsorted_segment_max(segment, word_or_end, num_words + 1)

  def body(i, count, mode, span):
    u_length, u_start, u_mode = draws[i, 0], draws[i, 1], draws[i, 2]
    words = 1 + tf.reduce_sum(tf.cast(cdf < u_length, tf.int32))
    start = tf.minimum(tf.cast(u_start * tf.cast(num_words, tf.float32), tf.int32), num_words - 1)
    start_free = tf.logical_not(tf.reduce_any(tf.logical_and(tf.equal(word, start), mode > MODE_NONE)))
    in_span = tf.logical_and(tf.logical_and(word >= start, word < start + words),
                             tf.logical_and(tf.equal(segment, segment_of_word[start]), tf.equal(mode, MODE_NONE)))
    in_span = tf.logical_and(in_span, start_free)
    cumulative = tf.cumsum(tf.cast(in_span, tf.int32))
    word_end = tf.math.unsorted_segment_max(tf.where(in_span, cumulative, 0), word_or_end, num_words + 1)
    # Whole words, in order: a word fits when the span's tokens up to its end fit in what is left of the budget;
    # those counts grow word by word, so the span stops at the first word that does not fit.
    fits = tf.logical_and(in_span, tf.gather(word_end, word_or_end) <= budget - count)
    replacement = tf.where(u_mode < MASK_SPANS, MODE_MASK, tf.where(u_mode < MASK_SPANS + RANDOM_SPANS,
                                                                     MODE_RANDOM, MODE_KEEP))
    mode = tf.where(fits, replacement, mode)
    span = tf.where(fits, i, span)
    return i + 1, count + tf.reduce_sum(tf.cast(fits, tf.int32)), mode, span

  def keep_going(i, count, mode, span):
    return tf.logical_and(tf.logical_and(i < max_iterations, count < budget), num_words > 0)

  _, _, mode, span = tf.while_loop(keep_going, body, (tf.constant(0), tf.constant(0),
                                                      tf.zeros([length], tf.int32), -tf.ones([length], tf.int32)))
  return mode, span


def replace(tokens: tf.Tensor, mode: tf.Tensor, seed: tf.Tensor, mask_id: int, random_low: int,
            random_high: int) -> tf.Tensor:
  """The generator's input: [M] for MODE_MASK, a uniform piece in [random_low, random_high) for MODE_RANDOM."""
  random_tokens = tf.random.stateless_uniform(tf.shape(tokens), seed=seed, minval=random_low, maxval=random_high,
                                              dtype=tf.int32)
  out = tf.where(tf.equal(mode, MODE_MASK), tf.cast(mask_id, tokens.dtype), tokens)
  return tf.where(tf.equal(mode, MODE_RANDOM), tf.cast(random_tokens, tokens.dtype), out)


def span_mlm_mask(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
                  mlm_ratio: float) -> tf.data.Dataset:
  """SC example -> inputs (X_c^MLM with SpanBERT spans), inputs_clean, mlm_mask; the features of mlm_mask."""
  from spactor.preprocessors import mlm_eligible  # noqa: the shared definition of a maskable token
  vocabulary = output_features['inputs'].vocabulary
  mask_id = vocab_lib.mask_id(vocabulary)
  table = tf.constant(word_start_table(vocabulary))
  first_sentinel = vocabulary.vocab_size - vocabulary.extra_ids
  first_piece = vocab_lib.UNK_ID + 1

  @seqio.map_over_dataset(num_seeds=2)
  def add_mlm(features, seeds):
    clean = features['inputs']
    eligible = mlm_eligible(clean, vocabulary)
    starts = tf.gather(table, tf.clip_by_value(tf.cast(clean, tf.int32), 0, mask_id))
    mode, _ = select_spans(eligible, starts, seeds[0], mlm_ratio)
    masked = replace(clean, mode, seeds[1], mask_id, first_piece, first_sentinel)
    return {**features, 'inputs': masked, 'inputs_clean': clean, 'mlm_mask': tf.cast(mode > MODE_NONE, tf.int32)}

  return add_mlm(dataset)
