"""Decoding for evaluation: greedy and beam search through the decoder's KV cache.

Both searches are generic over a step function `step_fn(state, tokens [rows]) -> (logits [rows, vocab], state)`
that consumes one token per row (the token chosen at the previous position; 0, T5's BOS, first) and returns the
logits of the next position. `cached_step_fn` builds it for a SpacTor model: one decoder position per call, keys
and values kept in the Flax 'cache' collection (spactor.model; ssr.decoding samples through the same function).
For beam search, state rows are batch-major beams (row b * beam_size + k); every state leaf with a leading axis
is a per-row array that `reorder_rows` gathers when beams are chosen, scalars (the cache index) are shared.

Decoded sequences never contain pad (id 0, T5's BOS) before their end: in the cache a pad would be attended as a
token, while teacher forcing masks it. After EOS the rows are padded with 0.

Beam search follows T5/t5x: candidates are scored by log-probability; a finished candidate (EOS, or the last
position) is ranked by log-probability / ((5 + length) / 6) ** alpha (length counts EOS); the search keeps the
beam_size best unfinished and finished candidates and stops when no unfinished beam can beat the worst finished
one (for alpha >= 0 its best possible score is its log-probability divided by the penalty at max_length).
"""
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

PAD_ID, EOS_ID = 0, 1
NEG_INF = -1.0e9  # a score no real candidate reaches; finite, so sums and divisions stay NaN-free

StepFn = Callable[[object, jax.Array], tuple[jax.Array, object]]


def cached_step_fn(model, params, encoded, encoder_tokens, max_length: int):
  """(initial cache, step_fn) for decoding `model` (a plain T5 SpacTor) one position per call through its cache.

  encoded: the encoder output [rows, Le, emb]; encoder_tokens [rows, Le] (0 = pad); max_length: decoder positions
  the cache holds. The first call projects `encoded` to cross-attention keys and values once and keeps them.
  """
  def step(cache, token):
    logits, mutated = model.apply({'params': params, 'cache': cache}, encoded, encoder_tokens, token[:, None],
                                  token[:, None], enable_dropout=False, decode=True, max_decode_length=max_length,
                                  mutable=['cache'], method='decode')
    return logits[:, 0], mutated['cache']

  def create_cache():
    dummy = jnp.ones((encoder_tokens.shape[0], max_length), jnp.int32)
    init = lambda p, e, x: model.apply({'params': p}, e, x, dummy, dummy, enable_dropout=False, decode=True,
                                       mutable=['cache'], method='decode')[1]['cache']
    shapes = jax.eval_shape(init, params, encoded, encoder_tokens)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  return create_cache(), step


def brevity_penalty(length, alpha: float):
  """T5's (GNMT's) length normalizer ((5 + length) / 6) ** alpha; alpha = 0 ranks by log-probability alone."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _forbid(logits, forbidden_ids: Sequence[int]):
  ids = jnp.arange(logits.shape[-1])
  blocked = jnp.isin(ids, jnp.asarray(forbidden_ids, jnp.int32))
  return jnp.where(blocked, NEG_INF, logits.astype(jnp.float32))


def greedy_search(step_fn: StepFn, state, batch_size: int, max_length: int, *, eos_id: int = EOS_ID,
                  forbidden_ids: Sequence[int] = (PAD_ID,)) -> jax.Array:
  """int32 [batch, max_length]: the most likely token at each position until EOS, then pad."""
  def body(carry):
    t, state, token, tokens, done = carry
    logits, state = step_fn(state, token)
    new = jnp.where(done, PAD_ID, jnp.argmax(_forbid(logits, forbidden_ids), axis=-1).astype(jnp.int32))
    return t + 1, state, new, tokens.at[:, t].set(new), done | (new == eos_id)

  def cond(carry):
    return (carry[0] < max_length) & ~jnp.all(carry[-1])

  zeros = jnp.zeros((batch_size,), jnp.int32)
  carry = (jnp.zeros((), jnp.int32), state, zeros, jnp.zeros((batch_size, max_length), jnp.int32),
           jnp.zeros((batch_size,), bool))
  return jax.lax.while_loop(cond, body, carry)[3]


def reorder_rows(state, rows: jax.Array):
  """Each per-row leaf (leading axis) of `state` gathered at `rows`; scalar leaves unchanged."""
  return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.take(x, rows, axis=0), state)


def _take(x, index):
  """x [batch, n, ...] at index [batch, m] along axis 1."""
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(step_fn: StepFn, state, batch_size: int, beam_size: int, max_length: int, *, alpha: float = 0.6,
                eos_id: int = EOS_ID, forbidden_ids: Sequence[int] = (PAD_ID,)):
  """The beam_size best sequences of each example and their scores, best first.

  state: the step function's state for batch_size * beam_size rows (row b * beam_size + k).
  Returns (sequences int32 [batch, beam_size, max_length], scores float32 [batch, beam_size]).
  """
  if beam_size < 1 or alpha < 0:
    raise ValueError(f'beam_size must be >= 1 and alpha >= 0, got {beam_size}, {alpha}')
  b, k = batch_size, beam_size
  max_penalty = brevity_penalty(max_length, alpha)

  def body(carry):
    t, state, alive_seqs, alive_logp, fin_seqs, fin_scores, fin_flags = carry
    logits, state = step_fn(state, alive_seqs[:, :, jnp.maximum(t - 1, 0)].reshape(b * k) * (t > 0))
    log_probs = jax.nn.log_softmax(_forbid(logits, forbidden_ids)).reshape(b, k, -1)
    vocab = log_probs.shape[-1]
    candidates = (alive_logp[:, :, None] + log_probs).reshape(b, k * vocab)
    top_logp, top_index = jax.lax.top_k(candidates, min(2 * k, k * vocab))
    parent, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    seqs = _take(alive_seqs, parent).at[:, :, t].set(token)
    valid = top_logp > NEG_INF / 2
    ends = (token == eos_id) | (t == max_length - 1)

    alive_key = jnp.where(ends | ~valid, NEG_INF, top_logp)
    alive_logp, keep = jax.lax.top_k(alive_key, k)
    alive_seqs = _take(seqs, keep)
    rows = (jnp.arange(b)[:, None] * k + _take(parent, keep)).reshape(b * k)
    state = reorder_rows(state, rows)

    finished = ends & valid
    scores = jnp.where(finished, top_logp / brevity_penalty(t + 1, alpha), NEG_INF)
    pool_scores = jnp.concatenate([fin_scores, scores], axis=1)
    fin_scores, best = jax.lax.top_k(pool_scores, k)
    fin_seqs = _take(jnp.concatenate([fin_seqs, seqs], axis=1), best)
    fin_flags = _take(jnp.concatenate([fin_flags, finished], axis=1), best)
    return t + 1, state, alive_seqs, alive_logp, fin_seqs, fin_scores, fin_flags

  def cond(carry):
    t, _, _, alive_logp, _, fin_scores, fin_flags = carry
    settled = jnp.all(fin_flags, axis=1) & (jnp.min(fin_scores, axis=1) >= jnp.max(alive_logp, axis=1) / max_penalty)
    return (t < max_length) & ~jnp.all(settled)

  alive_logp = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (k - 1), jnp.float32)[None], (b, 1))
  empty = jnp.zeros((b, k, max_length), jnp.int32)
  carry = (jnp.zeros((), jnp.int32), state, empty, alive_logp, empty, jnp.full((b, k), NEG_INF, jnp.float32),
           jnp.zeros((b, k), bool))
  _, _, _, _, fin_seqs, fin_scores, _ = jax.lax.while_loop(cond, body, carry)
  return fin_seqs, fin_scores


def beam_decode(model, params, encoder_tokens, max_length: int, beam_size: int, alpha: float = 0.6):
  """Beam search of the model for each input row: (sequences [batch, beam, max_length], scores), best first."""
  encoded = model.apply({'params': params}, encoder_tokens, enable_dropout=False, method='encode')
  encoded = jnp.repeat(encoded, beam_size, axis=0)  # encoded once per example, then one copy per beam
  cache, step = cached_step_fn(model, params, encoded, jnp.repeat(encoder_tokens, beam_size, axis=0), max_length)
  return beam_search(step, cache, encoder_tokens.shape[0], beam_size, max_length, alpha=alpha)


def decode(model, params, encoder_tokens, max_length: int, *, beam_size: int = 1, alpha: float = 0.6):
  """int32 [batch, max_length]: the model's output for each input row (greedy for beam_size 1, else the best beam).

  encoder_tokens: int32 [batch, Le]; pad rows decode to something and are for the caller to drop.
  """
  if beam_size > 1:
    return beam_decode(model, params, encoder_tokens, max_length, beam_size, alpha)[0][:, 0]
  encoded = model.apply({'params': params}, encoder_tokens, enable_dropout=False, method='encode')
  cache, step = cached_step_fn(model, params, encoded, encoder_tokens, max_length)
  return greedy_search(step, cache, encoder_tokens.shape[0], max_length)
