"""SSR span markers and the SSR example format (Zhou et al., Section 3.1).

Markers map into the extra ids of a seqio vocabulary (sentinel k = vocab_size - 1 - k):
  <s_i>  (i = 1..max_spans) = extra id i-1              = vocab_size - i
  </s_i>                    = extra id max_spans + i-1  = vocab_size - max_spans - i
With T5's 100 extra ids and max_spans = 50 both halves fit exactly. `<s_i>` is T5 sentinel i-1, so an SSR target
`<s_1> truth <s_2> truth ...` is written exactly like the T5 span-corruption target the starting checkpoint was
trained to produce; `</s_i>` uses the upper extra ids, which span corruption at length <= 512 never emits (it uses
at most ~30 sentinels).

SSR input:  text with span i as `<s_i> imperfect_i </s_i>`;  SSR target: `<s_1> truth_1 <s_2> truth_2 ...`.
Downstream (fine-tuning) example for an SSR model: input `<s_1> whole input </s_1>`, target `<s_1> output`.
EOS is appended by the task (seqio convention).
"""
import dataclasses

import numpy as np
import seqio
import tensorflow as tf

from ssr import masking


@dataclasses.dataclass(frozen=True)
class SpanMarkers:
  """Ids of `<s_i>` / `</s_i>` inside a vocabulary of `vocab_size` ids whose last `extra_ids` are extra ids."""
  vocab_size: int
  extra_ids: int = 100
  max_spans: int = 50

  def __post_init__(self):
    if 2 * self.max_spans > self.extra_ids:
      raise ValueError(f"{self.max_spans} marker pairs need {2 * self.max_spans} extra ids; the vocabulary has "
                       f"{self.extra_ids}.")

  def open(self, i):
    """Id of `<s_{i+1}>` (i counts from 0): T5 sentinel i."""
    self._check(i)
    return masking.sentinel_id(self.vocab_size, i)

  def close(self, i):
    """Id of `</s_{i+1}>` (i counts from 0): T5 sentinel max_spans + i."""
    self._check(i)
    return masking.sentinel_id(self.vocab_size, self.max_spans + i)

  def _check(self, i):
    if not 0 <= i < self.max_spans:
      raise ValueError(f"span index {i} is outside [0, {self.max_spans}): SSR marks at most {self.max_spans} spans.")


def span_markers(vocab: seqio.SentencePieceVocabulary, max_spans=50) -> SpanMarkers:
  return SpanMarkers(vocab_size=vocab.vocab_size, extra_ids=vocab.extra_ids, max_spans=max_spans)


def ssr_example(tokens, starts, lengths, fills, markers: SpanMarkers):
  """Builds one SSR example (without EOS) from raw tokens, spans and the generator's fills.

  Args:
    tokens: int [L] raw tokens.
    starts, lengths: int [n] spans, sorted and non-adjacent (see ssr.masking.random_spans).
    fills: n int sequences, the imperfect text generated for each span.
    markers: the marker ids.

  Returns:
    (inputs, targets) int32 numpy arrays.
  """
  tokens = np.asarray(tokens)
  if len(starts) != len(lengths) or len(starts) != len(fills):
    raise ValueError(f"{len(starts)} starts, {len(lengths)} lengths and {len(fills)} fills must agree.")
  inputs, targets, cursor = [], [], 0
  for i, (start, length, fill) in enumerate(zip(starts, lengths, fills)):
    inputs += [tokens[cursor:start], [markers.open(i)], fill, [markers.close(i)]]
    targets += [[markers.open(i)], tokens[start:start + length]]
    cursor = start + length
  inputs.append(tokens[cursor:])
  return (np.concatenate(inputs).astype(np.int32) if inputs else np.zeros([0], np.int32),
          np.concatenate(targets).astype(np.int32) if targets else np.zeros([0], np.int32))


def downstream_example(inputs, targets, markers: SpanMarkers):
  """Fine-tuning format of an SSR model: (`<s_1> inputs </s_1>`, `<s_1> targets`). numpy arrays or tf tensors."""
  if isinstance(inputs, tf.Tensor):
    opening = tf.constant([markers.open(0)], inputs.dtype)
    closing = tf.constant([markers.close(0)], inputs.dtype)
    return tf.concat([opening, inputs, closing], 0), tf.concat([tf.cast(opening, targets.dtype), targets], 0)
  return (np.concatenate([[markers.open(0)], np.asarray(inputs), [markers.close(0)]]).astype(np.int32),
          np.concatenate([[markers.open(0)], np.asarray(targets)]).astype(np.int32))


def strip_output_marker(decoded, markers: SpanMarkers):
  """Drops the leading `<s_1>` of an SSR model's output, if present (numpy)."""
  decoded = np.asarray(decoded)
  return decoded[1:] if decoded.size and decoded[0] == markers.open(0) else decoded


def distill_example(ssr_inputs, markers: SpanMarkers):
  """DistilT5's example from an SSR input (tf, int): T5 infilling with the generator's fills as the target.

  `<s_i>` is T5 sentinel i-1, so the infilling input is the SSR input without the fills and closing markers, and
  the target is each `<s_i>` followed by its fill: (`kept <s_1> kept <s_2> ...`, `<s_1> fill_1 <s_2> fill_2 ...`).
  """
  opens = tf.range(markers.vocab_size - markers.max_spans, markers.vocab_size, dtype=ssr_inputs.dtype)
  closes = opens - markers.max_spans
  is_open = tf.reduce_any(ssr_inputs[:, None] == opens[None, :], axis=1)
  is_close = tf.reduce_any(ssr_inputs[:, None] == closes[None, :], axis=1)
  inside = tf.cumsum(tf.cast(is_open, tf.int32)) - tf.cumsum(tf.cast(is_close, tf.int32)) > 0
  fill = inside & ~is_open
  return (tf.boolean_mask(ssr_inputs, ~inside & ~is_close | is_open),
          tf.boolean_mask(ssr_inputs, is_open | fill))


def trim_for_markers(features, sequence_length, output_features):
  """Trims `inputs` and `targets` so that, wrapped and with EOS, they fit `sequence_length`.

  The input loses its end, never its closing `</s_1>`: room is kept for the 2 markers (1 on the target) and for
  EOS where the feature adds it.
  """
  out = dict(features)
  if not sequence_length:
    return out
  for key, markers in (("inputs", 2), ("targets", 1)):
    length = sequence_length.get(key)
    if length is None:
      continue
    room = length - markers - int(output_features[key].add_eos)
    if room < 0:
      raise ValueError(f"a {key} length of {length} leaves no room for the SSR markers")
    out[key] = features[key][:room]
  return out


def ssr_downstream(dataset, sequence_length=None, output_features=None, max_spans=50):
  """SeqIO preprocessor for fine-tuning an SSR model on a seq2seq task: see `downstream_example`.

  Place it after tokenization and before `append_eos_after_trim`. It trims first (to the task's lengths, less the
  markers and EOS) and then wraps, so a long input keeps its closing `</s_1>`.
  """
  markers = span_markers(output_features["inputs"].vocabulary, max_spans)

  def wrap(features):
    features = trim_for_markers(features, sequence_length, output_features)
    features["inputs"], features["targets"] = downstream_example(features["inputs"], features["targets"], markers)
    return features
  return dataset.map(wrap, num_parallel_calls=tf.data.AUTOTUNE)
