"""Plain T5 params out of a checkpoint of this project (an SC run, or either stage of a SpacTor run) or a public T5.

spactor.checkpointing saves the whole TrainState (step, params, optimizer state) under
<model_dir>/checkpoints/<step>/state. SSR needs only the T5 weights: the generator for imperfect-span generation
and the starting point of continual pre-training (whose optimizer state starts fresh). Orbax's partial restore
reads just those arrays, whatever stage and optimizer wrote the checkpoint; SpacTor's stage-1 generator and RTD
head are not read.
"""
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from spactor import checkpoint_io
from spactor import model as model_lib


def abstract_t5_params(module: model_lib.SpacTor, batch: int = 1, length: int = 8):
  """Shapes of a plain T5's params (keys token_embedder, encoder, decoder[, logits_dense])."""
  if module.generator is not None or module.rtd_head is not None:
    raise ValueError("pass a plain T5 (SpacTor(config)) to read T5 params")
  tokens = jnp.ones((batch, length), jnp.int32)
  return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), tokens, tokens, tokens))["params"]


def checkpoint_steps(model_dir: str) -> list[int]:
  directory = os.path.join(os.path.abspath(model_dir), "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def restore_t5_params(model_dir: str, module: model_lib.SpacTor, step: Optional[int] = None):
  """(params as numpy arrays, step) of the newest (or the given) checkpoint step in `model_dir`.

  `model_dir` may also be any other checkpoint spactor.checkpoint_io reads: a directory written by
  `python -m spactor.convert`, a Hugging Face T5 or a t5x checkpoint (a public T5, for example); its step is then
  the t5x step or None.
  """
  if os.path.isdir(model_dir) and not os.path.isdir(os.path.join(model_dir, "checkpoints")):
    loaded = checkpoint_io.load_params(model_dir, module.config, step)
    return loaded.params, loaded.step
  steps = checkpoint_steps(model_dir)
  if not steps:
    raise FileNotFoundError(f"no checkpoints under {os.path.join(model_dir, 'checkpoints')}: train a model first "
                            "(python -m spactor.train ...)")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint step {step} in {model_dir} (steps: {steps})")
  target = abstract_t5_params(module)
  item = {"params": jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), target)}
  restore_args = {"params": jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)}
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(model_dir), "checkpoints"),
                                  item_handlers={"state": ocp.PyTreeCheckpointHandler()})
  try:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True)))
  except (ValueError, KeyError) as e:
    raise ValueError(f"checkpoint {model_dir} step {step} does not hold a T5 of the configured shape "
                     f"(size / version / vocabulary): {e}") from e
  finally:
    manager.close()
  params = restored["state"]["params"]
  for path, (want, got) in zip(jax.tree_util.tree_flatten_with_path(target)[0],
                               zip(jax.tree.leaves(target), jax.tree.leaves(params))):
    if tuple(got.shape) != tuple(want.shape):
      raise ValueError(f"checkpoint {model_dir} step {step}: {jax.tree_util.keystr(path[0])} has shape "
                       f"{got.shape}, the configured model needs {want.shape} (size / version / vocabulary?)")
  return params, step
