"""Official downstream metrics as SeqIO metric functions, following the T5 library's (t5/evaluation/metrics.py).

Each takes postprocessed `(targets, predictions)` (or `(targets, scores)` for score-based metrics, which SeqIO
tells apart by the argument name) and returns {name: value}, in percent as T5 reports them. The numerics come
from maintained packages: scikit-learn (accuracy, F1, Matthews), scipy (Pearson, Spearman), rouge-score
(ROUGE-1/2/Lsum), sacrebleu (BLEU-4). Only what has no maintained implementation is written here: SQuAD's
official answer normalization and token F1 (SQuAD v1.1 evaluate script), grouping for MultiRC and ReCoRD.

Conventions kept from T5: class ids come from `postprocessors.string_label_to_class_id`, which gives -1 for a
prediction that is no label word; F1 counts such a prediction as wrong (T5's `f1_score_with_invalid`), accuracy
and Matthews as one more class. ROUGE is the plain mean of per-example F-measures (T5 takes the bootstrap
median of the mean, which is random; the mean is what that median estimates).
"""
import collections
import re
import string
from typing import Callable, Dict, Mapping, Sequence

import numpy as np

Metrics = Dict[str, float]


# --- classification --------------------------------------------------------------------------------------


def accuracy(targets: Sequence, predictions: Sequence) -> Metrics:
  """Share of predictions equal to their target (labels, strings or class ids)."""
  from sklearn import metrics as skm
  return {'accuracy': 100 * float(skm.accuracy_score(targets, predictions))}


def sequence_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> Metrics:
  """Share of predicted texts exactly equal to the target text (T5's `sequence_accuracy`, no stripping)."""
  if not targets:
    return {'sequence_accuracy': 0.0}
  return {'sequence_accuracy': 100 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def _with_invalid_as_wrong(targets: Sequence[int], predictions: Sequence[int]) -> np.ndarray:
  """Binary predictions with every prediction other than 0/1 flipped to the opposite of its target."""
  targets, predictions = np.asarray(targets), np.array(predictions)
  invalid = (predictions != 0) & (predictions != 1)
  predictions[invalid] = 1 - targets[invalid]
  return predictions


def f1_score_with_invalid(targets: Sequence[int], predictions: Sequence[int]) -> Metrics:
  """Binary F1 of class 1 (T5's metric for MRPC, QQP, MultiRC answers); invalid predictions count as wrong."""
  from sklearn import metrics as skm
  predictions = _with_invalid_as_wrong(targets, predictions)
  return {'f1': 100 * float(skm.f1_score(np.asarray(targets), predictions, zero_division=0))}


def mean_multiclass_f1(num_classes: int) -> Callable[[Sequence[int], Sequence[int]], Metrics]:
  """Macro F1 over classes 0..num_classes-1 (CB's official metric); -1 is in no class, so it is wrong."""
  from sklearn import metrics as skm

  def mean_f1(targets: Sequence[int], predictions: Sequence[int]) -> Metrics:
    value = skm.f1_score(targets, predictions, labels=list(range(num_classes)), average='macro', zero_division=0)
    return {f'mean_{num_classes}class_f1': 100 * float(value)}

  mean_f1.__name__ = f'mean_{num_classes}class_f1'
  return mean_f1


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> Metrics:
  """Matthews correlation (CoLA's official metric), as scikit-learn defines it (0 when undefined)."""
  from sklearn import metrics as skm
  return {'matthews_corrcoef': 100 * float(skm.matthews_corrcoef(targets, predictions))}


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> Metrics:
  """Pearson correlation of scores (STS-B); NaN for fewer than 2 examples or a constant side, as scipy says."""
  from scipy import stats
  if len(targets) < 2:
    return {'pearson_corrcoef': float('nan')}
  return {'pearson_corrcoef': 100 * float(stats.pearsonr(targets, predictions)[0])}


def spearman_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> Metrics:
  """Spearman rank correlation (STS-B); ties get their mean rank; NaN for fewer than 2 examples."""
  from scipy import stats
  if len(targets) < 2:
    return {'spearman_corrcoef': float('nan')}
  return {'spearman_corrcoef': 100 * float(stats.spearmanr(targets, predictions)[0])}


# --- question answering ----------------------------------------------------------------------------------


def normalize_squad(text: str) -> str:
  """SQuAD v1.1's official `normalize_answer`: lower case, drop punctuation, articles and extra whitespace."""
  text = text.lower()
  text = ''.join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


def squad_f1(target: str, prediction: str) -> float:
  """Token-overlap F1 of one normalized answer pair (official v1.1: 0 when nothing is shared, even if both empty)."""
  target_tokens, prediction_tokens = target.split(), prediction.split()
  common = collections.Counter(target_tokens) & collections.Counter(prediction_tokens)
  num_same = sum(common.values())
  if num_same == 0:
    return 0.0
  precision, recall = num_same / len(prediction_tokens), num_same / len(target_tokens)
  return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> Metrics:
  """SQuAD EM and F1: for each question the best over its gold answers, then the mean over questions."""
  if not targets:
    return {'em': 0.0, 'f1': 0.0}
  targets = [[t] if isinstance(t, str) else list(t) for t in targets]
  em, f1 = [], []
  for answers, prediction in zip(targets, predictions):
    answers, prediction = [normalize_squad(a) for a in answers], normalize_squad(prediction)
    em.append(max((float(a == prediction) for a in answers), default=0.0))
    f1.append(max((squad_f1(a, prediction) for a in answers), default=0.0))
  return {'em': 100 * float(np.mean(em)), 'f1': 100 * float(np.mean(f1))}


# --- grouped metrics (MultiRC, ReCoRD) ---------------------------------------------------------------------


def all_match(targets: Sequence, predictions: Sequence) -> Metrics:
  """100 when every prediction of a group equals its target, else 0."""
  return {'exact_match': 100 * float(np.array_equal(np.asarray(targets), np.asarray(predictions)))}


def mean_group_metric(metric_fn: Callable, group_key: str = 'group', value_key: str = 'value') -> Callable:
  """`metric_fn` within each group of targets' `group_key`, averaged over groups (T5's `mean_group_metric`)."""

  def grouped(targets: Sequence[Mapping], predictions: Sequence[Mapping]) -> Metrics:
    groups = collections.defaultdict(lambda: ([], []))
    for target, prediction in zip(targets, predictions):
      groups[target[group_key]][0].append(target[value_key])
      groups[target[group_key]][1].append(prediction[value_key])
    scores = collections.defaultdict(list)
    for group_targets, group_predictions in groups.values():
      for name, value in metric_fn(group_targets, group_predictions).items():
        scores[name].append(value)
    return {name: float(np.mean(values)) for name, values in scores.items()}

  grouped.__name__ = f'mean_group_{getattr(metric_fn, "__name__", "metric")}'
  return grouped


def multirc_f1_over_all_answers(targets: Sequence[Mapping], predictions: Sequence[Mapping]) -> Metrics:
  """MultiRC F1a: binary F1 over every answer option of every question."""
  return f1_score_with_invalid([t['value'] for t in targets], [p['value'] for p in predictions])


def multirc_exact_match(targets: Sequence[Mapping], predictions: Sequence[Mapping]) -> Metrics:
  """MultiRC EM: share of questions whose answer options are all labelled right."""
  return mean_group_metric(all_match)(targets, predictions)


def deduplicate_metric(metric_fn: Callable, group_key: str = 'group', value_key: str = 'value') -> Callable:
  """`metric_fn` on the first example of each group only (T5's `deduplicate_metric`).

  ReCoRD's preprocessing repeats a query once per gold answer; scoring each query once keeps every query's
  weight equal, and its target holds all the gold answers anyway.
  """

  def deduplicated(targets: Sequence[Mapping], predictions: Sequence[Mapping]) -> Metrics:
    seen, kept_targets, kept_predictions = set(), [], []
    for target, prediction in zip(targets, predictions):
      if target[group_key] not in seen:
        seen.add(target[group_key])
        kept_targets.append(target[value_key])
        kept_predictions.append(prediction[value_key])
    return metric_fn(kept_targets, kept_predictions)

  deduplicated.__name__ = f'deduplicated_{getattr(metric_fn, "__name__", "metric")}'
  return deduplicated


def record(targets: Sequence[Mapping], predictions: Sequence[Mapping]) -> Metrics:
  """ReCoRD EM/F1: once per query, the best over its gold answers (SQuAD normalization and F1)."""
  return deduplicate_metric(squad)(targets, predictions)


# --- generation --------------------------------------------------------------------------------------------


def _sentences_on_lines(summary: str) -> str:
  """One sentence a line, which ROUGE-Lsum needs (T5's `_prepare_summary`: a newline after each ' . ')."""
  return summary.replace(' . ', ' .\n')


def rouge(targets: Sequence[str], predictions: Sequence[str], use_stemmer: bool = False) -> Metrics:
  """ROUGE-1/2/Lsum F-measure from `rouge-score` (Google's reimplementation of ROUGE-1.5.5), mean over examples."""
  from rouge_score import rouge_scorer
  keys = ('rouge1', 'rouge2', 'rougeLsum')
  if not targets:
    return {k: 0.0 for k in keys}
  scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=use_stemmer)
  scores = [scorer.score(_sentences_on_lines(t), _sentences_on_lines(p)) for t, p in zip(targets, predictions)]
  return {k: 100 * float(np.mean([s[k].fmeasure for s in scores])) for k in keys}


def bleu(targets: Sequence, predictions: Sequence[str], lowercase: bool = False) -> Metrics:
  """Corpus BLEU-4 from sacrebleu (13a tokenization, exp smoothing); a target may be a list of references."""
  import sacrebleu
  if not targets:
    return {'bleu': 0.0}
  references = [[t] if isinstance(t, str) else list(t) for t in targets]
  num_refs = max(len(r) for r in references)
  streams = [[r[i] if i < len(r) else None for r in references] for i in range(num_refs)]
  score = sacrebleu.corpus_bleu(list(predictions), streams, lowercase=lowercase, tokenize='13a')
  return {'bleu': float(score.score)}


# --- score-based (t5x.eval's score_batch: per-example sum of target-token log-likelihoods) ----------------


def target_loss(targets: Sequence[Mapping], scores: Sequence[float]) -> Metrics:
  """Mean cross-entropy per target token, as the trainer's loss (no z-loss); targets carry 'num_tokens'.

  t5x scores an example by the summed log-likelihood of its target tokens (EOS included); dividing the sum over
  examples by their token count gives the token-level loss, independent of how examples were batched.
  """
  num_tokens = float(sum(t['num_tokens'] for t in targets))
  if not num_tokens:
    return {'loss': float('nan')}
  return {'loss': -float(np.sum(scores)) / num_tokens}


def target_sequence_accuracy(targets: Sequence[Mapping], predictions: Sequence[str]) -> Metrics:
  """`sequence_accuracy` for targets postprocessed into {'text', 'num_tokens'} (the pre-training tasks)."""
  return sequence_accuracy([t['text'] for t in targets], predictions)
