"""SSR span masking (Zhou et al., Section 3.1), as a stateless SeqIO preprocessor.

Span lengths are drawn from Poisson(lambda) until about `noise_density` of the tokens are masked; a 0-length span is
an insertion point. Spans never touch: between two spans there is at least one kept token. Placement is uniform:
the n spans go into n distinct slots among the U+1 gaps around the U kept tokens.

A span is (start, length) into the raw token sequence; spans are sorted by start. From the spans the preprocessor
builds the generator's T5 infilling example: `inputs` holds the text with span i replaced by T5 sentinel i (an
insertion point gets a sentinel too), `targets` is `<sentinel_0> truth_0 <sentinel_1> truth_1 ...`. EOS is left to
seqio's `append_eos_after_trim`, as for every task of this project.
"""
import seqio
import tensorflow as tf

DEFAULT_NOISE_DENSITY = 0.3
DEFAULT_MEAN_SPAN_LENGTH = 3.0
DEFAULT_MAX_SPANS = 50


def random_spans(length, seeds, noise_density=DEFAULT_NOISE_DENSITY, mean_span_length=DEFAULT_MEAN_SPAN_LENGTH,
                 max_spans=DEFAULT_MAX_SPANS):
  """Draws SSR spans for a sequence of `length` tokens.

  Args:
    length: scalar int, number of tokens (>= 1).
    seeds: int32 [3, 2] stateless seeds (span lengths, length order, placement).
    noise_density: target share of masked tokens.
    mean_span_length: the Poisson rate lambda of the span lengths.
    max_spans: at most this many spans (one marker pair each); when it binds, fewer tokens are masked.

  Returns:
    (starts, lengths): int32 [n] each, sorted by start; starts[i+1] > starts[i] + lengths[i].
  """
  length = tf.cast(length, tf.int32)
  num_noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
  num_noise = tf.clip_by_value(num_noise, tf.minimum(1, length - 1), tf.maximum(length - 1, 0))

  draws = tf.random.stateless_poisson([max_spans], seeds[0], mean_span_length, dtype=tf.int32)
  cumsum = tf.cumsum(draws)
  # The first draw that reaches num_noise closes the list; it is trimmed so that exactly num_noise are masked.
  reached = cumsum >= num_noise
  num_spans = tf.where(tf.reduce_any(reached), tf.argmax(tf.cast(reached, tf.int32), output_type=tf.int32) + 1,
                       max_spans)
  lengths = draws[:num_spans]
  lengths = tf.minimum(lengths, num_noise - (cumsum[:num_spans] - lengths))
  # n spans need n distinct slots among the U+1 gaps of the U kept tokens.
  num_spans = tf.minimum(num_spans, length - tf.reduce_sum(lengths) + 1)
  lengths = lengths[:num_spans]
  # The trimmed draw is the last one; shuffle so that short spans are not always at the end of the text.
  lengths = tf.gather(lengths, tf.argsort(tf.random.stateless_uniform([num_spans], seeds[1])))

  num_kept = length - tf.reduce_sum(lengths)
  slots = tf.argsort(tf.random.stateless_uniform([num_kept + 1], seeds[2]))[:num_spans]
  slots = tf.sort(tf.cast(slots, tf.int32))
  starts = slots + tf.cumsum(lengths, exclusive=True)
  return starts, lengths


def noise_mask(length, starts, lengths):
  """bool [length]: True where a token lies inside a span."""
  starts, lengths = tf.cast(starts, tf.int32), tf.cast(lengths, tf.int32)
  positions = tf.range(length)
  span = tf.searchsorted(starts, positions, side="right") - 1
  end = tf.gather(starts + lengths, tf.maximum(span, 0))
  return (span >= 0) & (positions < end)


def _interleave(tokens, take, starts, span_ids):
  """The tokens where `take` holds, with span_ids[i] placed just before position starts[i], in text order."""
  positions = tf.range(tf.size(tokens))
  starts = tf.cast(starts, tf.int32)
  # Sort key: a marker at 2*start sorts before a token at its start (2*p+1), which matters for empty spans.
  keys = tf.concat([2 * positions[take] + 1, 2 * starts], 0)
  items = tf.concat([tokens[take], tf.cast(span_ids, tokens.dtype)], 0)
  return tf.gather(items, tf.argsort(keys, stable=True))


def replace_spans(tokens, starts, lengths, span_ids):
  """The kept tokens with `span_ids[i]` standing where span i was (T5 infilling inputs)."""
  return _interleave(tokens, ~noise_mask(tf.size(tokens), starts, lengths), starts, span_ids)


def span_contents(tokens, starts, lengths, span_ids):
  """`span_ids[0] truth_0 span_ids[1] truth_1 ...`: each span's tokens after its marker (T5 infilling targets)."""
  return _interleave(tokens, noise_mask(tf.size(tokens), starts, lengths), starts, span_ids)


def sentinel_id(vocab_size, k):
  """T5 sentinel k of a seqio vocabulary with extra ids (ints, numpy, jnp or tf): vocab_size - 1 - k."""
  return vocab_size - 1 - k


def sentinel_ids(vocab_size, num_spans):
  """T5 sentinels 0..num_spans-1 (tf)."""
  return sentinel_id(vocab_size, tf.range(num_spans))


@seqio.map_over_dataset(num_seeds=3)
def ssr_span_mask(features, seeds, output_features, noise_density=DEFAULT_NOISE_DENSITY,
                  mean_span_length=DEFAULT_MEAN_SPAN_LENGTH, max_spans=DEFAULT_MAX_SPANS, input_feature_key="targets"):
  """SeqIO preprocessor: masks SSR spans in `features[input_feature_key]` (raw tokens without EOS).

  Output features: `tokens` (the raw tokens), `span_starts`, `span_lengths` (int32 [n]), and the generator's T5
  infilling example `inputs` / `targets` (T5 sentinels from the vocabulary of output_features["targets"]).
  Deterministic per example: seqio derives the seeds statelessly from the task seed.
  """
  tokens = features[input_feature_key]
  starts, lengths = random_spans(tf.size(tokens), seeds, noise_density, mean_span_length, max_spans)
  sentinels = sentinel_ids(output_features["targets"].vocabulary.vocab_size, tf.size(starts))
  return {
      "tokens": tokens,
      "span_starts": starts,
      "span_lengths": lengths,
      "inputs": replace_spans(tokens, starts, lengths, sentinels),
      "targets": span_contents(tokens, starts, lengths, sentinels),
  }
