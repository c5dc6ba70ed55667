"""Model configs: frozen dataclasses and the size presets of SpacTor-T5 as data.

`preset(size, version)` builds the three configs of one model: the T5 discriminator, the generator and the RTD
head. Sizes follow t5x's gin files (t5_1_0/*.gin, t5_1_1/*.gin) and Table 5 of the SpacTor paper; `tiny` and
`micro` are ours, small enough to train on a CPU in the demos and the tests (`micro` is the SSR demo's student,
smaller than its `tiny` generator).
"""
import dataclasses
from typing import NamedTuple, Optional, Tuple

import gin

ACTIVATIONS = ('relu', 'gelu', 'linear')
DTYPES = ('float32', 'bfloat16')
# How attention runs (spactor.model.attend): 'plain' is the reference (einsum, softmax, einsum; T5's own);
# 'dot_product_attention' is jax.nn.dot_product_attention (cuDNN flash attention on a GPU with bf16 activations,
# XLA's otherwise); 'tpu_flash' is the Pallas TPU flash-attention kernel (on TPU only).
ATTENTION_IMPLS = ('plain', 'dot_product_attention', 'tpu_flash')
# t5x's names: 'none' keeps every activation for the backward pass; 'minimal' keeps each layer's projections (the
# matmuls without batch dimensions) and recomputes the rest; 'full' keeps only each layer's input.
REMAT_POLICIES = ('none', 'minimal', 'full')
VERSIONS = ('t5_1_0', 't5_1_1')
T5_VOCAB_SIZE = 32128  # 32000 pieces + 100 extra ids, rounded up to a multiple of 128 (as t5x)


def _require_positive(owner: str, **values):
  for name, value in values.items():
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f'{owner}.{name} must be a positive int, got {value!r}')


def require_positive_fields(config, *names: str) -> None:
  """Raises ValueError naming the first of the dataclass `config`'s fields `names` that is not a positive int."""
  _require_positive(type(config).__name__, **{name: getattr(config, name) for name in names})


@dataclasses.dataclass(frozen=True)
class T5Config:
  """The T5 encoder-decoder (SpacTor's discriminator D); fields mirror t5x's network.T5Config."""
  vocab_size: int
  emb_dim: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  num_encoder_layers: int
  num_decoder_layers: int
  # ('relu',): T5.1.0; ('gelu', 'linear'): T5.1.1's gated GELU (elementwise product of the two).
  mlp_activations: Tuple[str, ...] = ('relu',)
  # True: output logits use the transposed token embedding scaled by 1/sqrt(emb_dim) (T5.1.0).
  logits_via_embedding: bool = True
  dropout_rate: float = 0.0
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dtype: str = 'float32'  # activation dtype; parameters are always float32
  float32_attention_logits: bool = False
  attention_impl: str = 'plain'  # one of ATTENTION_IMPLS; every one gives the same function of the params
  remat_policy: str = 'none'  # one of REMAT_POLICIES: memory for recomputation in training; the same gradients

  def __post_init__(self):
    # Gin and JSON hand lists over; a tuple keeps the config hashable (a Flax module attribute).
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))
    _require_positive('T5Config', vocab_size=self.vocab_size, emb_dim=self.emb_dim, num_heads=self.num_heads,
                      head_dim=self.head_dim, mlp_dim=self.mlp_dim, num_encoder_layers=self.num_encoder_layers,
                      num_decoder_layers=self.num_decoder_layers,
                      relative_attention_num_buckets=self.relative_attention_num_buckets,
                      relative_attention_max_distance=self.relative_attention_max_distance)
    if not self.mlp_activations or any(a not in ACTIVATIONS for a in self.mlp_activations):
      raise ValueError(f'T5Config.mlp_activations must be non-empty, from {ACTIVATIONS}; got {self.mlp_activations}')
    if self.dtype not in DTYPES:
      raise ValueError(f'T5Config.dtype must be one of {DTYPES}, got {self.dtype!r}')
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f'T5Config.attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}')
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'T5Config.remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate}')
    if self.relative_attention_num_buckets < 4:
      raise ValueError('T5Config.relative_attention_num_buckets must be at least 4')


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  """SpacTor's generator G: an encoder-only stack on D's token embedder, then a projection to the vocabulary.

  emb_dim is D's (the embedder is shared); heads and head size default to D's; the MLP activations, dropout and
  relative attention settings are D's.
  """
  num_layers: int
  mlp_dim: int
  num_heads: Optional[int] = None
  head_dim: Optional[int] = None
  # False: the paper's linear projection W^G (param `logits_dense`). True: ELECTRA's output tied to the shared
  # embedding (scaled by 1/sqrt(emb_dim) as T5's tied logits) plus a per-token bias (param `logits_bias`).
  tied_output: bool = False

  def __post_init__(self):
    _require_positive('GeneratorConfig', num_layers=self.num_layers, mlp_dim=self.mlp_dim)
    if self.num_heads is not None:
      _require_positive('GeneratorConfig', num_heads=self.num_heads)
    if self.head_dim is not None:
      _require_positive('GeneratorConfig', head_dim=self.head_dim)


@dataclasses.dataclass(frozen=True)
class RTDHeadConfig:
  """The replaced-token-detection head f on D's encoder output: dense(mlp_dim, activation) -> dense(1)."""
  mlp_dim: int
  activation: str = 'gelu'

  def __post_init__(self):
    _require_positive('RTDHeadConfig', mlp_dim=self.mlp_dim)
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'RTDHeadConfig.activation must be one of {ACTIVATIONS}, got {self.activation!r}')


class SpacTorConfigs(NamedTuple):
  """The three configs of one SpacTor model; unpacks as (t5, generator, rtd_head)."""
  t5: T5Config
  generator: GeneratorConfig
  rtd_head: RTDHeadConfig


# Discriminator shapes: (emb_dim, num_heads, head_dim, mlp_dim, encoder layers, decoder layers), from t5x's
# t5_1_0/{small,base,large}.gin and t5_1_1/{small,base,large}.gin; `micro` and `tiny` are ours.
DISCRIMINATOR_SHAPES = {
    't5_1_0': {
        'micro': (64, 2, 32, 256, 2, 2),
        'tiny': (128, 4, 32, 512, 2, 2),
        'small': (512, 8, 64, 2048, 6, 6),
        'base': (768, 12, 64, 3072, 12, 12),
        'large': (1024, 16, 64, 4096, 24, 24),
    },
    't5_1_1': {
        'micro': (64, 2, 32, 256, 2, 2),
        'tiny': (128, 4, 32, 512, 2, 2),
        'small': (512, 6, 64, 1024, 8, 8),
        'base': (768, 12, 64, 2048, 12, 12),
        'large': (1024, 16, 64, 2816, 24, 24),
    },
}
# Generator (layers, mlp_dim): base and large from Table 5 of the paper; small, tiny and micro are ours, keeping G
# near a quarter of D's encoder as the paper recommends.
GENERATOR_SHAPES = {'micro': (1, 128), 'tiny': (1, 256), 'small': (2, 1024), 'base': (4, 1024), 'large': (6, 2048)}
# What sets the two T5 versions apart besides shapes: gated GELU and untied output logits in T5.1.1.
VERSION_STYLE = {
    't5_1_0': {'mlp_activations': ('relu',), 'logits_via_embedding': True},
    't5_1_1': {'mlp_activations': ('gelu', 'linear'), 'logits_via_embedding': False},
}
# Table 5: the RTD head's MLP is as wide as D's MLP (see `preset`).
SIZES = tuple(GENERATOR_SHAPES)


def _check_name(kind: str, name: str, known) -> None:
  if name not in known:
    raise ValueError(f'unknown {kind} {name!r}; known: {", ".join(known)}')


@gin.configurable(module='spactor.config')
def preset(size: str = 'tiny', version: str = 't5_1_0', vocab_size: int = T5_VOCAB_SIZE, dtype: str = 'float32',
           dropout_rate: float = 0.0, tied_generator_output: bool = False,
           attention_impl: str = 'plain', remat_policy: str = 'none') -> SpacTorConfigs:
  """The configs of a preset size ('micro', 'tiny', 'small', 'base', 'large') and T5 version ('t5_1_0', 't5_1_1').

  dropout_rate defaults to 0.0 as in T5 pre-training; fine-tuning usually sets 0.1.
  """
  _check_name('version', version, VERSIONS)
  _check_name('size', size, SIZES)
  emb, heads, head_dim, mlp, enc_layers, dec_layers = DISCRIMINATOR_SHAPES[version][size]
  t5 = T5Config(vocab_size=vocab_size, emb_dim=emb, num_heads=heads, head_dim=head_dim, mlp_dim=mlp,
                num_encoder_layers=enc_layers, num_decoder_layers=dec_layers, dropout_rate=dropout_rate,
                dtype=dtype, attention_impl=attention_impl, remat_policy=remat_policy, **VERSION_STYLE[version])
  gen_layers, gen_mlp = GENERATOR_SHAPES[size]
  generator = GeneratorConfig(num_layers=gen_layers, mlp_dim=gen_mlp, tied_output=tied_generator_output)
  return SpacTorConfigs(t5, generator, RTDHeadConfig(mlp_dim=mlp))


@gin.configurable(module='spactor.config')
def t5_preset(size: str = 'tiny', version: str = 't5_1_0', **kwargs) -> T5Config:
  """Only the T5Config of a preset (the SC baseline and stage 2); kwargs as `preset`."""
  return preset(size, version, **kwargs).t5


@gin.configurable(module='spactor.config')
def generator_preset(size: str = 'tiny', tied_output: bool = False) -> GeneratorConfig:
  """Only the GeneratorConfig of a preset size."""
  _check_name('size', size, SIZES)
  layers, mlp = GENERATOR_SHAPES[size]
  return GeneratorConfig(num_layers=layers, mlp_dim=mlp, tied_output=tied_output)


@gin.configurable(module='spactor.config')
def rtd_head_preset(size: str = 'tiny', version: str = 't5_1_0') -> RTDHeadConfig:
  """Only the RTDHeadConfig of a preset (MLP as wide as D's, GELU)."""
  return preset(size, version).rtd_head


# The dataclasses themselves, for gin files that spell a config field by field.
gin.external_configurable(T5Config, module='spactor.config')
gin.external_configurable(GeneratorConfig, module='spactor.config')
gin.external_configurable(RTDHeadConfig, module='spactor.config')
