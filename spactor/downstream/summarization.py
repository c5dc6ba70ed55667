"""Abstractive summarization: CNN/DailyMail and XSum as T5 casts them ('summarize: <article>' -> summary).

ROUGE-1/2/Lsum F-measures from `rouge-score` (T5's `metrics.rouge`: one sentence a line for ROUGE-Lsum).
"""
import functools
from typing import Optional, Tuple

import seqio

from spactor.downstream import common
from spactor.downstream import metrics

SPLITS = ('train', 'validation', 'test')
# task name -> (TFDS name, article field, summary field)
DATASETS = {
    'cnn_dailymail': ('cnn_dailymail:3.4.0', 'article', 'highlights'),
    'xsum': ('xsum:1.1.0', 'document', 'summary'),
}


def summarize(x: dict, article_key: str, summary_key: str) -> dict:
  """T5's `summarize` preprocessor."""
  return {'inputs': common.join(['summarize:', x[article_key]]), 'targets': x[summary_key]}


def task_names() -> Tuple[str, ...]:
  return tuple(DATASETS)


def register(vocab: Optional[seqio.Vocabulary] = None) -> None:
  vocab = vocab or common.default_vocabulary()
  for name, (tfds_name, article_key, summary_key) in DATASETS.items():
    preprocess = seqio.map_over_dataset(functools.partial(summarize, article_key=article_key,
                                                          summary_key=summary_key))
    common.register_task(name, common.tfds_source(tfds_name, SPLITS), [preprocess], None, [metrics.rouge], vocab)
