"""SSR markers and example format: exact outputs on tiny inputs."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from ssr import formatting

# A vocabulary of 1000 ids whose last 100 are extra ids: <s_i> = 1000 - i, </s_i> = 950 - i.
MARKERS = formatting.SpanMarkers(vocab_size=1000)


def test_marker_ids():
  assert [MARKERS.open(i) for i in (0, 1, 49)] == [999, 998, 950]
  assert [MARKERS.close(i) for i in (0, 1, 49)] == [949, 948, 900]
  with pytest.raises(ValueError, match="at most 50 spans"):
    MARKERS.open(50)
  with pytest.raises(ValueError, match="need 120 extra ids"):
    formatting.SpanMarkers(vocab_size=1000, max_spans=60)


def test_public_t5_vocabulary_layout():
  # seqio's vocabulary for the public T5 model: 32000 pieces + 100 extra ids.
  markers = formatting.SpanMarkers(vocab_size=32100)
  assert markers.open(0) == 32099  # <extra_id_0>
  assert markers.close(0) == 32049  # <extra_id_50>
  assert markers.open(49) == 32050 and markers.close(49) == 32000  # <extra_id_49>, <extra_id_99>


def test_ssr_example_exact():
  tokens = np.arange(10, 20)
  # span 0 = [11, 12] filled with [7]; span 1 = insertion point before 15 filled with [8, 8]; span 2 = [18] -> [].
  inputs, targets = formatting.ssr_example(tokens, [1, 5, 8], [2, 0, 1], [[7], [8, 8], []], MARKERS)
  np.testing.assert_array_equal(inputs, [10, 999, 7, 949, 13, 14, 998, 8, 8, 948, 15, 16, 17, 997, 947, 19])
  np.testing.assert_array_equal(targets, [999, 11, 12, 998, 997, 18])
  assert inputs.dtype == np.int32 and targets.dtype == np.int32


def test_ssr_example_span_at_start_and_end():
  inputs, targets = formatting.ssr_example(np.array([1, 2, 3]), [0, 3], [1, 0], [[5], [6]], MARKERS)
  np.testing.assert_array_equal(inputs, [999, 5, 949, 2, 3, 998, 6, 948])
  np.testing.assert_array_equal(targets, [999, 1, 998])


def test_ssr_target_is_the_t5_infilling_target():
  """<s_i> is sentinel i-1, so the SSR target equals the generator's T5 target for the same spans."""
  from ssr import masking
  tokens = np.arange(10, 30)
  starts, lengths = np.array([1, 2, 7, 15]), np.array([0, 3, 1, 2])
  _, targets = formatting.ssr_example(tokens, starts, lengths, [[1]] * 4, MARKERS)
  t5_targets = masking.span_contents(tf.constant(tokens), starts, lengths, masking.sentinel_ids(1000, 4))
  np.testing.assert_array_equal(targets, t5_targets)


def test_mismatched_fills_raise():
  with pytest.raises(ValueError, match="must agree"):
    formatting.ssr_example(np.arange(5), [1], [1], [[1], [2]], MARKERS)


def test_downstream_example_numpy_and_tf():
  inputs, targets = formatting.downstream_example(np.array([5, 6, 7]), np.array([8, 9]), MARKERS)
  np.testing.assert_array_equal(inputs, [999, 5, 6, 7, 949])
  np.testing.assert_array_equal(targets, [999, 8, 9])
  tf_inputs, tf_targets = formatting.downstream_example(tf.constant([5, 6, 7]), tf.constant([8, 9]), MARKERS)
  np.testing.assert_array_equal(tf_inputs, inputs)
  np.testing.assert_array_equal(tf_targets, targets)
  np.testing.assert_array_equal(formatting.strip_output_marker([999, 8, 9], MARKERS), [8, 9])
  np.testing.assert_array_equal(formatting.strip_output_marker([8, 9], MARKERS), [8, 9])


def test_downstream_preprocessor():
  vocab = seqio.PassThroughVocabulary(size=900, eos_id=1)
  vocab._extra_ids = 100  # as seqio.SentencePieceVocabulary(extra_ids=100): vocab_size 1000
  features = {"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)}
  ds = tf.data.Dataset.from_tensors({"inputs": tf.constant([5, 6]), "targets": tf.constant([7])})
  ds = formatting.ssr_downstream(ds, output_features=features)
  ds = seqio.preprocessors.append_eos_after_trim(ds, output_features=features)
  ex = next(ds.as_numpy_iterator())
  np.testing.assert_array_equal(ex["inputs"], [999, 5, 6, 949, 1])
  np.testing.assert_array_equal(ex["targets"], [999, 7, 1])


def _downstream(inputs, targets, sequence_length):
  vocab = seqio.PassThroughVocabulary(size=900, eos_id=1)
  vocab._extra_ids = 100
  features = {"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)}
  ds = tf.data.Dataset.from_tensors({"inputs": tf.constant(inputs), "targets": tf.constant(targets)})
  ds = formatting.ssr_downstream(ds, sequence_length=sequence_length, output_features=features)
  ds = seqio.preprocessors.append_eos_after_trim(ds, sequence_length=sequence_length, output_features=features)
  return next(ds.as_numpy_iterator())


def test_downstream_long_input_keeps_its_closing_marker():
  """Trim first, then wrap: the input loses its end, never `</s_1>`; the target keeps `<s_1>`."""
  ex = _downstream(np.arange(10, 30), np.arange(40, 50), {"inputs": 8, "targets": 5})
  np.testing.assert_array_equal(ex["inputs"], [999, 10, 11, 12, 13, 14, 949, 1])
  np.testing.assert_array_equal(ex["targets"], [999, 40, 41, 42, 1])
  short = _downstream([5, 6], [7], {"inputs": 8, "targets": 5})  # short ones are left whole
  np.testing.assert_array_equal(short["inputs"], [999, 5, 6, 949, 1])
  np.testing.assert_array_equal(short["targets"], [999, 7, 1])
  exact = _downstream(np.arange(10, 15), [7], {"inputs": 8, "targets": 5})  # 5 + 2 markers + EOS = 8: no cut
  np.testing.assert_array_equal(exact["inputs"], [999, 10, 11, 12, 13, 14, 949, 1])
  with pytest.raises(ValueError, match="no room for the SSR markers"):
    _downstream([5], [7], {"inputs": 2, "targets": 5})


def test_distill_example_is_t5_infilling_of_the_generators_fills():
  """DistilT5: the SSR input without fills and closing markers -> `<s_i> fill_i ...` (`<s_i>` is sentinel i-1)."""
  tokens = np.arange(10, 20)
  fills = [[7], [8, 8], []]
  ssr_inputs, _ = formatting.ssr_example(tokens, [1, 5, 8], [2, 0, 1], fills, MARKERS)
  inputs, targets = formatting.distill_example(tf.constant(ssr_inputs), MARKERS)
  np.testing.assert_array_equal(inputs, [10, 999, 13, 14, 998, 15, 16, 17, 997, 19])
  np.testing.assert_array_equal(targets, [999, 7, 998, 8, 8, 997])
  from ssr import masking  # the input is the generator's own: T5 infilling with sentinels
  generator_inputs = masking.replace_spans(tf.constant(tokens), [1, 5, 8], [2, 0, 1], masking.sentinel_ids(1000, 3))
  np.testing.assert_array_equal(inputs, generator_inputs)
