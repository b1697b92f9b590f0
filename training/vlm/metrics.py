"""Caption and VQA metrics: corpus BLEU-1..4, instrument mentions, exact-match accuracy.

BLEU is Papineni et al. 2002 at corpus level, as COCO caption evaluation reports it: n-gram
counts clipped by the references, summed over the corpus, geometric mean of the 1..n
precisions times the brevity penalty, no smoothing. It is computed here on the tokenizer's
words (the captions are template text, so no detokenisation subtleties arise) rather than
through sacrebleu, whose own tokenizer would re-split them; tests/test_vlm.py checks it
against a hand computation.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from orstream.engines.vlm.tokenizer import normalize, split
from orstream.training.vlm.tasks import MENTION_NAMES, QUESTION_TYPES

_MENTIONS = {t: re.compile(rf"\b{re.escape(name)}\b") for t, name in MENTION_NAMES.items()}


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                max_n: int = 4) -> dict[str, float]:
    """{'bleu1': ..., 'bleu4': ...} for hypothesis i against its references[i] (one or more).

    BLEU-n uses the 1..n-gram precisions with equal weights; the effective reference length
    of a hypothesis is that of its reference closest in length (shorter on ties).
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
    matched = [0] * max_n
    total = [0] * max_n
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references, strict=True):
        h = split(hyp)
        rs = [split(r) for r in refs]
        hyp_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(h, n)
            best: Counter = Counter()
            for r in rs:
                best |= _ngrams(r, n)  # max count of each n-gram over the references
            matched[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
            total[n - 1] += max(0, len(h) - n + 1)
    if hyp_len == 0:
        return {f"bleu{n}": 0.0 for n in range(1, max_n + 1)}
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    out = {}
    log_sum = 0.0
    for n in range(1, max_n + 1):
        if matched[n - 1] == 0 or total[n - 1] == 0:
            # No smoothing: one empty precision makes this and every higher order 0.
            out.update({f"bleu{k}": 0.0 for k in range(n, max_n + 1)})
            break
        log_sum += math.log(matched[n - 1] / total[n - 1])
        out[f"bleu{n}"] = bp * math.exp(log_sum / n)
    return out


def mentions(text: str) -> Counter:
    """Instrument types a caption names, with multiplicity: Counter({type_id: times})."""
    norm = normalize(text)
    return Counter({t: len(p.findall(norm)) for t, p in _MENTIONS.items() if p.search(norm)})


def mention_scores(captions: Sequence[str], truths: Sequence[Counter]) -> dict[str, float]:
    """Does each caption name exactly the instruments present? Micro precision, recall and F1
    over (frame, type) mentions counted with multiplicity (two needle drivers must be named
    twice), and `exact`: the share of frames whose mentions equal the truth."""
    tp = fp = fn = exact = 0
    for text, truth in zip(captions, truths, strict=True):
        said = mentions(text)
        hit = sum((said & truth).values())
        tp += hit
        fp += sum(said.values()) - hit
        fn += sum(truth.values()) - hit
        exact += said == truth
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "exact": exact / len(captions) if captions else 0.0,
            "tp": tp, "fp": fp, "fn": fn}


def vqa_scores(predictions: Sequence[str], answers: Sequence[str], kinds: Sequence[str]
               ) -> dict:
    """Exact match after normalisation (case, spacing, punctuation), per question type and
    overall (over all questions; the evaluation asks one of each type per frame)."""
    right: Counter = Counter()
    asked: Counter = Counter()
    for pred, ans, kind in zip(predictions, answers, kinds, strict=True):
        asked[kind] += 1
        right[kind] += normalize(pred) == normalize(ans)
    per_type = {k: right[k] / asked[k] for k in QUESTION_TYPES if asked[k]}
    total = sum(asked.values())
    return {"accuracy": sum(right.values()) / total if total else 0.0, "per_type": per_type,
            "questions": dict(asked)}
