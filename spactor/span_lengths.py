"""The lengths span corruption produces, as T5 computes them (pure Python: no TensorFlow).

The trainer sizes its arrays from these, and the SeqIO preprocessors cut their chunks with them, so both agree.
"""
from typing import Tuple

DEFAULT_NOISE_DENSITY = 0.15
DEFAULT_MEAN_NOISE_SPAN_LENGTH = 3.0
DEFAULT_MLM_RATIO = 0.15


def _corrupted_lengths(tokens_length: int, noise_density: float, mean_noise_span_length: float,
                       extra_inputs: int, extra_targets: int) -> Tuple[int, int]:
  """(inputs, targets) lengths, EOS included, after corrupting `tokens_length` raw tokens (Python's round)."""
  num_noise = int(round(tokens_length * noise_density))
  num_spans = int(round(num_noise / mean_noise_span_length))
  return (tokens_length - num_noise + num_spans * extra_inputs + 1,
          num_noise + num_spans * extra_targets + 1)


def random_spans_helper(inputs_length: int, noise_density: float = DEFAULT_NOISE_DENSITY,
                        mean_noise_span_length: float = DEFAULT_MEAN_NOISE_SPAN_LENGTH,
                        extra_tokens_per_span_inputs: int = 1,
                        extra_tokens_per_span_targets: int = 1) -> Tuple[int, int]:
  """(raw tokens length, targets length): the longest raw chunk whose corrupted inputs fit `inputs_length`.

  So no example needs padding: 512 -> (568, 114), 128 -> (141, 29), 256 -> (284, 58).
  """
  lengths = lambda t: _corrupted_lengths(t, noise_density, mean_noise_span_length,
                                         extra_tokens_per_span_inputs, extra_tokens_per_span_targets)
  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  _, targets_length = lengths(tokens_length)
  if noise_density == 0.5 and targets_length > inputs_length:  # T5's tweak: targets as long as inputs
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


def max_mlm_positions(inputs_length: int, mlm_ratio: float) -> int:
  """A static bound on the [M] positions of one example (+1 for rounding): the generator projects only these."""
  if not 0.0 <= mlm_ratio < 1.0:
    raise ValueError(f'MLM_RATIO must be in [0, 1), got {mlm_ratio!r}')
  return min(inputs_length, int(round(mlm_ratio * inputs_length)) + 1)
