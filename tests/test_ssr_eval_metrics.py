"""METEOR, CIDEr-D and M^2: hand-computed values on tiny inputs and parity with the reference scorers' outputs."""
import json
import math
import os

import pytest

from ssr import eval_metrics, maxmatch

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def test_meteor_exact_and_stem_matches_by_hand():
  # Identical: P = R = 1, one chunk of 6 matches: (1 - 0.5 (1/6)^3) * 1.
  same = eval_metrics.meteor(["the cat sat on the mat"], ["The cat sat on the mat"])["meteor"]
  assert same == pytest.approx(100 * (1 - 0.5 / 216))
  # `cat` ~ `cats` by Porter stem, `run` != `ran`: 2 matches of 3, one chunk: F_mean = 2/3, penalty 0.5 (1/2)^3.
  stem = eval_metrics.meteor(["the cats ran"], ["the cat run"])["meteor"]
  assert stem == pytest.approx(100 * (2 / 3) * (1 - 0.0625))
  assert eval_metrics.meteor(["a big house"], ["large"])["meteor"] == 0.0  # no WordNet synonyms
  # The mean over sentences; the best of several references.
  both = eval_metrics.meteor([["x y", "the cat sat on the mat"], "the cats ran"],
                             ["the cat sat on the mat", "the cat run"])["meteor"]
  assert both == pytest.approx((same + stem) / 2)


def test_cider_d_by_hand():
  # Two examples, every n-gram in one document: idf = log 2 everywhere.
  perfect = eval_metrics.cider_d(["a b", "c d"], ["a b", "c d"])["cider"]
  assert perfect == pytest.approx(10 * (1 + 1 + 0 + 0) / 4)  # unigram and bigram cosines 1, no 3-/4-grams
  # `c` against `c d`: unigram cosine 1/sqrt(2), no bigram, 1 bigram shorter: Gaussian penalty exp(-1 / 72).
  short = eval_metrics.cider_d(["a b", "c d"], ["a b", "c"])["cider"]
  assert short == pytest.approx((5.0 + 10 * (1 / math.sqrt(2)) * math.exp(-1 / 72) / 4) / 2)
  assert eval_metrics.cider_d(["a b"], ["a b"])["cider"] == 0.0  # one document: every idf is 0, as in coco


def test_cider_d_matches_pycocoevalcap():
  """Sets of 1-3 references per example, scored by pycocoevalcap 1.2 (tests/fixtures/ssr_qg/make_fixtures.py)."""
  with open(os.path.join(FIXTURES, "ssr_qg", "cider.json")) as f:
    sets = json.load(f)
  assert len(sets) >= 5
  for s in sets:
    assert eval_metrics.cider_d(s["references"], s["predictions"])["cider"] == pytest.approx(s["cider"], abs=1e-9)


M2_TEXT = """S He go to school yesterday .
A 1 2|||R:VERB:TENSE|||went|||REQUIRED|||-NONE-|||0

S I like apple .
A 2 3|||R:NOUN:NUM|||apples|||REQUIRED|||-NONE-|||0
A 2 2|||M:DET|||an||the|||REQUIRED|||-NONE-|||1

S It is fine .
A -1 -1|||noop|||-NONE-|||REQUIRED|||-NONE-|||0
"""


def test_m2_by_hand():
  sentences = maxmatch.parse_m2(M2_TEXT)
  assert [s.source for s in sentences] == ["He go to school yesterday .", "I like apple .", "It is fine ."]
  assert sentences[1].gold == {0: [(2, 3, "apple", ("apples",))], 1: [(2, 2, "", ("an", "the"))]}
  assert sentences[2].gold == {0: []}  # a noop annotation is no edit
  # All right: 1 + 1 correct (annotator 1 chosen for sentence 2: `an` inserted), no spurious edit.
  perfect = maxmatch.m2_score(["He went to school yesterday .", "I like an apple .", "It is fine ."], sentences)
  assert (perfect["correct"], perfect["proposed"], perfect["gold"]) == (2, 2, 2) and perfect["f"] == 1.0
  # `go to` -> `goes to the`: the edits join over `to` (cheaper than two), match nothing; `It is fine` untouched.
  wrong = maxmatch.m2_score(["He goes to the school yesterday .", "I like apples .", "It is fine ."], sentences)
  assert (wrong["correct"], wrong["proposed"], wrong["gold"]) == (1, 2, 2)
  assert wrong["precision"] == 0.5 and wrong["recall"] == 0.5 and wrong["f"] == pytest.approx(0.5)
  nothing = maxmatch.m2_score(["He go to school yesterday .", "I like apple .", "It is fine ."], sentences)
  assert (nothing["precision"], nothing["recall"], nothing["f"]) == (1.0, 0.0, 0.0)  # P = 1 with no proposed edit
  with pytest.raises(ValueError, match="2 hypotheses for 3"):
    maxmatch.m2_score(["a", "b"], sentences)


def test_m2_matches_the_reference_scorer():
  """Random sentences, gold edits of 1-3 annotators and hypotheses, scored by the NUS M2 scorer 3.2
  (tests/fixtures/ssr_m2/make_fixtures.py), with max_unchanged_words 2 and 0."""
  with open(os.path.join(FIXTURES, "ssr_m2", "cases.json")) as f:
    cases = json.load(f)
  assert len(cases) >= 40
  for case in cases:
    result = maxmatch.m2_score(case["hypotheses"], maxmatch.parse_m2(case["m2"]),
                               max_unchanged_words=case["max_unchanged_words"])
    assert (result["precision"], result["recall"], result["f"]) == pytest.approx(
        (case["precision"], case["recall"], case["f05"]), abs=1e-12)
