"""BLEU-4 and CIDEr-D (evaluation/captions.py) against pycocoevalcap, the COCO caption evaluation.
Run: python -m pytest tests/test_captions.py

The reference values were computed once, in a scratch virtual environment, on the tokenized example
below (no PTB tokenizer: the strings are already lowercase words):

    python -m venv /tmp/venv_coco && /tmp/venv_coco/bin/pip install pycocoevalcap   # 1.2
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    gts = {i: refs for i, refs in enumerate(REFERENCES)}
    res = {i: [hypothesis] for i, hypothesis in enumerate(HYPOTHESES)}
    Bleu(4).compute_score(gts, res)[0][3], Cider().compute_score(gts, res)
"""
import pytest

from evaluation.captions import bleu4, cider_d, tokenize

REFERENCES = [
    ["a man riding a horse on a beach", "a person rides a brown horse along the shore", "a horse and its rider by the sea"],
    ["two dogs play with a red ball", "a pair of dogs chasing a ball on the grass", "dogs playing in a park"],
    ["a plate of food with broccoli and rice", "a white plate holds rice and green vegetables"],
    ["a red bus parked on the street", "a double decker bus on a city street", "a bus stopped at the curb", "the red bus waits"],
]
HYPOTHESES = ["a man riding a horse on the sand", "two dogs play with a ball in a park", "a plate of food with rice",
              "a red bus"]
# the same references, hypotheses without a single shared 4-gram: BLEU-4 is then pycocoevalcap's tiny value
NO_FOURGRAM = ["a man rides a horse on the beach", "two dogs playing with a ball", "a plate of rice and broccoli",
               "a bus on a street"]


def test_bleu4_and_cider_d_equal_pycocoevalcaps_values():
    assert bleu4(HYPOTHESES, REFERENCES) == pytest.approx(0.6135631548379172, abs=1e-10)
    score, per_image = cider_d(HYPOTHESES, REFERENCES)
    assert score == pytest.approx(2.870613745448708, abs=1e-10)
    assert per_image == pytest.approx([2.8315297732131652, 3.007526629911133, 3.654840553367558, 1.9885580253029775],
                                      abs=1e-10)
    assert bleu4(NO_FOURGRAM, REFERENCES) == pytest.approx(5.484782755410007e-05, rel=1e-6)
    assert cider_d(NO_FOURGRAM, REFERENCES)[0] == pytest.approx(2.0004050342448814, abs=1e-10)


def test_a_caption_equal_to_its_references_scores_1_and_tokenizing_drops_case_and_punctuation():
    refs = [["a red circle in the top left"], ["two blue squares at the bottom"]]
    assert bleu4([r[0] for r in refs], refs) == pytest.approx(1.0)
    assert tokenize("A Red circle, in the top-left.") == "a red circle in the top left"
