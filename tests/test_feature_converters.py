"""SpacTorFeatureConverter: EncDecFeatureConverter's features plus encoder_clean_tokens / encoder_mlm_mask."""
import pytest
import seqio
import tensorflow as tf
from seqio.test_utils import assert_dataset

from spactor.feature_converters import SpacTorFeatureConverter

M = 36  # [M]


def _examples():
  # mlm_mask starts with 0 and has few 1s: seqio's packer would cut it short if it were packed as is.
  return [
      {'inputs': [7, M, 5, 1], 'inputs_clean': [7, 8, 5, 1], 'mlm_mask': [0, 1, 0, 0], 'targets': [3, 9, 1]},
      {'inputs': [M, 4, 9, 3, 1], 'inputs_clean': [8, 4, 9, 3, 1], 'mlm_mask': [1, 0, 0, 0, 0], 'targets': [4, 1]},
  ]


def _dataset(examples=None):
  return seqio.test_utils.create_default_dataset(
      examples or _examples(), feature_names=('inputs', 'inputs_clean', 'mlm_mask', 'targets'))


def test_padded():
  converted = SpacTorFeatureConverter(pack=False)(_dataset(), {'inputs': 6, 'targets': 4})
  assert_dataset(converted, [
      {'encoder_input_tokens': [7, M, 5, 1, 0, 0], 'encoder_clean_tokens': [7, 8, 5, 1, 0, 0],
       'encoder_mlm_mask': [0, 1, 0, 0, 0, 0], 'decoder_target_tokens': [3, 9, 1, 0],
       'decoder_input_tokens': [0, 3, 9, 1], 'decoder_loss_weights': [1, 1, 1, 0]},
      {'encoder_input_tokens': [M, 4, 9, 3, 1, 0], 'encoder_clean_tokens': [8, 4, 9, 3, 1, 0],
       'encoder_mlm_mask': [1, 0, 0, 0, 0, 0], 'decoder_target_tokens': [4, 1, 0, 0],
       'decoder_input_tokens': [0, 4, 1, 0], 'decoder_loss_weights': [1, 1, 0, 0]},
  ])


def test_packed_keeps_the_three_encoder_features_aligned():
  converted = SpacTorFeatureConverter(pack=True)(_dataset(), {'inputs': 10, 'targets': 7})
  assert_dataset(converted, {
      'encoder_input_tokens': [7, M, 5, 1, M, 4, 9, 3, 1, 0],
      'encoder_clean_tokens': [7, 8, 5, 1, 8, 4, 9, 3, 1, 0],
      'encoder_mlm_mask': [0, 1, 0, 0, 1, 0, 0, 0, 0, 0],
      'encoder_segment_ids': [1, 1, 1, 1, 2, 2, 2, 2, 2, 0],
      'encoder_positions': [0, 1, 2, 3, 0, 1, 2, 3, 4, 0],
      'decoder_target_tokens': [3, 9, 1, 4, 1, 0, 0],
      'decoder_input_tokens': [0, 3, 9, 0, 4, 0, 0],
      'decoder_loss_weights': [1, 1, 1, 1, 1, 0, 0],
      'decoder_segment_ids': [1, 1, 1, 2, 2, 0, 0],
      'decoder_positions': [0, 1, 2, 0, 1, 0, 0],
  })


@pytest.mark.parametrize('pack', [False, True])
def test_shared_features_equal_enc_dec_converter(pack):
  lengths = {'inputs': 10, 'targets': 7}
  ours = next(iter(SpacTorFeatureConverter(pack=pack)(_dataset(), lengths)))
  plain = next(iter(seqio.EncDecFeatureConverter(pack=pack)(_dataset(), lengths)))
  assert set(ours) == set(plain) | {'encoder_clean_tokens', 'encoder_mlm_mask'}
  for key, value in plain.items():
    assert ours[key].numpy().tolist() == value.numpy().tolist(), key


@pytest.mark.parametrize('pack', [False, True])
def test_model_feature_lengths(pack):
  lengths = SpacTorFeatureConverter(pack=pack).get_model_feature_lengths({'inputs': 128, 'targets': 29})
  expected = {'encoder_input_tokens': 128, 'encoder_clean_tokens': 128, 'encoder_mlm_mask': 128,
              'decoder_target_tokens': 29, 'decoder_input_tokens': 29, 'decoder_loss_weights': 29}
  if pack:
    expected.update(encoder_segment_ids=128, encoder_positions=128, decoder_segment_ids=29, decoder_positions=29)
  assert lengths == expected


def test_explicit_lengths_for_the_aligned_features():
  converter = SpacTorFeatureConverter(pack=False)
  full = {'inputs': 6, 'targets': 4, 'inputs_clean': 6, 'mlm_mask': 6}
  assert next(iter(converter(_dataset(), full)))['encoder_mlm_mask'].shape == (6,)
  with pytest.raises(ValueError, match='mlm_mask must be as long as inputs'):
    converter(_dataset(), {**full, 'mlm_mask': 5})


def test_missing_mlm_feature_is_an_error():
  ds = _dataset().map(lambda ex: {k: v for k, v in ex.items() if k != 'mlm_mask'})
  with pytest.raises(ValueError, match='mlm_mask'):
    SpacTorFeatureConverter(pack=False)(ds, {'inputs': 6, 'targets': 4})


def test_dtypes_are_int32():
  converted = SpacTorFeatureConverter(pack=True)(_dataset(), {'inputs': 10, 'targets': 7})
  assert all(spec.dtype == tf.int32 for spec in converted.element_spec.values())
