"""SpacTorFeatureConverter: seqio's EncDecFeatureConverter plus the two MLM features of the hybrid task.

Task features  : inputs (X_c^MLM), targets, inputs_clean (X_c), mlm_mask
Model features : EncDecFeatureConverter's (encoder_input_tokens, decoder_target_tokens, decoder_input_tokens,
                 decoder_loss_weights [+ segment ids and positions when packed]) plus
                 encoder_clean_tokens <- inputs_clean and encoder_mlm_mask <- mlm_mask.

inputs_clean and mlm_mask are as long as inputs, position for position, so they are padded and packed with it
(seqio packs all features of an example together, so the three stay aligned). Their lengths default to the
inputs length: task_feature_lengths may name only inputs and targets. Packing needs care: see _pack_or_pad.
"""
from typing import Mapping

import seqio
import tensorflow as tf

_ALIGNED_WITH_INPUTS = {'inputs_clean': 'encoder_clean_tokens', 'mlm_mask': 'encoder_mlm_mask'}


def with_mlm_lengths(task_feature_lengths: Mapping[str, int]) -> dict:
  """Adds inputs_clean / mlm_mask lengths equal to inputs; ValueError if given ones differ from it."""
  lengths = dict(task_feature_lengths)
  for key in _ALIGNED_WITH_INPUTS:
    lengths.setdefault(key, lengths['inputs'])
    if lengths[key] != lengths['inputs']:
      raise ValueError(f'{key} must be as long as inputs ({lengths["inputs"]}), got {lengths[key]}')
  return lengths


class SpacTorFeatureConverter(seqio.EncDecFeatureConverter):
  """EncDecFeatureConverter that also passes X_c and the MLM mask to the model (packed or padded)."""

  TASK_FEATURES = {
      **seqio.EncDecFeatureConverter.TASK_FEATURES,
      'inputs_clean': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      'mlm_mask': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
      **seqio.EncDecFeatureConverter.MODEL_FEATURES,
      'encoder_clean_tokens': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
      'encoder_mlm_mask': seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    """seqio's conversion and checks, after filling in the lengths of the features aligned with inputs."""
    return super().__call__(ds, with_mlm_lengths(task_feature_lengths))

  def _pack_or_pad(self, ds: tf.data.Dataset, packed_lengths: Mapping[str, int]) -> tf.data.Dataset:
    """seqio's packing takes an example's length to be its count of non-zero values, which would cut the
    mostly-zero mlm_mask short; so it travels as mlm_mask + 1 and is shifted back (padding stays 0)."""
    ds = ds.map(lambda ex: {**ex, 'mlm_mask': ex['mlm_mask'] + 1}, num_parallel_calls=tf.data.AUTOTUNE)
    ds = super()._pack_or_pad(ds, packed_lengths)
    return ds.map(lambda ex: {**ex, 'mlm_mask': tf.maximum(ex['mlm_mask'] - 1, 0)},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    converted = dict(super()._convert_example(features))
    for task_key, model_key in _ALIGNED_WITH_INPUTS.items():
      converted[model_key] = features[task_key]
    return converted

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    lengths = with_mlm_lengths(task_feature_lengths)
    model_lengths = dict(super().get_model_feature_lengths(lengths))
    for task_key, model_key in _ALIGNED_WITH_INPUTS.items():
      model_lengths[model_key] = lengths[task_key]
    return model_lengths
