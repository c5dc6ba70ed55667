"""GLUE as T5 casts it (t5/data/glue_utils.py, preprocessors.glue/stsb): 'cola sentence: ...' -> 'acceptable'.

inputs = '<benchmark> <key1>: <text1> <key2>: <text2>' with the example's text fields in sorted order (so MNLI is
'mnli hypothesis: ... premise: ...'), targets = the TFDS label word ('<unk>' for unlabelled test examples);
STS-B's target is the score rounded to the nearest 0.2, as '3.8'. The official metric of each task (T5's
GLUE_METRICS) runs on class ids from `string_label_to_class_id` (or floats for STS-B).

MNLI trains on `glue_mnli`; its `validation`/`test` are the matched sets, and the eval-only
`glue_mnli_mismatched` has the mismatched ones. The `glue` mixture samples every task with a train split in
proportion to its number of examples (T5's `glue_v002_proportional`).
"""
import dataclasses
import functools
from typing import Callable, Optional, Tuple

import seqio
import tensorflow as tf

from spactor.downstream import common
from spactor.downstream import metrics
from spactor.downstream import postprocessors

TFDS_VERSION = '2.0.0'
MIXTURE_NAME = 'glue'
SPLITS = ('train', 'validation', 'test')


@dataclasses.dataclass(frozen=True)
class GlueTask:
  """One GLUE task: TFDS config, label words (None: a regression), text fields, metrics and split names."""
  config: str
  label_names: Optional[Tuple[str, ...]]
  feature_names: Tuple[str, ...]
  metric_fns: Tuple[Callable, ...]
  splits: object = SPLITS
  trains: bool = True

  @property
  def name(self) -> str:
    return f'glue_{self.config}'


TASKS = (
    GlueTask('cola', ('unacceptable', 'acceptable'), ('sentence',), (metrics.matthews_corrcoef,)),
    GlueTask('sst2', ('negative', 'positive'), ('sentence',), (metrics.accuracy,)),
    GlueTask('mrpc', ('not_equivalent', 'equivalent'), ('sentence1', 'sentence2'),
             (metrics.f1_score_with_invalid, metrics.accuracy)),
    GlueTask('qqp', ('not_duplicate', 'duplicate'), ('question1', 'question2'),
             (metrics.f1_score_with_invalid, metrics.accuracy)),
    GlueTask('stsb', None, ('sentence1', 'sentence2'), (metrics.pearson_corrcoef, metrics.spearman_corrcoef)),
    GlueTask('mnli', ('entailment', 'neutral', 'contradiction'), ('hypothesis', 'premise'), (metrics.accuracy,),
             splits={'train': 'train', 'validation': 'validation_matched', 'test': 'test_matched'}),
    GlueTask('qnli', ('entailment', 'not_entailment'), ('question', 'sentence'), (metrics.accuracy,)),
    GlueTask('rte', ('entailment', 'not_entailment'), ('sentence1', 'sentence2'), (metrics.accuracy,)),
    GlueTask('wnli', ('not_entailment', 'entailment'), ('sentence1', 'sentence2'), (metrics.accuracy,)),
)
MNLI_MISMATCHED = GlueTask('mnli', TASKS[5].label_names, TASKS[5].feature_names, (metrics.accuracy,),
                           splits={'validation': 'validation_mismatched', 'test': 'test_mismatched'}, trains=False)
MNLI_MISMATCHED_NAME = 'glue_mnli_mismatched'


def text_to_text(x: dict, benchmark: str, label_names: Optional[Tuple[str, ...]],
                 feature_names: Tuple[str, ...]) -> dict:
  """T5's `glue` (or `stsb` when label_names is None) on one example."""
  parts = [benchmark]
  for key in feature_names:
    parts += [f'{key}:', x[key]]
  if label_names is None:
    target = tf.strings.as_string(tf.round(tf.cast(x['label'], tf.float32) * 5) / 5, precision=1)
  else:
    target = common.label_word(x['label'], label_names)
  return {'inputs': tf.strings.join(parts, separator=' '), 'targets': target, 'idx': x['idx']}


def postprocess_fn(task: GlueTask) -> Callable:
  if task.label_names is None:
    return postprocessors.string_to_float
  return functools.partial(postprocessors.string_label_to_class_id, label_classes=task.label_names)


def register_one(task: GlueTask, vocab: seqio.Vocabulary, name: Optional[str] = None) -> seqio.Task:
  preprocess = seqio.map_over_dataset(functools.partial(
      text_to_text, benchmark=task.config, label_names=task.label_names, feature_names=task.feature_names))
  return common.register_task(name or task.name, common.tfds_source(f'glue/{task.config}:{TFDS_VERSION}',
                                                                     task.splits),
                              [preprocess], postprocess_fn(task), task.metric_fns, vocab)


def task_names() -> Tuple[str, ...]:
  return tuple(t.name for t in TASKS) + (MNLI_MISMATCHED_NAME,)


def register(vocab: Optional[seqio.Vocabulary] = None) -> None:
  """Registers every GLUE task and the `glue` mixture over the trainable ones."""
  vocab = vocab or common.default_vocabulary()
  for task in TASKS:
    register_one(task, vocab)
  register_one(MNLI_MISMATCHED, vocab, MNLI_MISMATCHED_NAME)
  common.register_mixture(MIXTURE_NAME, [t.name for t in TASKS if t.trains])
