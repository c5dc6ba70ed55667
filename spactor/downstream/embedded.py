"""The embedded downstream task: Rotten Tomatoes sentence polarity, offline, in the sotu corpus's vocabulary.

`spactor_rt_polarity`: 'rt_polarity sentence: <review sentence>' -> 'positive' | 'negative' (SST-2's format in
T5, our own prefix), splits train/validation/test from `rotten_tomatoes`; accuracy and F1 of 'positive'.
Its vocabulary is the embedded pre-training corpus's (spactor.vocab.sotu_vocabulary()), so a model pre-trained
by `make demo` fine-tunes on it directly. `feature_lengths()` gives lengths that truncate no example.
"""
import functools
from typing import Dict, Optional

import seqio
import tensorflow as tf

from spactor import vocab as vocab_lib
from spactor.downstream import common
from spactor.downstream import metrics
from spactor.downstream import postprocessors
from spactor.downstream import rotten_tomatoes

TASK_NAME = 'spactor_rt_polarity'
PREFIX = 'rt_polarity sentence:'
LABEL_CLASSES = ('negative', 'positive')
METRIC_FNS = (metrics.accuracy, metrics.f1_score_with_invalid)


def vocabulary() -> seqio.Vocabulary:
  """The sotu corpus's SentencePiece vocabulary (built and cached on first use)."""
  return vocab_lib.sotu_vocabulary()


def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
  """{'sentence', 'label'} per example, in file order unless `shuffle_files` (reproducible with `seed`)."""
  examples = rotten_tomatoes.examples(split)
  ds = tf.data.Dataset.from_tensor_slices({'sentence': [t for t, _ in examples], 'label': [l for _, l in examples]})
  if shuffle_files:
    ds = ds.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
  return ds


def text_to_text(x: dict) -> dict:
  return {'inputs': tf.strings.join([PREFIX, x['sentence']], separator=' '), 'targets': x['label']}


def register(vocab: Optional[seqio.Vocabulary] = None) -> seqio.Task:
  return common.register_task(
      TASK_NAME, seqio.FunctionDataSource(dataset_fn=dataset_fn, splits=rotten_tomatoes.SPLITS),
      [seqio.map_over_dataset(text_to_text)],
      functools.partial(postprocessors.string_label_to_class_id, label_classes=LABEL_CLASSES), METRIC_FNS,
      vocab or vocabulary())


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def feature_lengths(vocab: Optional[seqio.Vocabulary] = None, multiple: int = 8) -> Dict[str, int]:
  """{'inputs', 'targets'}: the longest tokenized example of any split plus EOS, rounded up to `multiple`."""
  vocab = vocab or seqio.get_mixture_or_task(TASK_NAME).output_features['inputs'].vocabulary
  return _lengths_for(vocab.sentencepiece_model_file, vocab.extra_ids, multiple)


@functools.lru_cache(maxsize=None)
def _lengths_for(model_file: str, extra_ids: int, multiple: int) -> Dict[str, int]:
  vocab = seqio.SentencePieceVocabulary(model_file, extra_ids=extra_ids)
  examples = [ex for split in rotten_tomatoes.SPLITS for ex in rotten_tomatoes.examples(split)]
  inputs = max(len(vocab.encode(f'{PREFIX} {text}')) for text, _ in examples) + 1
  targets = max(len(vocab.encode(label)) for label in LABEL_CLASSES) + 1
  return {'inputs': _round_up(inputs, multiple), 'targets': _round_up(targets, multiple)}
