"""SpacTor's loss terms as small pure functions that return `(loss, metrics)`.

Eq. 9 of the paper: L = L_G + λ1·L_RTD + λ2·L_SC. Each term is its own function so that a trainer (or t5x's
`loss_fn`) combines them with weights instead of branching on flags. Shapes are in the names: B batch,
L encoder length, T decoder length, V vocabulary.

Conventions:
- Each term is reduced over its own support (L_SC: target tokens, L_G: [M] positions, L_RTD: every non-padding
  encoder position) by a `normalization` (docs/design.md, "Loss normalization"):
  - 'example_sum', the paper's (Eq. 4, 6, 8 are sums over positions; t5x sums): Σ over positions, mean over
    the batch's rows, so a batch's loss does not scale with its size. The default of the runs (TrainConfig,
    the t5x models).
  - 'token_mean': the mean over the term's own positions (ELECTRA's reduction); it changes what λ1 and λ2 weigh.
    The default of these functions, for callers that train one term alone (where only the scale differs).
  - 'batch_sum': Σ over the whole batch, t5x's `loss_normalizing_factor=None`.
- The RTD logit is the log-odds that a token was *replaced* (ELECTRA's sign); the paper's Eq. 5 writes the
  probability of "original", which is the same loss with the sign of the logit flipped.
- Metrics are sums and counts (`*_sum`, `*_count`) so that they average correctly across batches and hosts;
  `summarize` turns them into means.
"""
import functools
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
from jax import lax

Metrics = dict[str, jax.Array]


def token_cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array, z_loss: float = 0.0):
  """Per-token softmax cross-entropy in float32, plus T5's z-loss on the log-partition."""
  return _cross_entropy(logits_BxTxV.astype(jnp.float32), targets_BxT, float(z_loss))


def _target_logit(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """logits[..., target] as a masked sum: it fuses with its neighbours, where a gather's gradient is a scatter."""
  vocab = lax.broadcasted_iota(targets.dtype, logits.shape, logits.ndim - 1)
  return jnp.sum(jnp.where(vocab == targets[..., None], logits, 0.0), axis=-1)


def _cross_entropy_fwd(logits, targets, z_loss):
  log_z = jax.nn.logsumexp(logits, axis=-1)
  return (log_z - _target_logit(logits, targets)) + z_loss * jnp.square(log_z), (logits, targets, log_z)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _cross_entropy(logits: jax.Array, targets: jax.Array, z_loss: float) -> jax.Array:
  return _cross_entropy_fwd(logits, targets, z_loss)[0]


def _cross_entropy_bwd(z_loss, residuals, g):
  """d/dlogits = softmax·(1 + 2·z_loss·log_z) - one_hot(target), in one elementwise pass (t5x's form)."""
  logits, targets, log_z = residuals
  softmax = jnp.exp(logits - log_z[..., None])
  vocab = lax.broadcasted_iota(targets.dtype, logits.shape, logits.ndim - 1)
  grad = softmax * (1.0 + 2.0 * z_loss * log_z)[..., None] - (vocab == targets[..., None]).astype(logits.dtype)
  return g[..., None] * grad, None


_cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


EXAMPLE_SUM, TOKEN_MEAN, BATCH_SUM = 'example_sum', 'token_mean', 'batch_sum'
NORMALIZATIONS = (EXAMPLE_SUM, TOKEN_MEAN, BATCH_SUM)
PAPER_NORMALIZATION = EXAMPLE_SUM


def check_normalization(normalization: str) -> str:
  if normalization not in NORMALIZATIONS:
    raise ValueError(f'loss normalization must be one of {NORMALIZATIONS}, got {normalization!r}')
  return normalization


def reduce_loss(values_BxN: jax.Array, weights_BxN: jax.Array, normalization: str = TOKEN_MEAN) -> jax.Array:
  """Σ values·weights, divided as `normalization` says: by the weights' sum, by the rows, or not at all."""
  weights = weights_BxN.astype(jnp.float32)
  total = jnp.sum(values_BxN * weights)
  if check_normalization(normalization) == TOKEN_MEAN:
    return total / jnp.maximum(jnp.sum(weights), 1.0)
  if normalization == EXAMPLE_SUM:
    return total / weights.shape[0]
  return total


def _accuracy_sum(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  """Weighted count of targets whose logit is the row's maximum (an exact tie counts as correct).

  The same as argmax == target but for ties; it shares the maximum with the log-softmax, where argmax's (value,
  index) reduction over the vocabulary was ~6% of a tiny CPU step.
  """
  logits = logits.astype(jnp.float32)
  correct = _target_logit(logits, targets) >= jnp.max(logits, axis=-1)
  return jnp.sum(correct * weights)


def sc_loss(logits_BxTxV, targets_BxT, weights_BxT, z_loss: float = 1e-4, prefix: str = 'sc',
            normalization: str = TOKEN_MEAN):
  """L_SC (Eq. 8): the decoder's cross-entropy on span-corruption targets, reduced over target tokens."""
  weights = weights_BxT.astype(jnp.float32)
  per_token = token_cross_entropy(logits_BxTxV, targets_BxT, z_loss)
  loss = reduce_loss(per_token, weights, normalization)
  nll = token_cross_entropy(logits_BxTxV, targets_BxT) * weights
  metrics = {
      f'{prefix}_loss_sum': jnp.sum(nll),
      f'{prefix}_accuracy_sum': _accuracy_sum(logits_BxTxV, targets_BxT, weights),
      f'{prefix}_count': jnp.sum(weights),
  }
  return loss, metrics


def generator_loss(logits_BxLxV, clean_BxL, mlm_mask_BxL, normalization: str = TOKEN_MEAN):
  """L_G (Eq. 4): the generator's MLM cross-entropy at the [M] positions, reduced over them."""
  weights = mlm_mask_BxL.astype(jnp.float32)
  per_token = token_cross_entropy(logits_BxLxV, clean_BxL)
  metrics = {
      'gen_loss_sum': jnp.sum(per_token * weights),
      'gen_accuracy_sum': _accuracy_sum(logits_BxLxV, clean_BxL, weights),
      'gen_count': jnp.sum(weights),
  }
  return reduce_loss(per_token, weights, normalization), metrics


def restrict_vocab(logits_BxLxV: jax.Array, allowed_V: jax.Array) -> jax.Array:
  """Removes ids the generator must never produce (pad, EOS, sentinels, [M], unused padding ids).

  Without it an untrained generator writes sentinels and [M] into the discriminator's input, which has no
  meaning there. The same restriction is used for L_G and for sampling, so the generator is trained on the
  distribution it samples from.
  """
  allowed = jnp.broadcast_to(allowed_V, logits_BxLxV.shape)
  return jnp.where(allowed, logits_BxLxV, jnp.finfo(logits_BxLxV.dtype).min)


def allowed_generator_ids(model_vocab_size: int, num_pieces: int) -> jax.Array:
  """Ids a generator may sample: SentencePiece pieces from UNK (2) up, no pad/EOS, sentinels or [M]."""
  ids = jnp.arange(model_vocab_size)
  return (ids >= 2) & (ids < num_pieces)


def masked_positions(mlm_mask_BxL: jax.Array, k: Optional[int]):
  """The indices of the [M] positions of each row, padded to a static k: (positions_BxK, valid_BxK).

  Masked positions come first, in order; the padding slots take the earliest unmasked positions, so the k
  indices of a row are distinct (a scatter back is well defined). k=None keeps every position.
  """
  length = mlm_mask_BxL.shape[-1]
  if k is None or k >= length:
    positions = jnp.broadcast_to(jnp.arange(length), mlm_mask_BxL.shape)
    return positions, mlm_mask_BxL.astype(bool)
  score = mlm_mask_BxL.astype(jnp.int32) * length + (length - 1 - jnp.arange(length))[None, :]
  _, positions = jax.lax.top_k(score, k)
  return positions, gather(mlm_mask_BxL, positions).astype(bool)


def gather(x_BxL: jax.Array, positions_BxK: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x_BxL, positions_BxK, axis=1)


def scatter(x_BxL: jax.Array, positions_BxK: jax.Array, values_BxK: jax.Array) -> jax.Array:
  """x with x[b, positions[b, j]] = values[b, j] (positions distinct within a row)."""
  return jax.vmap(lambda row, pos, val: row.at[pos].set(val))(x_BxL, positions_BxK, values_BxK.astype(x_BxL.dtype))


def sample_replacements(rng, gen_logits_BxLxV, input_BxL, clean_BxL, mlm_mask_BxL):
  """Fills each [M] with a token sampled from the generator (temperature 1, Gumbel-max).

  The sample is not differentiated through (ELECTRA): no gradient reaches the generator from L_RTD or L_SC.
  A position counts as replaced only where the sample differs from the original token, so a generator that
  guesses right produces a "real" label.

  Returns:
    filled_BxL: X̂_c, the discriminator's encoder input.
    replaced_BxL: bool, True where filled differs from the clean token.
  """
  sampled = jax.random.categorical(rng, jax.lax.stop_gradient(gen_logits_BxLxV).astype(jnp.float32))
  mask = mlm_mask_BxL.astype(bool)
  filled = jnp.where(mask, sampled.astype(input_BxL.dtype), input_BxL)
  replaced = mask & (filled != clean_BxL)
  return filled, replaced


def rtd_loss(rtd_logits_BxL, replaced_BxL, nonpad_BxL, mlm_mask_BxL, normalization: str = TOKEN_MEAN):
  """L_RTD (Eq. 6): sigmoid cross-entropy of "replaced" over every non-padding encoder position.

  Metrics beside accuracy, as the paper's diagnostics: recall (replaced tokens found), precision (predicted
  replacements that were) and F1 = 2·TP / (predicted + actual), each a sum over a count.
  """
  labels = replaced_BxL.astype(jnp.float32)
  weights = nonpad_BxL.astype(jnp.float32)
  logits = rtd_logits_BxL.astype(jnp.float32)
  per_token = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  predicted = (logits > 0).astype(jnp.float32)
  correct = (predicted == labels) * weights
  true_positives = jnp.sum(predicted * labels * weights)
  mlm_weights = mlm_mask_BxL.astype(jnp.float32)
  metrics = {
      'rtd_loss_sum': jnp.sum(per_token * weights),
      'rtd_accuracy_sum': jnp.sum(correct),
      'rtd_count': jnp.sum(weights),
      # Replaced tokens among the [M] positions: falls as the generator gets better (ELECTRA's starvation).
      'replaced_sum': jnp.sum(labels * mlm_weights),
      'replaced_count': jnp.sum(mlm_weights),
      # Recall on replaced tokens: the accuracy that matters, since most tokens are original.
      'rtd_recall_sum': true_positives,
      'rtd_recall_count': jnp.sum(labels * weights),
      'rtd_precision_sum': true_positives,
      'rtd_precision_count': jnp.sum(predicted * weights),
      'rtd_f1_sum': 2.0 * true_positives,
      'rtd_f1_count': jnp.sum((predicted + labels) * weights),
  }
  return reduce_loss(per_token, weights, normalization), metrics


def combine(terms: Mapping[str, tuple[float, jax.Array]]):
  """Σ weight·loss over named terms; returns the total and each weighted term as a metric."""
  total = sum(weight * loss for weight, loss in terms.values())
  metrics = {f'{name}_term': weight * loss for name, (weight, loss) in terms.items()}
  return total, metrics


def summarize(metrics: Mapping[str, float]) -> dict[str, float]:
  """Turns `x_sum` / `x_count` pairs into means `x`, keeping every other scalar as it is."""
  out = {}
  for key, value in metrics.items():
    if key.endswith('_sum'):
      base = key[:-len('_sum')]
      own_count = f'{base}_count'
      count_key = own_count if own_count in metrics else base.rsplit('_', 1)[0] + '_count'
      count = metrics.get(count_key)
      if count is not None:
        out[base] = float(value) / max(float(count), 1.0)
    elif not key.endswith('_count'):
      out[key] = float(value)
  return out
