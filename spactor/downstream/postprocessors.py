"""SeqIO postprocessors: decoded text -> what a metric compares (T5's, t5/data/postprocessors.py).

SeqIO calls `postprocess_fn(text, example=ex, is_target=...)` on each decoded prediction and on each target
(the `targets_pretokenized` text when the task keeps it), with the preprocessed example beside it, so a target
can be replaced by richer gold data (all SQuAD answers, a MultiRC question id).
"""
from typing import Any, Mapping, Optional, Sequence

import numpy as np


def _text(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def string_label_to_class_id(string_label: str, label_classes: Sequence[str], default: int = -1,
                             example: Optional[Mapping] = None, is_target: bool = False) -> int:
  """The index of the label word, or `default` (-1) for anything else (an invalid prediction)."""
  del example, is_target
  string_label = _text(string_label)
  return label_classes.index(string_label) if string_label in label_classes else default


def string_to_float(string: str, default: float = -1.0, example: Optional[Mapping] = None,
                    is_target: bool = False) -> float:
  """The number a prediction spells (STS-B), or `default` when it spells none."""
  del example, is_target
  try:
    return float(_text(string))
  except ValueError:
    return default


def qa(answer: str, example: Optional[Mapping] = None, is_target: bool = False):
  """Predictions stay text; a target becomes the list of all gold answers of its example (SQuAD)."""
  if is_target:
    return [_text(a) for a in example['answers']]
  return _text(answer)


def multirc(string_label: str, example: Optional[Mapping] = None, is_target: bool = False) -> dict:
  """{'value': class id}; targets also carry their question as 'group' (for MultiRC's exact match)."""
  result = {'value': string_label_to_class_id(string_label, ('False', 'True'))}
  if is_target:
    result['group'] = (int(example['idx/paragraph']), int(example['idx/question']))
  return result


def record(answer: str, example: Optional[Mapping] = None, is_target: bool = False) -> dict:
  """{'group': (passage, query), 'value': ...}: all gold answers for a target, the text for a prediction.

  SeqIO hands predictions the example too, so both sides know their query; the metric keeps one per query.
  """
  group = (int(example['idx/passage']), int(example['idx/query']))
  value = [_text(a) for a in example['answers']] if is_target else _text(answer)
  return {'group': group, 'value': value}


def text_with_num_tokens(text: str, example: Optional[Mapping] = None, is_target: bool = False):
  """Targets become {'text', 'num_tokens'} (non-pad target ids, EOS included), so the loss can be per token."""
  if is_target:
    return {'text': _text(text), 'num_tokens': int(np.count_nonzero(example['targets']))}
  return _text(text)
