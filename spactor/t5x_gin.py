"""Values the t5x run files (gin/t5x/runs) compute, so that their bindings mean what they say or stop the run.

t5x's binaries take TRAIN_STEPS and a checkpoint path; the project's trainer takes TAU. These functions make
`--gin.TAU=τ` mean τ under t5x too (stage 1 trains to step τ, stage 2 restores `<STAGE1_DIR>/checkpoint_<τ>`),
stop with a named error where TAU would mean nothing (fine-tuning, evaluation, a τ other than 0 in the SC
baseline), and give the model the vocabulary of the task it runs on (so the sotu tasks get the sotu vocabulary).
gin only: each is bound to a t5x argument that is always read (`train.total_steps`, the restore path, ...).
"""
import importlib
import re
from typing import Optional, TypeVar

import seqio

T = TypeVar('T')


def _check_tau(tau, name: str = 'TAU') -> int:
  if isinstance(tau, bool) or not isinstance(tau, int) or tau < 0:
    raise ValueError(f'{name} must be a non-negative integer number of steps, got {tau!r}')
  return tau


def stage1_steps(tau: Optional[int] = None, train_steps: Optional[int] = None) -> int:
  """Stage 1 trains to step τ: TAU, or TRAIN_STEPS (t5x's name for the same number), or both when they agree."""
  if tau is None and train_steps is None:
    raise ValueError('stage 1 trains to step τ: pass --gin.TAU=<τ> (or --gin.TRAIN_STEPS=<τ>)')
  if tau is not None and train_steps is not None and tau != train_steps:
    raise ValueError(f'stage 1 trains to step τ, but TAU={tau!r} and TRAIN_STEPS={train_steps!r} differ: '
                     'give one of them')
  steps = _check_tau(train_steps if tau is None else tau)
  if steps == 0:
    raise ValueError('TAU=0 is the SC baseline, which has no stage 1: run gin/t5x/runs/sc_baseline.gin')
  return steps


def stage1_checkpoint(stage1_dir: Optional[str] = None, tau: Optional[int] = None) -> str:
  """`<STAGE1_DIR>/checkpoint_<τ>`: the checkpoint t5x writes at the last step of stage 1."""
  if stage1_dir is None or tau is None:
    raise ValueError('stage 2 continues from stage 1 at step τ: pass --gin.TAU=<τ> and --gin.STAGE1_DIR='
                     "\"'<stage-1 MODEL_DIR>'\" (or --gin.STAGE1_CHECKPOINT=\"'<dir>/checkpoint_<τ>'\")")
  if _check_tau(tau) == 0:
    raise ValueError('TAU=0 is the SC baseline, which has no stage 1: run gin/t5x/runs/sc_baseline.gin')
  return f'{stage1_dir.rstrip("/")}/checkpoint_{tau}'


def stage2_steps(train_steps: int, tau: Optional[int] = None, checkpoint: Optional[str] = None) -> int:
  """TRAIN_STEPS of stage 2 (the total), checked against τ: the step of the stage-1 checkpoint it restores."""
  found = re.search(r'checkpoint_(\d+)/*$', checkpoint or '')
  if tau is not None and found and int(found.group(1)) != _check_tau(tau):
    raise ValueError(f'TAU={tau!r} but STAGE1_CHECKPOINT={checkpoint!r} is the checkpoint of step '
                     f'{found.group(1)}: give one of them')
  step = tau if tau is not None else int(found.group(1)) if found else None
  if step is not None and not (isinstance(train_steps, int) and train_steps > step):
    raise ValueError(f'stage 2 goes on from step τ={step} to TRAIN_STEPS, which must be larger: got {train_steps!r}')
  return train_steps


def sc_baseline_steps(train_steps: int, tau: Optional[int] = None) -> int:
  """TRAIN_STEPS of the SC baseline, which is SpacTor with τ = 0: any other TAU is a mistake."""
  if tau is not None and _check_tau(tau) != 0:
    raise ValueError(f'the SC baseline is τ = 0, got TAU={tau!r}: run gin/t5x/runs/spactor_stage1.gin and '
                     'spactor_stage2.gin for τ > 0 (launch_tpu.sh --tau)')
  return train_steps


def without_tau(value: T, tau: Optional[int] = None, run: str = 'this run') -> T:
  """value, unless TAU was given to a run where τ means nothing (fine-tuning, evaluation)."""
  if tau is not None:
    raise ValueError(f'TAU={tau!r} means nothing to {run}: τ is chosen at pre-training (stage 1 and stage 2)')
  return value


def task_vocabulary(task: Optional[str], module: Optional[str] = None) -> seqio.Vocabulary:
  """The vocabulary of a SeqIO task or mixture (imported from `module` first, as t5x's DatasetConfig.module).

  The model's embedding is sized from it, so a model always matches the tasks it trains or is evaluated on.
  """
  if task is None:
    raise ValueError('the model takes the vocabulary of its task: set MIXTURE_OR_TASK_NAME (a run file under '
                     'gin/t5x/runs does), or VOCABULARY itself')
  if module:
    importlib.import_module(module)
  features = seqio.get_mixture_or_task(task).output_features
  vocabulary = features['targets'].vocabulary
  if 'inputs' in features and features['inputs'].vocabulary != vocabulary:
    raise ValueError(f'task {task!r} has different inputs and targets vocabularies; the model shares one')
  return vocabulary
