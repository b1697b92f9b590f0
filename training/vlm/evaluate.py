"""`orstream eval-vlm`: score VLM weights on a VLM dataset (captions and questions).

Every frame is captioned (BLEU-1..4 against the generator's caption, instrument-mention
precision / recall / F1 against the ground truth's visible tools) and asked one question of
each type in a wording drawn from a fixed seed (VQA exact match per type and overall).
Score on a dataset made with a seed the training never saw.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from loguru import logger
from tqdm import tqdm

from orstream.engines.preprocess import normalize
from orstream.engines.vlm import checkpoint as vlm_ckpt
from orstream.engines.vlm.model import CAPTION_PROMPT, VLM
from orstream.engines.vlm.tokenizer import Tokenizer
from orstream.engines.vlm.tokenizer import normalize as normalize_text
from orstream.training.vlm.data import VLMData, load_vlm_data
from orstream.training.vlm.metrics import corpus_bleu, mention_scores, vqa_scores
from orstream.training.vlm.tasks import QUESTION_TYPES, eval_questions

QUESTION_SEED = 7  # wording of the evaluation questions; fixed so runs compare


def generate_texts(model: VLM, tokenizer: Tokenizer, images: np.ndarray, prompts: list[str],
                   mean: tuple[float, ...], std: tuple[float, ...], batch: int = 64,
                   max_new_tokens: int = 48, progress: str | None = None) -> list[str]:
    """Greedy answers for (images[i], prompts[i]) pairs, batched.

    Pairs are grouped by prompt length so each batch needs no padding: the decoder then sees
    exactly what it sees for a single frame (and what the Describer computes).
    """
    encoded = [tokenizer.prompt(p) for p in prompts]
    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_len.setdefault(len(ids), []).append(i)
    chunks = [idx[s:s + batch] for idx in by_len.values() for s in range(0, len(idx), batch)]
    out: list[str] = [""] * len(prompts)
    model.eval()
    for chunk in tqdm(chunks, desc=progress, unit="batch", leave=False, disable=not progress):
        x = normalize(torch.from_numpy(images[chunk]), mean, std)
        p = torch.tensor([encoded[i] for i in chunk], dtype=torch.long)
        ids = model.generate(x, p, max_new_tokens, tokenizer.eos_id)
        for i, row in zip(chunk, ids.tolist(), strict=True):
            out[i] = tokenizer.decode(row)
    return out


def score(model: VLM, tokenizer: Tokenizer, data: VLMData, mean: tuple[float, ...],
          std: tuple[float, ...], frames: np.ndarray | None = None, batch: int = 64,
          progress: bool = False) -> dict:
    """Captions and VQA on `frames` of `data` (all by default) -> metrics and samples."""
    idx = np.arange(len(data)) if frames is None else np.asarray(frames)
    images = data.images[idx]
    scenes = [data.scenes[i] for i in idx]
    captions = generate_texts(model, tokenizer, images, [CAPTION_PROMPT] * len(idx), mean,
                              std, batch, progress="captions" if progress else None)
    qas = [(n, qa) for n, i in enumerate(idx) for qa in eval_questions(data.scenes[i],
                                                                     QUESTION_SEED, int(i))]
    answers = generate_texts(model, tokenizer, images[[n for n, _ in qas]],
                             [qa.question for _, qa in qas], mean, std, batch,
                             progress="questions" if progress else None)
    vqa = vqa_scores(answers, [qa.answer for _, qa in qas], [qa.kind for _, qa in qas])
    return {
        "frames": len(idx),
        "bleu": corpus_bleu(captions, [[s.caption] for s in scenes]),
        "mentions": mention_scores(captions, [s.type_counts() for s in scenes]),
        "vqa": vqa,
        "samples": [{"frame": int(idx[n]), "caption": captions[n], "truth": scenes[n].caption}
                    for n in range(min(8, len(idx)))],
        "wrong_answers": [{"frame": int(idx[n]), "question": qa.question, "answer": a,
                           "truth": qa.answer}
                          for (n, qa), a in zip(qas, answers, strict=True)
                          if normalize_text(a) != normalize_text(qa.answer)][:20],
    }


def evaluate_vlm(data: Path | str, weights: Path | str, batch: int = 64,
                 frames: int | None = None) -> dict:
    """Load weights and a dataset, score every frame (or the first `frames`)."""
    ck = vlm_ckpt.load(weights)
    dataset = load_vlm_data(data)
    if dataset.input_size != ck.input_size:
        raise ValueError(f"{data} holds {dataset.input_size[0]}x{dataset.input_size[1]} frames "
                         f"but {weights} takes {ck.input_size[0]}x{ck.input_size[1]}: write the "
                         "dataset with --input-size to match")
    train_seed = ck.extra.get("train_config", {}).get("data_seed")
    if train_seed is not None and train_seed == dataset.info["seed"]:
        logger.warning("{} was made with seed {}, the seed of the training data: these "
                       "figures are not held-out", data, train_seed)
    model = ck.build()
    started = time.perf_counter()
    idx = None if frames is None else np.arange(min(frames, len(dataset)))
    result = score(model, ck.tokenizer, dataset, ck.mean, ck.std, idx, batch, progress=True)
    return {"data": str(data), "data_seed": dataset.info["seed"], "weights": str(weights),
            "model": ck.model_name, "input_size": list(ck.input_size),
            "train_data_seed": train_seed, **result,
            "questions_per_type": result["vqa"]["questions"],
            "eval_s": round(time.perf_counter() - started, 1)}


def format_table(result: dict) -> str:
    b, m, v = result["bleu"], result["mentions"], result["vqa"]
    lines = [
        f"{result['weights']} on {result['data']} (seed {result['data_seed']}): "
        f"{result['frames']} frames",
        "captions   BLEU-1 {:.3f}  BLEU-2 {:.3f}  BLEU-3 {:.3f}  BLEU-4 {:.3f}".format(
            b["bleu1"], b["bleu2"], b["bleu3"], b["bleu4"]),
        "mentions   precision {:.3f}  recall {:.3f}  F1 {:.3f}  exact {:.3f}".format(
            m["precision"], m["recall"], m["f1"], m["exact"]),
        "VQA        overall {:.3f}  ".format(v["accuracy"])
        + "  ".join(f"{k} {v['per_type'][k]:.3f}" for k in QUESTION_TYPES if k in v["per_type"]),
    ]
    return "\n".join(lines)
