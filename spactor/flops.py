"""Analytic FLOPs per train step, so a run reports its cost in the paper's terms (Table 3).

Counts the multiply-adds of every matrix product (2 FLOPs each) in the forward pass, including attention's
score and value products, and takes a train step as 3x the forward pass (backward = 2x forward). Embedding
look-ups, norms, softmaxes and the optimizer are left out, as is customary (they are O(params) or O(n·d)).
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class Lengths:
  """Per-example lengths of one train step: encoder L, decoder T, and [M] positions M."""
  inputs: int
  targets: int
  mlm: int = 0


def dense(tokens: int, d_in: int, d_out: int) -> float:
  return 2.0 * tokens * d_in * d_out


def attention(q_tokens: int, kv_tokens: int, d_model: int, heads: int, head_dim: int) -> float:
  """Q/K/V/O projections plus the QK^T and AV products."""
  inner = heads * head_dim
  projections = dense(q_tokens, d_model, inner) * 2 + dense(kv_tokens, d_model, inner) * 2
  return projections + 2 * (2.0 * q_tokens * kv_tokens * inner)


def mlp(tokens: int, d_model: int, mlp_dim: int, num_activations: int) -> float:
  """One input projection per activation (2 for gated GELU) and one output projection."""
  return dense(tokens, d_model, mlp_dim) * num_activations + dense(tokens, mlp_dim, d_model)


def encoder_layers(tokens: int, num_layers: int, d_model: int, heads: int, head_dim: int,
                   mlp_dim: int, num_activations: int) -> float:
  per_layer = attention(tokens, tokens, d_model, heads, head_dim) + mlp(
      tokens, d_model, mlp_dim, num_activations)
  return num_layers * per_layer


def t5_forward(config, lengths: Lengths) -> float:
  """The discriminator (or plain T5): encoder, decoder with cross-attention, and vocabulary logits."""
  n_act = len(config.mlp_activations)
  enc = encoder_layers(lengths.inputs, config.num_encoder_layers, config.emb_dim, config.num_heads,
                       config.head_dim, config.mlp_dim, n_act)
  dec_layer = (attention(lengths.targets, lengths.targets, config.emb_dim, config.num_heads, config.head_dim)
               + attention(lengths.targets, lengths.inputs, config.emb_dim, config.num_heads, config.head_dim)
               + mlp(lengths.targets, config.emb_dim, config.mlp_dim, n_act))
  logits = dense(lengths.targets, config.emb_dim, config.vocab_size)
  return enc + config.num_decoder_layers * dec_layer + logits


def generator_forward(config, generator, lengths: Lengths, logits_tokens: int | None = None) -> float:
  """The encoder-only generator over the whole input, with vocabulary logits on `logits_tokens` positions."""
  heads = generator.num_heads or config.num_heads
  head_dim = generator.head_dim or config.head_dim
  activations = getattr(generator, 'mlp_activations', None) or config.mlp_activations
  body = encoder_layers(lengths.inputs, generator.num_layers, config.emb_dim, heads, head_dim,
                        generator.mlp_dim, len(activations))
  tokens = lengths.inputs if logits_tokens is None else logits_tokens
  return body + dense(tokens, config.emb_dim, config.vocab_size)


def rtd_head_forward(config, rtd_head, lengths: Lengths) -> float:
  return dense(lengths.inputs, config.emb_dim, rtd_head.mlp_dim) + dense(lengths.inputs, rtd_head.mlp_dim, 1)


def sc_step_flops(config, lengths: Lengths, batch_size: int) -> float:
  """One span-corruption train step (stage 2 and the baseline)."""
  return 3.0 * batch_size * t5_forward(config, lengths)


def hybrid_step_flops(config, generator, rtd_head, lengths: Lengths, batch_size: int,
                      logits_tokens: int | None = None) -> float:
  """One stage-1 train step: generator, discriminator on X̂_c, and RTD head, each forward and backward."""
  forward = (t5_forward(config, lengths) + generator_forward(config, generator, lengths, logits_tokens)
             + rtd_head_forward(config, rtd_head, lengths))
  return 3.0 * batch_size * forward
