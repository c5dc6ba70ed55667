"""SQuAD v1.1 reading comprehension (T5's `squad_v010_allanswers`) and SQuAD question generation (s2s-ft).

- `squad_v1`: 'question: <q> context: <c>' -> the first gold answer, all three texts with spaces around
  punctuation (T5's `_pad_punctuation`); EM/F1 with the official answer normalization, best over all gold answers.
- `squad_qg`: TFDS `squad_question_generation/split_du` (Du et al. 2017's train/dev/test split of SQuAD v1.1,
  the benchmark of the s2s-ft paper): 'generate question: answer: <a> context: <passage>' -> the question;
  corpus BLEU-4 (sacrebleu, lowercased as the QG literature scores it).
"""
from typing import Optional, Tuple

import seqio

from spactor.downstream import common
from spactor.downstream import metrics
from spactor.downstream import postprocessors

SQUAD_NAME = 'squad_v1'
SQUAD_TFDS = 'squad/v1.1:3.0.0'
QG_NAME = 'squad_qg'
QG_TFDS = 'squad_question_generation/split_du:3.0.0'


def squad_text_to_text(x: dict) -> dict:
  """T5's `squad` preprocessor (with context)."""
  answers = common.pad_punctuation(x['answers']['text'])
  question, context = common.pad_punctuation(x['question']), common.pad_punctuation(x['context'])
  return {'inputs': common.join(['question:', question, 'context:', context]), 'targets': answers[0],
          'id': x['id'], 'answers': answers}


def question_generation_text_to_text(x: dict) -> dict:
  return {'inputs': common.join(['generate question:', 'answer:', x['answer'], 'context:', x['context_passage']]),
          'targets': x['question']}


def lowercase_bleu(targets, predictions) -> dict:
  """BLEU-4 on lowercased text, as question generation is scored (Du et al. 2017; s2s-ft)."""
  return metrics.bleu(targets, predictions, lowercase=True)


def task_names() -> Tuple[str, ...]:
  return SQUAD_NAME, QG_NAME


def register(vocab: Optional[seqio.Vocabulary] = None) -> None:
  vocab = vocab or common.default_vocabulary()
  common.register_task(SQUAD_NAME, common.tfds_source(SQUAD_TFDS, ('train', 'validation')),
                       [seqio.map_over_dataset(squad_text_to_text)], postprocessors.qa, [metrics.squad], vocab)
  common.register_task(QG_NAME, common.tfds_source(QG_TFDS, ('train', 'validation', 'test')),
                       [seqio.map_over_dataset(question_generation_text_to_text)], None, [lowercase_bleu], vocab)
