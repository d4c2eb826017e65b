"""
Captions scored as the field scores them: BLEU-4 (Papineni et al. 2002) and CIDEr-D (Vedantam et al.
2015), as the COCO caption evaluation (pycocoevalcap's `Bleu(4)` and `Cider`) computes them on
tokenized text, written here so the evaluation needs nothing beyond numpy. tests/test_captions.py
checks both against values pycocoevalcap gave on a fixed example.

Text is tokenized by `tokenize` (lowercase words, punctuation dropped), standing in for the Stanford
PTB tokenizer that pycocoevalcap runs through Java.
"""
import math
import re
from collections import Counter

import numpy as np


def tokenize(text):
    """'A man, riding a horse.' -> 'a man riding a horse'."""
    return " ".join(re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower()))


def ngrams(sentence, n=4):
    """A tokenized sentence -> Counter of its 1- to n-grams (tuples of words)."""
    words = sentence.split()
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def bleu4(hypotheses, references):
    """Corpus BLEU-4: hypotheses (N tokenized strings), references (N lists of tokenized strings).
    Each hypothesis n-gram counts at most as often as in its most generous reference; the matches and
    the n-grams of all hypotheses are summed over the corpus before the four precisions are taken;
    the brevity penalty compares the hypotheses' total length with the sum, over images, of the
    reference length closest to each hypothesis's (ties: the shorter). Like pycocoevalcap, a precision
    with no match is (0 + 1e-15) / (guesses + 1e-9), not 0."""
    correct, guesses, test_len, ref_len = [0] * 4, [0] * 4, 0, 0
    for hypothesis, refs in zip(hypotheses, references):
        counts, length = ngrams(hypothesis), len(hypothesis.split())
        best = Counter()
        for ref in refs:
            best |= ngrams(ref)  # the largest count of every n-gram over the references
        for gram, count in counts.items():
            correct[len(gram) - 1] += min(count, best[gram])
        for k in range(4):
            guesses[k] += max(0, length - k)
        test_len += length
        ref_len += min((abs(len(r.split()) - length), len(r.split())) for r in refs)[1]
    precision = math.prod((c + 1e-15) / (g + 1e-9) for c, g in zip(correct, guesses))
    ratio = (test_len + 1e-15) / (ref_len + 1e-9)
    return precision ** 0.25 * (math.exp(1 - 1 / ratio) if ratio < 1 else 1.0)


def cider_d(hypotheses, references, sigma=6.0):
    """CIDEr-D: per image, the mean over its references of the cosine similarity of TF-IDF vectors of
    1- to 4-grams (one similarity per n, averaged), with the hypothesis's weights clipped at the
    reference's and a Gaussian penalty exp(-delta^2 / 2 sigma^2) on their length difference; times 10,
    averaged over images. IDF: log(images) - log(images whose references hold the n-gram). As in
    pycocoevalcap, a sentence's "length" for the penalty is its number of bigrams.
    -> (the corpus score, the per-image scores)."""
    refs_counts = [[ngrams(r) for r in refs] for refs in references]
    document_frequency = Counter(gram for refs in refs_counts for gram in set().union(*refs))
    log_images = math.log(len(references))

    def vector(counts):
        """n-gram counts -> (TF-IDF weights per n, their norms per n, the bigram count)."""
        weights = [{} for _ in range(4)]
        for gram, tf in counts.items():
            weights[len(gram) - 1][gram] = tf * (log_images - math.log(max(1.0, document_frequency[gram])))
        norms = [math.sqrt(sum(w * w for w in per_n.values())) for per_n in weights]
        return weights, norms, sum(tf for gram, tf in counts.items() if len(gram) == 2)

    scores = []
    for hypothesis, refs in zip(hypotheses, refs_counts):
        hyp, hyp_norm, hyp_len = vector(ngrams(hypothesis))
        total = np.zeros(4)
        for ref in refs:
            ref_w, ref_norm, ref_len = vector(ref)
            for n in range(4):
                dot = sum(min(w, ref_w[n].get(gram, 0.0)) * ref_w[n].get(gram, 0.0) for gram, w in hyp[n].items())
                cosine = dot / (hyp_norm[n] * ref_norm[n]) if hyp_norm[n] and ref_norm[n] else dot
                total[n] += cosine * math.exp(-((hyp_len - ref_len) ** 2) / (2 * sigma ** 2))
        scores.append(10.0 * total.mean() / len(refs))
    return float(np.mean(scores)), scores
