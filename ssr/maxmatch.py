"""The MaxMatch (M^2) scorer for grammatical error correction (Dahlmeier & Ng, 2012), as CoNLL-2014 scores it.

A system's edits are not given: they are the edit sequence, among all that turn the source into the hypothesis,
that agrees most with the gold edits. The scorer builds the lattice of every minimal Levenshtein alignment of the
source and hypothesis tokens (with substitutions costing 1 and 2, merged), adds transitive arcs that join
neighbouring edits over at most `max_unchanged_words` unchanged tokens, gives arcs that match a gold edit a large
negative weight and other edits a small extra cost, and takes the shortest path (Bellman-Ford). Counts are
summed over the corpus; with several annotators, each sentence takes the annotator that maximises the running
F_beta. P, R, F_0.5 follow.

This is our implementation of the algorithm of the NUS M2 scorer 3.2 (the reference scorer is Python 2 and GPL):
the same lattice, edge order, weights and tie-breaking, so that it gives the same counts; tests/fixtures/m2/
holds the reference scorer's outputs on small cases, which tests/test_ssr_eval_metrics.py checks.
Edits are (start, end, original, correction) with token offsets into the source.
"""
import collections
import dataclasses
from typing import Sequence

EPSILON = 0.001
INF = float("inf")


@dataclasses.dataclass(frozen=True)
class M2Sentence:
  """One source sentence and its gold edits per annotator: {annotator: [(start, end, original, corrections)]}."""
  source: str
  gold: dict


def parse_m2(text: str) -> list[M2Sentence]:
  """Reads an M2 file: `S tokens` then `A start end|||type|||correction(s)||...|||REQUIRED|||-NONE-|||annotator`."""
  sentences = []
  for block in text.strip().split("\n\n"):
    lines = [line for line in block.splitlines() if line.strip()]
    if not lines:
      continue
    sources = [line[2:].strip() for line in lines if line.startswith("S ")]
    if not sources:
      raise ValueError(f"an M2 block has no `S` line: {block[:80]!r}")
    tokens = " ".join(sources).split()
    annotations = collections.defaultdict(list)
    for line in lines[1:]:
      if line.startswith(("S ", "I ")):
        continue
      if not line.startswith("A "):
        raise ValueError(f"an M2 line is neither `S` nor `A`: {line[:80]!r}")
      fields = line[2:].split("|||")
      start, end = (int(x) for x in fields[0].split()[:2])
      if fields[1] == "noop":
        start = end = -1
      corrections = tuple("" if c == "-NONE-" else c.strip() for c in fields[2].split("||"))
      annotations[int(fields[5])].append((start, end, " ".join(tokens[start:end]), corrections))
    offset = 0
    for source in sources:
      offset += len(source.split())
      gold = {a: [e for e in edits if 0 <= e[0] <= offset and 0 <= e[1] <= offset]
              for a, edits in annotations.items()} or {0: []}
      sentences.append(M2Sentence(source, gold))
  return sentences


# --- the edit lattice ---------------------------------------------------------------------------------------
# An edit on an arc is (kind, start, end, original, correction, unchanged tokens); kind: noop, sub, del, ins.


def _alignment_backpointers(source, hypothesis, sub_cost):
  """For each cell of the Levenshtein matrix, its predecessors on minimal alignments and the edit of each step."""
  rows, cols = len(source) + 1, len(hypothesis) + 1
  cost = [[0] * cols for _ in range(rows)]
  back = {}
  for i in range(1, rows):
    cost[i][0] = i
    back[(i, 0)] = [((i - 1, 0), ("del", i - 1, i, source[i - 1], "", 0))]
  for j in range(1, cols):
    cost[0][j] = j
    back[(0, j)] = [((0, j - 1), ("ins", 0, 0, "", hypothesis[j - 1], 0))]  # leading insertions start at 0
  for i in range(1, rows):
    for j in range(1, cols):
      same = source[i - 1] == hypothesis[j - 1]
      diagonal = cost[i - 1][j - 1] + (0 if same else sub_cost)
      deletion, insertion = cost[i - 1][j] + 1, cost[i][j - 1] + 1
      best = min(diagonal, deletion, insertion)
      cost[i][j] = best
      steps = []
      if diagonal == best:
        steps.append(((i - 1, j - 1), ("noop", i - 1, i, source[i - 1], hypothesis[j - 1], 1) if same else
                      ("sub", i - 1, i, source[i - 1], hypothesis[j - 1], 0)))
      if deletion == best:
        steps.append(((i - 1, j), ("del", i - 1, i, source[i - 1], "", 0)))
      if insertion == best:
        steps.append(((i, j - 1), ("ins", i, i, "", hypothesis[j - 1], 0)))
      back[(i, j)] = steps
  return rows, cols, back


def _lattice(source, hypothesis, sub_cost):
  """Vertices, arcs (in breadth-first order from the end cell) and their edits."""
  rows, cols, back = _alignment_backpointers(source, hypothesis, sub_cost)
  vertices, arcs, edits = [], [], {}
  queue, seen = collections.deque([(rows - 1, cols - 1)]), set()
  queued = {(rows - 1, cols - 1)}
  while queue:
    v = queue.popleft()
    queued.discard(v)
    if v in seen:
      continue
    seen.add(v)
    vertices.append(v)
    for previous, edit in back.get(v, []):
      arcs.append((previous, v))
      edits[(previous, v)] = edit
      if previous not in queued:
        queue.append(previous)
        queued.add(previous)
  return vertices, arcs, edits


# (kind of the first, kind of the second) -> (kind, original, correction) of the joined edit; 1/2: the first's or
# the second's string, 12: both joined by a space, "": empty.
_JOINS = {
    ("ins", "ins"): ("ins", "", "12"), ("ins", "del"): ("sub", "2", "1"), ("ins", "sub"): ("sub", "2", "12"),
    ("ins", "noop"): ("sub", "2", "12"), ("del", "ins"): ("sub", "1", "2"), ("del", "del"): ("del", "12", ""),
    ("del", "sub"): ("sub", "12", "2"), ("del", "noop"): ("sub", "12", "2"), ("sub", "ins"): ("sub", "1", "12"),
    ("sub", "del"): ("sub", "12", "1"), ("sub", "sub"): ("sub", "12", "12"), ("sub", "noop"): ("sub", "12", "12"),
    ("noop", "ins"): ("sub", "1", "12"), ("noop", "del"): ("sub", "12", "1"), ("noop", "sub"): ("sub", "12", "12"),
    ("noop", "noop"): ("noop", "12", "12"),
}


def _merge_edits(first, second):
  """The edit of two consecutive arcs taken as one."""
  kind, original, correction = _JOINS[(first[0], second[0])]
  pick = lambda which, a, b: {"": "", "1": a, "2": b, "12": f"{a} {b}"}[which]
  return (kind, first[1], second[2], pick(original, first[3], second[3]), pick(correction, first[4], second[4]),
          first[5] + second[5])


def edit_lattice(source: Sequence[str], hypothesis: Sequence[str], max_unchanged_words: int = 2):
  """(vertices, arcs, dist, edits): the merged lattices of substitution costs 1 and 2, with transitive arcs."""
  v1, a1, e1 = _lattice(source, hypothesis, 1)
  v2, a2, e2 = _lattice(source, hypothesis, 2)
  vertices = sorted(set(v1) | set(v2))
  arcs = sorted(a1 + a2)  # arcs of both lattices, duplicates kept (they weigh twice in `arc_weights`)
  edits = {**e2, **e1}
  dist = {arc: 1.0 for arc in arcs}
  for k in vertices:
    for i in vertices:
      if (i, k) not in edits:
        continue
      for j in vertices:
        if (k, j) not in edits:
          continue
        through = dist[(i, k)] + dist[(k, j)]
        if through < dist.get((i, j), INF):
          merged = _merge_edits(edits[(i, k)], edits[(k, j)])
          if merged[5] <= max_unchanged_words:
            arcs.append((i, j))
            dist[(i, j)] = through
            edits[(i, j)] = merged
  noop_joins = {arc for arc in arcs if edits[arc][0] == "noop" and dist[arc] > 1}
  arcs = [arc for arc in arcs if arc not in noop_joins]
  for arc in noop_joins:
    del dist[arc], edits[arc]
  return vertices, arcs, dist, edits


def _matches(edit, gold):
  return edit[1] == gold[0] and edit[2] == gold[1] and edit[3] == gold[2] and edit[4] in gold[3]


def arc_weights(arcs, dist, edits, gold_edits):
  """Arcs matching a gold edit weigh -len(arcs); other edit arcs get EPSILON more than their length."""
  weights = dict(dist)
  by_span = collections.defaultdict(list)
  for arc in arcs:
    by_span[(edits[arc][1], edits[arc][2])].append(arc)
  gold_by_span = collections.defaultdict(list)
  for gold in gold_edits:
    gold_by_span[(gold[0], gold[1])].append(gold)
  penalize = lambda arc: weights.__setitem__(arc, weights[arc] + EPSILON) if edits[arc][0] != "noop" else None
  for span in sorted(by_span):
    group, golds = sorted(by_span[span]), gold_by_span[span]
    if span[0] != span[1]:  # deletions and substitutions: parallel arcs may all match
      for arc in group:
        if any(_matches(edits[arc], g) for g in golds):
          weights[arc] = -len(arcs)
        else:
          penalize(arc)
      continue
    # Insertions at one position: match gold insertions in order, from both ends of the chain of arcs.
    left, right, cur = 0, len(group) - 1, 0
    gold_left, gold_right = 0, len(golds) - 1
    while left <= right:
      arc = group[cur]
      order = range(gold_left, gold_right + 1) if cur == left else reversed(range(gold_left, gold_right + 1))
      matched = None
      for g in order:
        if _matches(edits[arc], golds[g]):
          matched = g
          weights[arc] = -len(arcs)
          break
      if matched is None:
        penalize(arc)
        if cur == left:
          left, cur = left + 1, right
        else:
          right, cur = right - 1, left
        continue
      if cur == left:
        gold_left = matched + 1
        left += 1
        while left < len(group) and group[left][0] != group[cur][1]:
          penalize(group[left])
          left += 1
        cur = left
      else:
        gold_right = matched - 1
        right -= 1
        while right >= 0 and group[right][1] != group[cur][0]:
          penalize(group[right])
          right -= 1
        cur = right
  return weights


def best_edit_sequence(vertices, arcs, weights, edits):
  """The edits (start, end, original, correction) on the shortest path, from the end of the sentence back."""
  distance = {v: INF for v in vertices}
  distance[(0, 0)] = 0.0
  previous = {}
  for _ in range(len(vertices) - 1):
    changed = False
    for arc in arcs:
      v, w = arc
      if distance[v] + weights[arc] < distance[w]:
        distance[w] = distance[v] + weights[arc]
        previous[w] = v
        changed = True
    if not changed:
      break
  sequence, v = [], vertices[-1]
  while v in previous:
    w = previous[v]
    edit = edits[(w, v)]
    if edit[0] != "noop":
      sequence.append(edit[1:5])
    v = w
  return sequence


def matched_edits(sequence, gold_edits):
  """System edits (in sentence order) that match gold edits taken in order.

  As in the reference scorer, an edit is counted once for each later gold edit it matches (duplicated gold edits).
  """
  matched, next_gold = [], 0
  for edit in reversed(sequence):
    for g in range(next_gold, len(gold_edits)):
      if _matches((None,) + tuple(edit), gold_edits[g]):
        matched.append(edit)
        next_gold = g + 1
  return matched


@dataclasses.dataclass
class M2Counts:
  correct: float = 0.0
  proposed: float = 0.0
  gold: float = 0.0


def f_beta(correct, proposed, gold, beta):
  """(P, R, F_beta) as the M2 scorer computes them: P = 1 with no proposed edit, R = 1 with no gold edit."""
  p = correct / proposed if proposed else 1.0
  r = correct / gold if gold else 1.0
  f = (1 + beta * beta) * p * r / (beta * beta * p + r) if beta * beta * p + r else 0.0
  return p, r, f


def _local_f(correct, proposed, gold, beta):
  """The running F of one annotator's choice, as the reference scorer ranks annotators."""
  denominator = beta * beta * gold + proposed
  if denominator == 0:
    return 1.0 if correct == 0 else 0.0
  return (1 + beta * beta) * correct / denominator


def m2_score(hypotheses: Sequence[str], sentences: Sequence[M2Sentence], beta: float = 0.5,
             max_unchanged_words: int = 2) -> dict:
  """Corpus precision, recall and F_beta (in [0, 1]) of tokenized hypotheses against M2 gold edits."""
  if len(hypotheses) != len(sentences):
    raise ValueError(f"{len(hypotheses)} hypotheses for {len(sentences)} M2 sentences")
  total = M2Counts()
  for hypothesis, sentence in zip(hypotheses, sentences):
    vertices, arcs, dist, edits = edit_lattice(sentence.source.split(), hypothesis.split(), max_unchanged_words)
    best, best_key = None, None
    for annotator in sorted(sentence.gold):
      gold = sentence.gold[annotator]
      sequence = best_edit_sequence(vertices, arcs, arc_weights(arcs, dist, edits, gold), edits)
      correct = len(matched_edits(sequence, gold))
      local = M2Counts(total.correct + correct, total.proposed + len(sequence), total.gold + len(gold))
      f = _local_f(local.correct, local.proposed, local.gold, beta)
      # Highest running F, then most correct edits, then the fewest proposed + beta^2 gold.
      key = (f, local.correct, -(local.proposed + beta * beta * local.gold))
      if best_key is None or key > best_key:
        best, best_key = local, key
    total = best
  p, r, f = f_beta(total.correct, total.proposed, total.gold, beta)
  return {"precision": p, "recall": r, "f": f, "correct": total.correct, "proposed": total.proposed,
          "gold": total.gold}
