"""Downstream metrics against values worked out by hand on small inputs, awkward cases included."""
import math

import pytest

from spactor.downstream import metrics
from spactor.downstream import postprocessors


def test_accuracy_counts_invalid_predictions_as_wrong():
  assert metrics.accuracy([0, 1, 1, 0], [0, 1, 0, -1]) == {'accuracy': 50.0}
  assert metrics.accuracy(['1', '0'], ['1', '']) == {'accuracy': 50.0}  # Rainbow: label texts, empty answer


def test_f1_with_invalid_flips_invalid_predictions():
  # [1, -1, 1, 0] -> the invalid one becomes 1 - target = 0: TP 1, FP 1, FN 1 -> P = R = 1/2.
  assert metrics.f1_score_with_invalid([1, 1, 0, 0], [1, -1, 1, 0]) == {'f1': 50.0}
  assert metrics.f1_score_with_invalid([1, 0], [-1, -1]) == {'f1': 0.0}  # all invalid: all wrong


def test_mean_multiclass_f1_is_macro_over_classes():
  # class 0: F1 1; class 1: never predicted, F1 0; class 2: TP 1, FP 1, FN 1, F1 1/2 -> mean 1/2.
  f1 = metrics.mean_multiclass_f1(3)
  assert f1([0, 1, 2, 2], [0, 2, 2, -1]) == {'mean_3class_f1': 50.0}
  # A class absent from targets and predictions scores 0 (as in T5, scikit-learn's zero_division).
  assert f1([0, 0], [0, 0]) == pytest.approx({'mean_3class_f1': 100 / 3})


def test_matthews_corrcoef():
  # TP 1, TN 2, FP 0, FN 1: (1*2 - 0*1) / sqrt(1 * 2 * 2 * 3).
  got = metrics.matthews_corrcoef([1, 1, 0, 0], [1, 0, 0, 0])['matthews_corrcoef']
  assert got == pytest.approx(100 * 2 / math.sqrt(12))
  assert metrics.matthews_corrcoef([1, 0], [1, 1]) == {'matthews_corrcoef': 0.0}  # constant prediction


def test_pearson_and_spearman_with_ties():
  # Pearson: deviations (-1, 0, 1) and (-4/3, -1/3, 5/3): 3 / (sqrt(2) * sqrt(42) / 3).
  assert metrics.pearson_corrcoef([1, 2, 3], [1, 2, 4])['pearson_corrcoef'] == pytest.approx(
      100 * 9 / math.sqrt(84))
  # Spearman: the tie gets rank 2.5: ranks (1, 2.5, 2.5, 4) vs (1, 3, 2, 4) -> 4.5 / sqrt(4.5 * 5).
  assert metrics.spearman_corrcoef([1, 2, 2, 3], [1, 3, 2, 4])['spearman_corrcoef'] == pytest.approx(
      100 * 4.5 / math.sqrt(22.5))
  assert math.isnan(metrics.pearson_corrcoef([1.0], [1.0])['pearson_corrcoef'])


def test_squad_normalization_is_the_official_one():
  assert metrics.normalize_squad("The  Cat's hat!") == 'cats hat'
  assert metrics.normalize_squad('An apple, a pear and THE plum.') == 'apple pear and plum'
  assert metrics.normalize_squad('theater') == 'theater'  # articles only as whole words


def test_squad_takes_the_best_gold_answer():
  # 1: 'Dog.' matches 'a dog' exactly. 2: 'sky blue green' vs 'blue sky': 2 shared, P 2/3, R 1 -> F1 0.8.
  got = metrics.squad([['the cat', 'a dog'], ['blue sky']], ['Dog.', 'sky blue green'])
  assert got == pytest.approx({'em': 50.0, 'f1': 90.0})
  assert metrics.squad(['blue sky'], ['blue sky']) == {'em': 100.0, 'f1': 100.0}  # one answer as a string


def test_squad_empty_predictions_and_answers():
  assert metrics.squad([['x']], ['']) == {'em': 0.0, 'f1': 0.0}
  # Official v1.1: an empty answer matched by an empty prediction is an exact match but shares no token.
  assert metrics.squad([['the']], ['']) == {'em': 100.0, 'f1': 0.0}
  assert metrics.squad([], []) == {'em': 0.0, 'f1': 0.0}


def test_multirc_f1a_and_exact_match():
  def rows(values, groups):
    return [{'value': v, 'group': g} for v, g in zip(values, groups)]
  groups = ['q1', 'q1', 'q2']
  targets, predictions = rows([1, 0, 1], groups), rows([1, 0, 0], groups)
  # F1a over all options: TP 1, FN 1 -> 2/3. EM: q1 all right, q2 wrong -> 50.
  assert metrics.multirc_f1_over_all_answers(targets, predictions)['f1'] == pytest.approx(200 / 3)
  assert metrics.multirc_exact_match(targets, predictions) == {'exact_match': 50.0}


def test_record_scores_each_query_once_against_all_its_answers():
  answers = ['Obama', 'Barack Obama']
  targets = [{'group': (0, 0), 'value': answers}, {'group': (0, 0), 'value': answers},
             {'group': (0, 1), 'value': ['Paris']}]
  predictions = [{'group': (0, 0), 'value': 'barack obama'}, {'group': (0, 0), 'value': 'wrong'},
                 {'group': (0, 1), 'value': 'London'}]
  assert metrics.record(targets, predictions) == {'em': 50.0, 'f1': 50.0}


def test_rouge_by_hand_and_lsum_sentence_split():
  got = metrics.rouge(['the cat sat'], ['the cat ran'])
  assert got == pytest.approx({'rouge1': 200 / 3, 'rouge2': 50.0, 'rougeLsum': 200 / 3})
  # Sentences in the other order: one LCS over the whole text covers half, the per-sentence union all of it.
  swapped = metrics.rouge(['x y . z w'], ['z w . x y'])
  assert swapped['rougeLsum'] == pytest.approx(100.0) and swapped['rouge2'] == pytest.approx(100 * 2 / 3)
  assert metrics.rouge(['a b'], ['']) == {'rouge1': 0.0, 'rouge2': 0.0, 'rougeLsum': 0.0}


def test_bleu_by_hand_and_several_references():
  # n-gram precisions 4/5, 3/4, 2/3, 1/2, no brevity penalty: (1/5) ** (1/4).
  assert metrics.bleu(['a b c d f'], ['a b c d e'])['bleu'] == pytest.approx(100 * 0.2 ** 0.25)
  # Each n-gram clipped by the reference that has it most: every n-gram is found.
  assert metrics.bleu([['a b c d f', 'x b c d e']], ['a b c d e'])['bleu'] == pytest.approx(100.0)
  assert metrics.bleu(['a b c d e'], [''])['bleu'] == 0.0
  assert metrics.bleu(['A B C D E'], ['a b c d e'], lowercase=True)['bleu'] == pytest.approx(100.0)


def test_sequence_accuracy_and_target_loss():
  assert metrics.sequence_accuracy(['a b', 'c'], ['a b', 'c ']) == {'sequence_accuracy': 50.0}
  targets = [{'text': 'a', 'num_tokens': 2}, {'text': 'b', 'num_tokens': 3}]
  assert metrics.target_sequence_accuracy(targets, ['a', 'x']) == {'sequence_accuracy': 50.0}
  # Summed log-likelihoods -1 and -4 over 5 target tokens: loss 1 per token.
  assert metrics.target_loss(targets, [-1.0, -4.0]) == {'loss': 1.0}


def test_postprocessors():
  assert postprocessors.string_label_to_class_id(b'neutral', ('entailment', 'neutral')) == 1
  assert postprocessors.string_label_to_class_id('maybe', ('entailment', 'neutral')) == -1
  assert postprocessors.string_to_float('3.8') == 3.8 and postprocessors.string_to_float('high') == -1.0
  example = {'answers': [b'a', b'b'], 'idx/paragraph': 3, 'idx/question': 7, 'targets': [5, 9, 1, 0]}
  assert postprocessors.qa('a', example=example, is_target=True) == ['a', 'b']
  assert postprocessors.multirc('True', example=example, is_target=True) == {'value': 1, 'group': (3, 7)}
  assert postprocessors.text_with_num_tokens('x', example=example, is_target=True) == {'text': 'x',
                                                                                         'num_tokens': 3}
