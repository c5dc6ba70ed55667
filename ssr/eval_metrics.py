"""Metrics the SSR paper reports beside the project's downstream ones: METEOR and CIDEr for question generation
(Table 2, with BLEU-4 from spactor.downstream).

Both take seqio's metric arguments (`targets`, `predictions`; a target may be a list of references); METEOR is a
percentage as the paper prints it, CIDEr as coco-caption prints it (x10).

Text is compared as the question-generation evaluation of Du et al. (2017) does: lower-cased, split on
whitespace (their data is tokenized already).

- METEOR: nltk's `meteor_score` (Banerjee & Lavie, 2005: exact, then Porter-stem matches; F_mean with alpha 0.9,
  fragmentation penalty 0.5 (chunks / matches)^3), averaged over sentences. WordNet synonyms are left out: nltk
  reads WordNet from its data directory and no PyPI package ships it, so the match stages are exact + stem. The
  coco-caption scorer that the QG literature runs (Meteor 1.5, a Java jar) also matches synonyms and paraphrases
  and has other parameters, so these numbers are lower than the paper's; compare runs here with each other.
- CIDEr: CIDEr-D as coco-caption (pycocoevalcap) computes it: tf-idf weighted 1-4-gram vectors with document
  frequencies from the references of the evaluated set, clipped hypothesis counts, a Gaussian length penalty
  (sigma 6), the mean over n-gram orders and references, x10. Ours, checked against pycocoevalcap's numbers.
M^2 for GEC is ssr.maxmatch (the CoNLL-2014 scorer's algorithm); ssr.eval_tasks scores with it.
"""
import collections
import math
from typing import Sequence

import numpy as np



def _tokens(text: str) -> list[str]:
  return text.lower().split()


def _references(targets) -> list[list[str]]:
  """Each example's references as a list of strings (seqio targets may be a string or a list of them)."""
  return [[t] if isinstance(t, str) else list(t) for t in targets]


class _NoSynonyms:
  """A stand-in for nltk's WordNet reader: no synonyms, so METEOR matches exact words and stems only."""

  @staticmethod
  def synsets(*args, **kwargs):
    del args, kwargs
    return []


def meteor(targets, predictions) -> dict[str, float]:
  """Mean sentence METEOR (exact + stem matches; see the module docstring), in percent."""
  from nltk.stem.porter import PorterStemmer
  from nltk.translate.meteor_score import meteor_score
  stemmer = PorterStemmer()
  scores = [meteor_score([_tokens(r) for r in refs], _tokens(p), stemmer=stemmer, wordnet=_NoSynonyms())
            for refs, p in zip(_references(targets), predictions, strict=True)]
  return {"meteor": 100 * float(np.mean(scores)) if scores else 0.0}


def _ngram_counts(words: Sequence[str], n: int) -> collections.Counter:
  return collections.Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def cider_d(targets, predictions, n: int = 4, sigma: float = 6.0) -> dict[str, float]:
  """CIDEr-D over the set, as pycocoevalcap's Cider scorer computes it (x10)."""
  references = [[_ngram_counts(_tokens(r), n) for r in refs] for refs in _references(targets)]
  hypotheses = [_ngram_counts(_tokens(p), n) for p in predictions]
  if len(references) != len(hypotheses):
    raise ValueError(f"{len(references)} targets for {len(hypotheses)} predictions")
  if not hypotheses:
    return {"cider": 0.0}
  document_frequency = collections.Counter(g for refs in references for g in set().union(*refs))
  log_documents = math.log(float(len(references)))

  def vector(counts):
    """tf-idf per n-gram order, its norms, and the length coco-caption uses (its count of bigrams)."""
    vec = [{} for _ in range(n)]
    norm = np.zeros(n)
    length = 0
    for gram, tf in counts.items():
      k = len(gram) - 1
      vec[k][gram] = tf * (log_documents - math.log(max(1.0, document_frequency[gram])))
      norm[k] += vec[k][gram] ** 2
      if k == 1:
        length += tf
    return vec, np.sqrt(norm), length

  def similarity(hyp, ref):
    (hyp_vec, hyp_norm, hyp_len), (ref_vec, ref_norm, ref_len) = hyp, ref
    val = np.zeros(n)
    for k in range(n):
      for gram, weight in hyp_vec[k].items():
        val[k] += min(weight, ref_vec[k].get(gram, 0.0)) * ref_vec[k].get(gram, 0.0)
      if hyp_norm[k] != 0 and ref_norm[k] != 0:
        val[k] /= hyp_norm[k] * ref_norm[k]
      val[k] *= math.exp(-((hyp_len - ref_len) ** 2) / (2 * sigma ** 2))
    return val

  scores = []
  for hyp_counts, refs in zip(hypotheses, references):
    hyp = vector(hyp_counts)
    total = sum((similarity(hyp, vector(r)) for r in refs), np.zeros(n))
    scores.append(float(np.mean(total)) / len(refs) * 10.0)
  return {"cider": float(np.mean(scores))}


def qg_metrics(targets, predictions) -> dict[str, float]:
  """METEOR and CIDEr-D of generated questions (BLEU-4 comes from spactor.downstream's QG task)."""
  return {**meteor(targets, predictions), **cider_d(targets, predictions)}
