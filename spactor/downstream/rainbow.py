"""The Rainbow commonsense tasks that TFDS provides: PIQA, HellaSwag, CosmosQA and WinoGrande.

(Rainbow, Lourie et al. 2021, also has alphaNLI and SocialIQa, which TFDS does not carry.) Each example is
written in the style of Rainbow's text-to-text format: '[<task>]:' then one tagged field a line, the answer
options tagged with their index from 0, and the target is the right option's index as text ('0', '1', ...).
Metric: accuracy of that text (an answer that is no index is simply wrong).
"""
from typing import Callable, Dict, Optional, Tuple

import seqio
import tensorflow as tf

from spactor.downstream import common
from spactor.downstream import metrics


def _tagged(tag: str, text) -> list:
  return [f'<{tag}>', text, f'</{tag}>\n']


def _render(task: str, fields: list) -> tf.Tensor:
  parts = [f'[{task}]:\n']
  for tag, text in fields:
    parts += _tagged(tag, text)
  return tf.strings.strip(tf.strings.join(parts))


def _label(label) -> tf.Tensor:
  """The answer's index as text; '<unk>' for -1 (unlabelled test sets), as the GLUE tasks write it."""
  label = tf.cast(label, tf.int64)
  return tf.where(label < 0, tf.constant('<unk>'), tf.strings.as_string(label))


def piqa(x: dict) -> dict:
  """'[physicaliqa]:\\n<goal>..</goal>\\n<solution0>..</solution0>\\n<solution1>..</solution1>' -> '0'/'1'."""
  inputs = _render('physicaliqa', [('goal', x['goal']), ('solution0', x['sol1']), ('solution1', x['sol2'])])
  return {'inputs': inputs, 'targets': _label(x['label'])}


def hellaswag(x: dict) -> dict:
  """'[hellaswag]:\\n<context>..</context>\\n<ending0>..</ending0>...' -> '0'..'3'."""
  endings = x['endings']
  fields = [('context', x['context'])] + [(f'ending{i}', endings[i]) for i in range(4)]
  return {'inputs': _render('hellaswag', fields), 'targets': _label(x['label'])}


def cosmosqa(x: dict) -> dict:
  """'[cosmosqa]:\\n<context>..</context>\\n<question>..</question>\\n<answer0>..' -> '0'..'3'."""
  fields = [('context', x['context']), ('question', x['question'])] + [
      (f'answer{i}', x[f'answer{i}']) for i in range(4)]
  return {'inputs': _render('cosmosqa', fields), 'targets': _label(x['label'])}


def winogrande(x: dict) -> dict:
  """'[winogrande]:\\n<sentence>..</sentence>\\n<option0>..</option0>\\n<option1>..</option1>' -> '0'/'1'."""
  fields = [('sentence', x['sentence']), ('option0', x['option1']), ('option1', x['option2'])]
  return {'inputs': _render('winogrande', fields), 'targets': _label(x['label'])}


def _pad_endings(x: dict) -> dict:
  """HellaSwag always has four endings; padding guards against malformed rows instead of failing the graph."""
  endings = tf.concat([x['endings'], tf.fill([4], '')], axis=0)[:4]
  return dict(x, endings=endings)


# task name -> (TFDS name, splits, formatter)
TASKS: Dict[str, Tuple[str, object, Callable]] = {
    'rainbow_piqa': ('piqa:1.0.0', ('train', 'validation'), piqa),
    'rainbow_hellaswag': ('hellaswag:1.1.0', ('train', 'validation', 'test'),
                          lambda x: hellaswag(_pad_endings(x))),
    'rainbow_cosmosqa': ('cosmos_qa:1.0.0', ('train', 'validation', 'test'), cosmosqa),
    'rainbow_winogrande': ('winogrande:1.2.0', {'train': 'train_xl', 'validation': 'validation', 'test': 'test'},
                           winogrande),
}


def task_names() -> Tuple[str, ...]:
  return tuple(TASKS)


def register(vocab: Optional[seqio.Vocabulary] = None) -> None:
  vocab = vocab or common.default_vocabulary()
  for name, (tfds_name, splits, formatter) in TASKS.items():
    common.register_task(name, common.tfds_source(tfds_name, splits), [seqio.map_over_dataset(formatter)], None,
                         [metrics.accuracy], vocab)
