"""The two stages of SpacTor pre-training as loss functions over a model and a batch.

Stage 1 (`hybrid_loss`) runs the generator on X_c^MLM, fills every [M] with a sample to make X̂_c, and trains the
discriminator's encoder on RTD and its decoder on span corruption given X̂_c. Stage 2 (`sc_loss`) is plain span
corruption on X_c. Both take the same batch (the hybrid task's features), so the data stream goes on unbroken
across the switch at τ; `clean_batch` gives the SC view of it.

Both take a `normalization` (spactor.objectives: 'example_sum' is the paper's and the runs' default). Stage 2
trains on `sc_weight`·L_SC; the runs set it to λ2, so the SC term keeps its scale across τ and Adafactor's
carried second moments still fit its gradients (docs/design.md, "The switch at τ").

Each loss function has the signature `(module, params, batch, rng, enable_dropout) -> (loss, metrics)` with its
hyper-parameters bound beforehand (`functools.partial`), so a train step takes the loss as an argument.
"""
import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from spactor import objectives

Batch = Mapping[str, jax.Array]

STAGE_1_ONLY_PARAMS = ('generator', 'rtd_head')
MLM_FEATURES = ('encoder_clean_tokens', 'encoder_mlm_mask')


@dataclasses.dataclass(frozen=True)
class HybridWeights:
  """λ1 (RTD) and λ2 (SC) of Eq. 9; the generator's weight is 1."""
  lambda1: float = 10.0
  lambda2: float = 10.0

  def __post_init__(self):
    for name in ('lambda1', 'lambda2'):
      value = getattr(self, name)
      if not value >= 0:  # also rejects NaN
        raise ValueError(f'{name} must be >= 0 (Eq. 9), got {value!r}')


def clean_batch(batch: Batch) -> dict[str, jax.Array]:
  """The span-corruption view of a hybrid batch: X_c as encoder input, no MLM features."""
  out = {k: v for k, v in batch.items() if k not in MLM_FEATURES}
  if 'encoder_clean_tokens' in batch:
    out['encoder_input_tokens'] = batch['encoder_clean_tokens']
  return out


def _decode_logits(module, params, encoded, encoder_tokens, batch, rng, enable_dropout):
  return module.apply(
      {'params': params}, encoded, encoder_tokens, batch['decoder_input_tokens'],
      batch['decoder_target_tokens'],
      encoder_segment_ids=batch.get('encoder_segment_ids'),
      decoder_segment_ids=batch.get('decoder_segment_ids'),
      decoder_positions=batch.get('decoder_positions'),
      enable_dropout=enable_dropout, rngs={'dropout': rng}, method='decode')


def _encode(module, params, tokens, batch, rng, enable_dropout):
  return module.apply(
      {'params': params}, tokens, encoder_segment_ids=batch.get('encoder_segment_ids'),
      encoder_positions=batch.get('encoder_positions'), enable_dropout=enable_dropout,
      rngs={'dropout': rng}, method='encode')


def sc_loss(module, params, batch: Batch, rng, enable_dropout: bool = True, *, z_loss: float = 1e-4,
            prefix: str = 'sc', normalization: str = objectives.TOKEN_MEAN, sc_weight: float = 1.0):
  """sc_weight·L_SC on the batch's encoder input (stage 2, the SC baseline, and t5x's SC model)."""
  encode_rng, decode_rng = jax.random.split(rng)
  tokens = batch['encoder_input_tokens']
  encoded = _encode(module, params, tokens, batch, encode_rng, enable_dropout)
  logits = _decode_logits(module, params, encoded, tokens, batch, decode_rng, enable_dropout)
  loss, metrics = objectives.sc_loss(logits, batch['decoder_target_tokens'], batch['decoder_loss_weights'],
                                     z_loss=z_loss, prefix=prefix, normalization=normalization)
  return sc_weight * loss, metrics


def hybrid_loss(module, params, batch: Batch, rng, enable_dropout: bool = True, *,
                weights: HybridWeights, allowed_ids: jax.Array, z_loss: float = 1e-4,
                max_predictions: Optional[int] = None, normalization: str = objectives.TOKEN_MEAN):
  """L_G + λ1·L_RTD + λ2·L_SC on one batch (Eq. 9), each term reduced by `normalization`.

  max_predictions: a static bound on the [M] positions of a row; the generator projects only those to the
  vocabulary (None: every position, the same result at a higher cost).
  """
  gen_rng, sample_rng, encode_rng, decode_rng = jax.random.split(rng, 4)
  masked, clean = batch['encoder_input_tokens'], batch['encoder_clean_tokens']
  positions, valid = objectives.masked_positions(batch['encoder_mlm_mask'], max_predictions)
  gen_logits = module.apply(
      {'params': params}, masked, segment_ids=batch.get('encoder_segment_ids'),
      positions=batch.get('encoder_positions'), enable_dropout=enable_dropout, predict_positions=positions,
      rngs={'dropout': gen_rng}, method='generator_logits')
  gen_logits = objectives.restrict_vocab(gen_logits, allowed_ids)
  clean_k = objectives.gather(clean, positions)
  l_gen, gen_metrics = objectives.generator_loss(gen_logits, clean_k, valid, normalization)

  filled_k, replaced_k = objectives.sample_replacements(
      sample_rng, gen_logits, objectives.gather(masked, positions), clean_k, valid)
  filled = objectives.scatter(masked, positions, filled_k)
  replaced = objectives.scatter(jnp.zeros_like(masked, bool), positions, replaced_k)
  encoded = _encode(module, params, filled, batch, encode_rng, enable_dropout)
  rtd_logits = module.apply({'params': params}, encoded, method='rtd_logits')
  l_rtd, rtd_metrics = objectives.rtd_loss(rtd_logits, replaced, filled > 0, batch['encoder_mlm_mask'],
                                           normalization)

  logits = _decode_logits(module, params, encoded, filled, batch, decode_rng, enable_dropout)
  l_sc, sc_metrics = objectives.sc_loss(
      logits, batch['decoder_target_tokens'], batch['decoder_loss_weights'], z_loss=z_loss,
      normalization=normalization)

  total, term_metrics = objectives.combine({
      'gen': (1.0, l_gen), 'rtd': (weights.lambda1, l_rtd), 'sc': (weights.lambda2, l_sc)})
  return total, {**gen_metrics, **rtd_metrics, **sc_metrics, **term_metrics}


def hybrid_eval_metrics(module, params, batch: Batch, rng, *, weights: HybridWeights, allowed_ids,
                        max_predictions: Optional[int] = None):
  """Stage-1 validation: every hybrid metric plus L_SC on clean inputs X_c (the paper's Figure 4)."""
  _, metrics = hybrid_loss(module, params, batch, rng, enable_dropout=False, weights=weights,
                           allowed_ids=allowed_ids, z_loss=0.0, max_predictions=max_predictions)
  _, clean = sc_loss(module, params, clean_batch(batch), rng, enable_dropout=False, z_loss=0.0,
                     prefix='sc_clean')
  return {**metrics, **clean}


def sc_eval_metrics(module, params, batch: Batch, rng):
  """Stage-2 validation: L_SC on clean inputs X_c."""
  _, metrics = sc_loss(module, params, clean_batch(batch), rng, enable_dropout=False, z_loss=0.0,
                       prefix='sc_clean')
  return metrics


def drop_stage_1_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """What goes on after τ: the discriminator and the shared embedder (the generator and RTD head go)."""
  return {k: v for k, v in params.items() if k not in STAGE_1_ONLY_PARAMS}
