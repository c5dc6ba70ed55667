"""Batched, jitted infilling decoder for the imperfect-span generator: KV cache, nucleus / top-k sampling.

The generator is a T5 of this project (spactor.model.SpacTor) trained on span corruption. For an input with n
sentinels it writes `<sentinel_0> fill_0 <sentinel_1> fill_1 ... <sentinel_{n-1}> fill_{n-1} EOS`. The decoder
keeps that structure by construction instead of parsing whatever comes out:
- the first token is sentinel 0 (forced);
- while filling span k the sampler may pick any ordinary piece or the next structural token (sentinel k+1, or
  EOS after the last span); other sentinels, EOS too early, pad, [M] and unused ids are never sampled;
- a span that reaches `max_span_fill` tokens, or an example whose token budget is only just enough for the
  structural tokens still owed and a reserve of `reserve_per_span` fill tokens for each later span, gets the next
  structural token forced.
An example's token budget is chosen so that its SSR input fits the SSR inputs length (see ssr.generate). The
reserve keeps the budget from leaving the last spans empty (they would become plain infilling): a span is closed
empty by the budget only when the whole fill budget is smaller than one token per span; such spans are counted
(`budget_empty`), and so are spans the budget cut short (`budget_cut`).

Loss: each sampled (not forced) token adds its negative log-likelihood under the generator's own distribution
(softmax of the raw logits, before temperature and truncation); the sum is the difficulty of the example.

Randomness: example e at step t samples with fold_in(fold_in(key, id_e), t), so an example's output does not
depend on its batch, shard or device count (a resumed or re-sharded run writes the same data).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp

from spactor import beam_search
from spactor import model as model_lib
from ssr import masking, sampling

PAD_ID, EOS_ID = 0, 1


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Nucleus sampling with p = 0.9 (the paper's setting) by default; temperature 0 is greedy."""
  top_p: float = 0.9
  top_k: int = 0
  temperature: float = 1.0

  def __post_init__(self):
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0 or self.temperature < 0:
      raise ValueError(f"top_k and temperature must be >= 0, got {self.top_k}, {self.temperature}")


@dataclasses.dataclass(frozen=True)
class InfillVocab:
  """Where the structural ids are: sentinel k = vocab_size - 1 - k; ordinary pieces are [1, first_extra_id)."""
  vocab_size: int  # seqio vocab.vocab_size (pieces + extra ids)
  extra_ids: int = 100

  @property
  def first_extra_id(self):
    return self.vocab_size - self.extra_ids

  def sentinel(self, k):
    return masking.sentinel_id(self.vocab_size, k)


def _step_logits_cached(model, params, encoded, encoder_tokens, max_length):
  """(init_state, step_fn) for cached decoding: one decoder position per call (spactor.beam_search's)."""
  cache, run = beam_search.cached_step_fn(model, params, encoded, encoder_tokens, max_length)

  def step(cache, token, tokens_so_far, t):
    del tokens_so_far, t
    return run(cache, token)

  return cache, step


def _step_logits_full(model, params, encoded, encoder_tokens, max_length):
  """(init_state, step_fn) without a cache: the whole prefix goes through the decoder at every step."""
  ones = jnp.ones((encoder_tokens.shape[0], max_length), jnp.int32)

  def step(state, token, tokens_so_far, t):
    del token
    decoder_inputs = jnp.pad(tokens_so_far, ((0, 0), (1, 0)))[:, :max_length]  # shift right, BOS = 0
    logits = model.apply({"params": params}, encoded, encoder_tokens, decoder_inputs, ones, enable_dropout=False,
                         method="decode")
    return jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False), state

  return jnp.zeros(()), step


def infill(model: model_lib.SpacTor, params, encoder_tokens, num_spans, budget, example_ids, rng, *,
           vocab: InfillVocab, max_length: int, sampling_config: SamplingConfig = SamplingConfig(),
           max_span_fill: int = 16, reserve_per_span: int = 1, use_cache: bool = True):
  """Samples one infilling per example.

  Args:
    model, params: the generator (a plain T5 SpacTor) and its params.
    encoder_tokens: int32 [B, Le] generator inputs (pad 0); rows of all-pad are allowed (batch padding).
    num_spans: int32 [B] sentinels in each input (n_e); 0 for a padding row.
    budget: int32 [B] most decoder tokens the example may use, EOS included; >= n_e + 1.
    example_ids: int32 [B] ids that seed each example's samples.
    rng: PRNG key.
    vocab: sentinel layout; max_length: static decoder length (cache size), >= max(budget).
    max_span_fill: most tokens in one span's fill; use_cache: False recomputes the prefix (tests, reference).
    reserve_per_span: fill tokens of the budget kept for each later span while a span is filled (at most the fill
      budget shared evenly over the spans).

  Returns:
    dict of `tokens` int32 [B, max_length] (pad after EOS), `fill_mask` bool [B, max_length] (True at sampled
    fill tokens), `token_nll` float32 [B, max_length] (0 where forced), `loss` float32 [B] (sum of token_nll),
    `num_fill_tokens` int32 [B], `num_sampled` int32 [B] (tokens whose NLL the loss sums: fills and the
    structural tokens the sampler chose), `budget_empty` / `budget_cut` int32 [B] (spans the budget closed empty /
    cut short).
  """
  batch = encoder_tokens.shape[0]
  encoded = model.apply({"params": params}, encoder_tokens, enable_dropout=False, method="encode")
  make = _step_logits_cached if use_cache else _step_logits_full
  state, step_logits = make(model, params, encoded, encoder_tokens, max_length)
  ids = jnp.arange(model.config.vocab_size)
  ordinary = (ids > EOS_ID) & (ids < vocab.first_extra_id)
  example_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(example_ids)
  draw = jax.vmap(functools.partial(sampling.sample, temperature=sampling_config.temperature,
                                    top_k=sampling_config.top_k, top_p=sampling_config.top_p))
  fill_budget = jnp.maximum(budget - num_spans - 1, 0)
  reserve = jnp.minimum(reserve_per_span, fill_budget // jnp.maximum(num_spans, 1))

  def body(carry):
    t, state, token, tokens, fill_mask, nll, opened, fill_len, done, counts = carry
    logits, state = step_logits(state, token, tokens, t)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
    structural = jnp.where(opened < num_spans, vocab.sentinel(opened), EOS_ID)
    allowed = ordinary[None, :] | (ids[None, :] == structural[:, None])
    keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(example_keys)
    sampled = draw(keys, jnp.where(allowed, logits, sampling.NEG_INF))
    owed = num_spans - opened + 1  # structural tokens still to write: sentinels and EOS
    by_budget = (opened > 0) & (budget - t <= owed + reserve * (num_spans - opened))
    force = (opened == 0) | (fill_len >= max_span_fill) | by_budget
    new = jnp.where(done, PAD_ID, jnp.where(force, structural, sampled))
    is_structural = new == structural
    is_fill = ~done & ~is_structural
    token_nll = jnp.where(~done & ~force, -jnp.take_along_axis(log_probs, new[:, None], axis=1)[:, 0], 0.0)
    budget_closed = ~done & by_budget & (fill_len < max_span_fill)
    counts = counts + jnp.stack([(~done & ~force).astype(jnp.int32), (budget_closed & (fill_len == 0)).astype(
        jnp.int32), (budget_closed & (fill_len > 0)).astype(jnp.int32)], axis=1)
    tokens = tokens.at[:, t].set(new)
    fill_mask = fill_mask.at[:, t].set(is_fill)
    nll = nll.at[:, t].set(token_nll)
    opened = opened + (~done & is_structural & (opened < num_spans)).astype(jnp.int32)
    fill_len = jnp.where(is_structural, 0, fill_len + is_fill.astype(jnp.int32))
    done = done | (new == EOS_ID)
    return t + 1, state, new, tokens, fill_mask, nll, opened, fill_len, done, counts

  def cond(carry):
    t, done = carry[0], carry[-2]
    return (t < max_length) & ~jnp.all(done)

  zeros = jnp.zeros((batch,), jnp.int32)
  carry = (jnp.zeros((), jnp.int32), state, zeros, jnp.zeros((batch, max_length), jnp.int32),
           jnp.zeros((batch, max_length), bool), jnp.zeros((batch, max_length), jnp.float32), zeros, zeros,
           num_spans <= 0, jnp.zeros((batch, 3), jnp.int32))
  _, _, _, tokens, fill_mask, nll, _, _, _, counts = jax.lax.while_loop(cond, body, carry)
  return {"tokens": tokens, "fill_mask": fill_mask, "token_nll": nll, "loss": nll.sum(axis=1),
          "num_fill_tokens": fill_mask.sum(axis=1).astype(jnp.int32), "num_sampled": counts[:, 0],
          "budget_empty": counts[:, 1], "budget_cut": counts[:, 2]}


def split_fills(tokens, fill_mask, num_spans, vocab: InfillVocab):
  """Host side: the n fills (lists of ids) of one decoded row, cut at the sentinels."""
  fills, current = [], None
  for token, is_fill in zip(tokens.tolist(), fill_mask.tolist()):
    if is_fill:
      current.append(token)
    elif token == EOS_ID or token == PAD_ID:
      break
    else:  # sentinel k opens fill k
      if token != vocab.sentinel(len(fills)):
        raise ValueError(f"decoded sentinel {token} out of order (expected {vocab.sentinel(len(fills))})")
      current = []
      fills.append(current)
  if len(fills) != num_spans:
    raise ValueError(f"decoded {len(fills)} fills for {num_spans} spans")
  return fills
