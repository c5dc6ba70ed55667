"""ssr.generate: the SSR records are right, a stopped run resumes to the same bytes, settings are checked."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from spactor import model as model_lib
from spactor.config import T5Config
from ssr import formatting, generate, masking, records, tasks

VOCAB_SIZE, EXTRA_IDS = 240, 100  # pieces 0..139, sentinels / markers 239 down to 140
CONFIG = T5Config(vocab_size=256, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, num_encoder_layers=1,
                  num_decoder_layers=1)
INPUTS_LENGTH = 48
RAW_LENGTH = tasks.raw_length_for(INPUTS_LENGTH)
GEN_CONFIG = generate.GenerateConfig(
    inputs_length=INPUTS_LENGTH, decode_length=tasks.decode_length_for(INPUTS_LENGTH, RAW_LENGTH),
    examples_per_shard=6, batch_size=4, max_span_fill=6)
MARKERS = formatting.SpanMarkers(VOCAB_SIZE, EXTRA_IDS)


def masked_examples(n=14):
  vocab = seqio.PassThroughVocabulary(size=VOCAB_SIZE - EXTRA_IDS)
  vocab._extra_ids = EXTRA_IDS
  features = {"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)}
  tokens = np.random.default_rng(0).integers(2, 140, (n, RAW_LENGTH)).astype(np.int32)
  tokens[-1, RAW_LENGTH // 2:] = 0  # a shorter last piece, as at the end of a corpus
  ds = tf.data.Dataset.from_tensor_slices(tokens).map(lambda t: {"targets": t[t > 0]})
  with seqio.utils.map_seed_manager(3):
    ds = masking.ssr_span_mask(ds, output_features=features)
  for ex in ds.as_numpy_iterator():
    yield {**ex, "inputs": np.append(ex["inputs"], 1)}  # the task appends EOS


@pytest.fixture(scope="module")
def generator():
  module = model_lib.SpacTor(CONFIG)
  tokens = jnp.ones((1, 8), jnp.int32)
  params = jax.jit(module.init)(jax.random.PRNGKey(0), tokens, tokens, tokens)["params"]
  return generate.Generator(module, params, VOCAB_SIZE, EXTRA_IDS, GEN_CONFIG)


def _read(directory):
  return {os.path.basename(p): open(p, "rb").read() for p in records.list_shards(directory, "train")}


def _parsed(directory):
  ds = tf.data.TFRecordDataset(records.list_shards(directory, "train")).map(records.parse)
  return list(ds.as_numpy_iterator())


def test_records_rebuild_the_text_and_fit(generator, tmp_path):
  stats = generate.generate(generator, masked_examples(), str(tmp_path), "train", {"test": 1}, 14,
                            progress=False)
  assert (stats.shards_written, stats.examples, stats.dropped) == (3, 14, 0)
  assert stats.decoder_tokens > 0 and stats.tokens_per_second > 0
  out = _parsed(str(tmp_path))
  assert stats.spans == sum(int(o["num_spans"]) for o in out)
  # The reserve keeps the budget from starving the last spans: here every example can give each span a token.
  assert stats.budget_empty_spans == 0 and stats.budget_empty_fraction == 0.0
  sources = list(masked_examples())
  assert [int(o["id"]) for o in out] == list(range(14))
  for o, ex in zip(out, sources):
    assert len(o["inputs"]) + 1 <= INPUTS_LENGTH  # EOS is added by the task
    n = len(ex["span_starts"])
    assert o["num_spans"] == n and o["truth_length"] == ex["span_lengths"].sum()
    # The target is the truth after <s_i> markers; the input is the kept text with <s_i> fill </s_i> per span.
    expected_targets = masking.span_contents(ex["tokens"], ex["span_starts"], ex["span_lengths"],
                                             [MARKERS.open(i) for i in range(n)]).numpy()
    np.testing.assert_array_equal(o["targets"], expected_targets)
    inputs = o["inputs"].tolist()
    opens = [inputs.index(MARKERS.open(i)) for i in range(n)]
    closes = [inputs.index(MARKERS.close(i)) for i in range(n)]
    assert all(a < b for a, b in zip(opens, closes)) and all(b < a for b, a in zip(closes, opens[1:]))
    fills = [inputs[a + 1:b] for a, b in zip(opens, closes)]
    assert sum(map(len, fills)) == o["imperfect_length"]
    assert all(len(f) <= GEN_CONFIG.max_span_fill and all(2 <= t < 140 for t in f) for f in fills)
    rebuilt, _ = formatting.ssr_example(ex["tokens"], ex["span_starts"], ex["span_lengths"], fills, MARKERS)
    np.testing.assert_array_equal(o["inputs"], rebuilt)
    # The loss sums the sampled tokens: the fills and the structural tokens not forced (at most n of n + 1).
    assert o["imperfect_length"] <= o["sampled_tokens"] <= o["imperfect_length"] + n
    assert (o["generator_loss"] > 0) == (o["sampled_tokens"] > 0)
  with open(tmp_path / "generate_config-train.json") as f:
    assert '"test": 1' in f.read()


def test_stopped_run_resumes_to_the_same_dataset(generator, tmp_path, monkeypatch):
  full, resumed = tmp_path / "full", tmp_path / "resumed"
  generate.generate(generator, masked_examples(), str(full), "train", {}, 14, progress=False)

  real_write = records.write_shard
  calls = []

  def crash_on_second_shard(path, serialized):
    calls.append(path)
    if len(calls) == 2:  # die half-way through writing the second shard
      with open(f"{path}.tmp-99999", "wb") as f:
        f.write(serialized[0][:10])
      raise KeyboardInterrupt
    real_write(path, serialized)

  monkeypatch.setattr(records, "write_shard", crash_on_second_shard)
  with pytest.raises(KeyboardInterrupt):
    generate.generate(generator, masked_examples(), str(resumed), "train", {}, 14, progress=False)
  assert list(_read(str(resumed))) == ["train-00000.tfrecord"]  # the partial shard is not visible
  monkeypatch.setattr(records, "write_shard", real_write)

  stats = generate.generate(generator, masked_examples(), str(resumed), "train", {}, 14, progress=False)
  assert (stats.shards_skipped, stats.shards_written) == (1, 2)
  assert not [n for n in os.listdir(resumed) if ".tmp-" in n]  # the partial file of the stopped run is gone
  assert _read(str(resumed)) == _read(str(full))


def test_resume_with_other_settings_is_refused(generator, tmp_path):
  generate.check_or_write_settings(str(tmp_path), "train", {"seed": 0, "top_p": 0.9})
  generate.check_or_write_settings(str(tmp_path), "train", {"seed": 0, "top_p": 0.9})
  with pytest.raises(ValueError, match="top_p"):
    generate.check_or_write_settings(str(tmp_path), "train", {"seed": 0, "top_p": 0.5})


def test_examples_too_long_for_the_inputs_length_are_dropped(generator):
  ex = next(masked_examples())
  assert generator.budget(ex) >= len(ex["span_starts"]) + 1
  long = {**ex, "tokens": np.arange(2, 2 + 2 * INPUTS_LENGTH)}  # the kept text alone overflows the inputs
  assert generator.budget(long) < 0
  stats = generate.GenerateStats()
  assert generator.shard_examples([long], 0, stats) == [] and stats.dropped == 1
