"""Analytic FLOPs per train step, in our count and in the paper's (Table 3), side by side.

Ours (`sc_step_flops`, `hybrid_step_flops`): the multiply-adds of every matrix product (2 FLOPs each) in the
forward pass, attention's score and value products included, and a train step as 3x the forward pass (backward =
2x forward), for the whole batch. The generator projects only its [M] positions (`logits_tokens`, as our trainer
runs it). Embedding look-ups, norms, softmaxes and the optimizer are left out (O(params) or O(n·d)).

The paper's (`paper_sc_step_flops`, `paper_hybrid_step_flops`): as t5x runs the model, the generator projects
every position, and each embedding look-up is a one-hot matmul (t5x's one-hot embedding) counted forward and for
the table's gradient (2x its forward; the one-hot input takes no gradient): D's encoder input, the generator's own
look-up of X_c^MLM and the decoder input. Per device at 32 examples (2048 over 64 chips) this gives Table 3's
1.6e4 and 2.2e4 GFLOPs (1.56e4 and 2.17e4, a ratio of 1.39 where the text says 1.375).
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


# Examples per device in Table 3's count: the paper's batch of 2048 over 64 chips (it reproduces both numbers).
PAPER_EXAMPLES_PER_DEVICE = 32


def embedding_lookup(config, tokens: int) -> float:
  """One look-up as t5x's one-hot matmul: [tokens, vocab] x [vocab, emb]."""
  return dense(tokens, config.vocab_size, config.emb_dim)


def paper_sc_step_flops(config, lengths: Lengths, batch_size: int = PAPER_EXAMPLES_PER_DEVICE) -> float:
  """Table 3's baseline row: our SC step plus the encoder's and decoder's one-hot look-ups (forward + table grad)."""
  lookups = embedding_lookup(config, lengths.inputs) + embedding_lookup(config, lengths.targets)
  return sc_step_flops(config, lengths, batch_size) + 2.0 * batch_size * lookups


def paper_hybrid_step_flops(config, generator, rtd_head, lengths: Lengths,
                            batch_size: int = PAPER_EXAMPLES_PER_DEVICE) -> float:
  """Table 3's SpacTor row: the generator projects every position; D's, G's and the decoder's look-ups count."""
  lookups = 2 * embedding_lookup(config, lengths.inputs) + embedding_lookup(config, lengths.targets)
  return hybrid_step_flops(config, generator, rtd_head, lengths, batch_size) + 2.0 * batch_size * lookups
