"""The SpacTor models for t5x: `MODEL` in a t5x gin file (gin/t5x/, docs/t5x.md).

- `SCModel`: T5 with span corruption (the SC baseline, SpacTor's stage 2, fine-tuning and evaluation).
- `SpacTorModel`: stage 1, L_G + λ1·L_RTD + λ2·L_SC (Eq. 9) over the hybrid task's features.

Both drive `spactor.model.SpacTor` and implement t5x's BaseModel interface. With t5x installed they subclass
`t5x.models.EncoderDecoderModel`, so t5x's own predict_batch_with_aux (beam search or sampling through the
model's KV cache), score_batch and eval_fn are used. Without t5x (CI, the project's own trainer) they subclass
`LocalEncoderDecoderModel`, a small stand-in with the same signatures: greedy decoding and log-likelihood
scoring. What SpacTor defines itself is the same code in both cases: `loss_fn` (the project's objectives through
spactor.stages, metrics as clu metrics), `get_initial_variables` (every submodule, with `params_axes`) and the
feature converter.
"""
import functools
import importlib.util
from typing import Any, Callable, Mapping, Optional

import clu.metrics as clu_metrics
import flax
import jax
import jax.numpy as jnp
import seqio

from spactor import objectives, stages
from spactor.feature_converters import SpacTorFeatureConverter

PyTree = Any
Batch = Mapping[str, jnp.ndarray]

# Only a real t5x has `t5x.models` (PyPI's `t5x` is an empty placeholder); a t5x that is there but broken raises.
HAS_T5X = importlib.util.find_spec('t5x') is not None and importlib.util.find_spec('t5x.models') is not None
if HAS_T5X:
  from t5x import decoding as t5x_decoding
  from t5x import metrics as t5x_metrics
  from t5x import models as t5x_models


class LocalEncoderDecoderModel:
  """t5x.models.EncoderDecoderModel's interface without t5x: greedy decoding, log-likelihood scores."""

  FEATURE_CONVERTER_CLS: Callable[..., seqio.FeatureConverter] = seqio.EncDecFeatureConverter

  def __init__(self, module, input_vocabulary: seqio.Vocabulary, output_vocabulary: seqio.Vocabulary,
               optimizer_def: Any, decode_fn: Optional[Callable] = None,
               feature_converter_cls: Optional[Callable[..., seqio.FeatureConverter]] = None, z_loss: float = 0.0):
    if decode_fn is not None:
      raise ValueError('decode_fn needs t5x (t5x.decoding); without t5x predictions are greedy')
    if feature_converter_cls is not None:
      self.FEATURE_CONVERTER_CLS = feature_converter_cls  # pylint: disable=invalid-name
    self.module = module
    self._input_vocabulary = input_vocabulary
    self._output_vocabulary = output_vocabulary
    self.optimizer_def = optimizer_def
    self._z_loss = z_loss

  @property
  def input_vocabulary(self):
    return self._input_vocabulary

  @property
  def output_vocabulary(self):
    return self._output_vocabulary

  def eval_fn(self, params: PyTree, batch: Batch):
    return self.loss_fn(params=params, batch=batch, dropout_rng=None)

  def predict_batch(self, params: PyTree, batch: Batch, rng: Optional[jax.Array] = None) -> jnp.ndarray:
    return self.predict_batch_with_aux(params=params, batch=batch, rng=rng)[0]

  def predict_batch_with_aux(self, params: PyTree, batch: Batch, rng: Optional[jax.Array] = None):
    """Greedy decoding of up to decoder_input_tokens' length; aux['scores'] = log-probability of the output."""
    del rng  # greedy
    inputs = batch['encoder_input_tokens']
    length = batch['decoder_input_tokens'].shape[1]
    ones = jnp.ones((inputs.shape[0], length), jnp.int32)
    _, variables = self.module.apply({'params': params}, jnp.ones_like(inputs), ones, ones, decode=True,
                                     enable_dropout=False, mutable=['cache'])
    encoded = self.module.apply({'params': params}, inputs, enable_dropout=False, method=self.module.encode)
    eos = self.output_vocabulary.eos_id

    def step(carry, _):
      cache, token, done, score = carry
      logits, new = self.module.apply(
          {'params': params, 'cache': cache}, encoded, inputs, token[:, None], token[:, None], decode=True,
          enable_dropout=False, max_decode_length=length, mutable=['cache'], method=self.module.decode)
      log_probs = jax.nn.log_softmax(logits[:, 0].astype(jnp.float32))
      best = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
      best = jnp.where(done, 0, best)
      score = score + jnp.where(done, 0.0, jnp.take_along_axis(log_probs, best[:, None], axis=-1)[:, 0])
      return (new['cache'], best, done | (best == eos), score), best

    batch_size = inputs.shape[0]
    init = (variables['cache'], jnp.zeros((batch_size,), jnp.int32), jnp.zeros((batch_size,), bool),
            jnp.zeros((batch_size,), jnp.float32))
    (_, _, _, scores), tokens = jax.lax.scan(step, init, None, length=length)
    return tokens.T, {'scores': scores}

  def score_batch(self, params: PyTree, batch: Batch, return_intermediates: bool = False):
    """Log-likelihood of decoder_target_tokens (weighted by decoder_loss_weights), summed per example."""
    logits = self.module.apply(
        {'params': params}, batch['encoder_input_tokens'], batch['decoder_input_tokens'],
        batch['decoder_target_tokens'], encoder_segment_ids=batch.get('encoder_segment_ids'),
        decoder_segment_ids=batch.get('decoder_segment_ids'), enable_dropout=False)
    token_scores = -objectives.token_cross_entropy(logits, batch['decoder_target_tokens'])
    token_scores = token_scores * batch['decoder_loss_weights']
    if return_intermediates:
      return token_scores.sum(-1), {'decoder': {'target_tokens': (batch['decoder_target_tokens'],),
                                                'loss_weights': (batch['decoder_loss_weights'],),
                                                'token_scores': (token_scores,)}}
    return token_scores.sum(-1)


_Base = t5x_models.EncoderDecoderModel if HAS_T5X else LocalEncoderDecoderModel


def averages(raw: Mapping[str, jnp.ndarray]):
  """clu Average metrics from spactor.objectives' metrics; they merge across microbatches, steps and hosts.

  Each `x_sum` / `x_count` pair becomes the mean `x` (the pairing of objectives.summarize); any other value
  (`*_term`, the weighted loss terms) is averaged over steps.
  """
  one = jnp.ones((), jnp.float32)
  metrics = {}
  for key, value in raw.items():
    if key.endswith('_sum'):
      base = key[:-len('_sum')]
      count = raw.get(f'{base}_count', raw.get(base.rsplit('_', 1)[0] + '_count'))
      metrics[base] = clu_metrics.Average(total=value, count=count)
    elif not key.endswith('_count'):
      metrics[key] = clu_metrics.Average(total=value, count=one)
  return metrics


def clu_metrics_from(loss: jnp.ndarray, raw: Mapping[str, jnp.ndarray], num_examples: int):
  """t5x-style metrics of a loss_fn: `loss`, the objectives' averages and (under t5x) throughput."""
  metrics = {'loss': clu_metrics.Average(total=loss, count=jnp.ones((), jnp.float32)), **averages(raw)}
  if HAS_T5X:  # throughput as t5x reports it (its trainer fills in the durations)
    metrics['timing/seqs_per_second'] = t5x_metrics.TimeRate.from_model_output(numerator=num_examples)
    metrics['timing/steps_per_second'] = t5x_metrics.StepsPerTime.from_model_output()
    metrics['timing/seqs'] = t5x_metrics.Sum(jnp.asarray(num_examples))
  return metrics


@functools.lru_cache(maxsize=None)
def max_mlm_positions(length: int, mlm_ratio: float, packed: bool) -> int:
  """The most [M] positions a row of `length` tokens can hold: a static bound for the generator's projection.

  spactor.preprocessors.mask_tokens masks round(ratio·n) of an example's n eligible tokens, and every example
  also holds an EOS, so it is at least n + 1 tokens long. One example per row: round(ratio·(length - 1)). Packed
  rows (t5x packs pre-training data) hold several examples, each rounded on its own (twenty 5-token examples
  with 4 eligible tokens each are 20% [M] at ratio 0.15): the best packing, found by dynamic programming.
  """
  if not 0.0 <= mlm_ratio < 1.0:
    raise ValueError(f'mlm_ratio must be in [0, 1), got {mlm_ratio!r}')
  if not packed:
    return max(1, round(mlm_ratio * (length - 1)))
  most = [0] * (length + 1)  # most[c]: the most [M] in c tokens of whole examples
  for c in range(2, length + 1):
    most[c] = max(most[c - 1], max(most[c - n - 1] + round(mlm_ratio * n) for n in range(1, c)))
  return max(1, most[length])


class SCModel(_Base):
  """T5 trained with span corruption: the SC baseline, stage 2, fine-tuning and evaluation."""

  FEATURE_CONVERTER_CLS = seqio.EncDecFeatureConverter

  def __init__(self, module, input_vocabulary: seqio.Vocabulary, output_vocabulary: seqio.Vocabulary,
               optimizer_def: Any, decode_fn: Optional[Callable] = None,
               feature_converter_cls: Optional[Callable[..., seqio.FeatureConverter]] = None, z_loss: float = 1e-4,
               loss_normalization: str = objectives.PAPER_NORMALIZATION, sc_weight: float = 1.0):
    """As t5x's EncoderDecoderModel; decode_fn defaults to t5x's beam search (greedy without t5x).

    loss_normalization: spactor.objectives' ('example_sum', the paper's, is the default; 'batch_sum' is t5x's
    loss_normalizing_factor=None). sc_weight: the loss is sc_weight·L_SC; SpacTor's stage 2 sets it to λ2 so that
    the SC term keeps its stage-1 scale (gin/t5x/runs/spactor_stage2.gin).
    """
    self._normalization = objectives.check_normalization(loss_normalization)
    self._sc_weight = sc_weight
    if HAS_T5X and decode_fn is None:
      decode_fn = t5x_decoding.beam_search
    super().__init__(module=module, input_vocabulary=input_vocabulary, output_vocabulary=output_vocabulary,
                     optimizer_def=optimizer_def, decode_fn=decode_fn, feature_converter_cls=feature_converter_cls,
                     z_loss=z_loss)

  def get_initial_variables(self, rng: jax.Array, input_shapes: Mapping[str, Any],
                            input_types: Optional[Mapping[str, jnp.dtype]] = None):
    """Every parameter of the module (stage-1 heads included) and its logical axes (`params_axes`)."""
    input_types = input_types or {}

    def dummy(name):
      return jnp.ones(input_shapes[name], input_types.get(name, jnp.int32))

    optional = {k: dummy(k) for k in ('encoder_segment_ids', 'decoder_segment_ids', 'encoder_positions',
                                      'decoder_positions') if k in input_shapes}
    decoder_tokens = dummy('decoder_input_tokens')
    return flax.core.freeze(self.module.init(
        rng, dummy('encoder_input_tokens'), decoder_tokens, decoder_tokens, **optional, enable_dropout=False,
        method=self.module.init_all))

  def loss_fn(self, params: PyTree, batch: Batch, dropout_rng: Optional[jax.Array]):
    """(loss, metrics); dropout_rng None (evaluation) turns dropout off and fixes any sampling."""
    rng = jax.random.PRNGKey(0) if dropout_rng is None else dropout_rng
    loss, raw = self._objective(params, batch, rng, enable_dropout=dropout_rng is not None)
    return loss, clu_metrics_from(loss, raw, batch['encoder_input_tokens'].shape[0])

  def _objective(self, params, batch, rng, enable_dropout):
    return stages.sc_loss(self.module, params, batch, rng, enable_dropout, z_loss=self._z_loss,
                          normalization=self._normalization, sc_weight=self._sc_weight)


class SpacTorModel(SCModel):
  """SpacTor stage 1: the generator fills the [M] positions, D learns RTD on its encoder and SC on its decoder.

  Reads the hybrid task's features (SpacTorFeatureConverter): encoder_input_tokens = X_c^MLM, plus
  encoder_clean_tokens (X_c) and encoder_mlm_mask. Prediction and scoring use D alone.
  """

  FEATURE_CONVERTER_CLS = SpacTorFeatureConverter

  def __init__(self, module, input_vocabulary: seqio.Vocabulary, output_vocabulary: seqio.Vocabulary,
               optimizer_def: Any, decode_fn: Optional[Callable] = None,
               feature_converter_cls: Optional[Callable[..., seqio.FeatureConverter]] = None, z_loss: float = 1e-4,
               lambda1: float = 10.0, lambda2: float = 10.0, mlm_ratio: Optional[float] = None,
               loss_normalization: str = objectives.PAPER_NORMALIZATION):
    """As SCModel, plus λ1 (RTD weight) and λ2 (SC weight) of Eq. 9.

    mlm_ratio: the data's MLM ratio (MLM_RATIO); the generator then projects only a row's [M] positions to the
    vocabulary (max_mlm_positions), as the project's trainer does. None projects every position (same result).
    """
    if module.generator is None or module.rtd_head is None:
      raise ValueError('SpacTorModel needs a SpacTor module with a generator and an RTD head')
    self.weights = stages.HybridWeights(lambda1, lambda2)
    self.mlm_ratio = mlm_ratio
    super().__init__(module=module, input_vocabulary=input_vocabulary, output_vocabulary=output_vocabulary,
                     optimizer_def=optimizer_def, decode_fn=decode_fn, feature_converter_cls=feature_converter_cls,
                     z_loss=z_loss, loss_normalization=loss_normalization)

  def eval_fn(self, params: PyTree, batch: Batch):
    """loss_fn's metrics plus span corruption on the clean inputs X_c (`sc_clean_*`, the paper's Figure 4)."""
    loss, metrics = self.loss_fn(params, batch, dropout_rng=None)
    _, clean = stages.sc_loss(self.module, params, stages.clean_batch(batch), jax.random.PRNGKey(0),
                              enable_dropout=False, z_loss=0.0, prefix='sc_clean')
    return loss, {**metrics, **averages(clean)}

  def _objective(self, params, batch, rng, enable_dropout):
    vocab = self.output_vocabulary
    allowed = objectives.allowed_generator_ids(self.module.config.vocab_size, vocab.vocab_size - vocab.extra_ids)
    k = None if self.mlm_ratio is None else max_mlm_positions(
        batch['encoder_input_tokens'].shape[1], self.mlm_ratio, packed='encoder_segment_ids' in batch)
    return stages.hybrid_loss(self.module, params, batch, rng, enable_dropout, weights=self.weights,
                              allowed_ids=allowed, z_loss=self._z_loss, normalization=self._normalization,
                              max_predictions=k)
