"""`orstream train vlm`: train the scene-describing VLM on a synthetic VLM dataset.

Each step encodes a batch of frames once and trains the decoder on several sequences per
frame: its caption and one question of each kind in a random wording, all sharing that
frame's visual tokens. The loss is cross-entropy on answer tokens only (prompt and padding
masked out). Validation uses procedures held out of the same dataset; the held-out figures
that count come from `orstream eval-vlm` on a dataset of another seed.

The run directory holds `last.pt` (with optimizer state, for --resume), `best.pt` (best
validation score: mean of instrument-mention F1 and VQA accuracy), `history.json`,
`curves.png` and `samples.png` (validation frames with their generated captions).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm import tqdm

from orstream.engines.checkpoint import DEFAULT_MEAN, DEFAULT_STD, CheckpointError
from orstream.engines.preprocess import normalize
from orstream.engines.vlm import checkpoint as vlm_ckpt
from orstream.engines.vlm.model import CAPTION_PROMPT, VLM, build_model, lm_loss, model_config
from orstream.engines.vlm.tokenizer import Tokenizer
from orstream.training.plots import plot_captions, plot_vlm_curves
from orstream.training.unet_trainer import lr_schedule
from orstream.training.vlm.data import VLMData, load_vlm_data
from orstream.training.vlm.evaluate import QUESTION_SEED, score
from orstream.training.vlm.tasks import QA, eval_questions, sample_tasks, vocabulary_texts


class VLMTrainConfig(BaseModel):
    """Everything a VLM training run depends on; saved into its checkpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path  # from `orstream synth vlm-data`
    model: str = "vlm_tiny"  # a name from engines.vlm.model.VARIANTS
    epochs: int = Field(8, ge=1)
    batch: int = Field(32, ge=1)  # frames per step; each gives 1 + `questions` sequences
    questions: int = Field(4, ge=0, le=4)  # questions per frame per step, of distinct kinds
    lr: float = Field(1e-3, gt=0)  # AdamW; peak of a warm-up + cosine schedule
    weight_decay: float = Field(0.05, ge=0)
    warmup: int = Field(200, ge=0)  # steps
    val_fraction: float = Field(0.05, gt=0, lt=0.5)  # procedures held out for validation
    val_frames: int = Field(256, ge=1)  # validation frames captioned and questioned per epoch
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast (CPUs with AMX / AVX512-BF16)
    augment: bool = True  # brightness / contrast jitter
    out: Path = Path("runs/vlm")
    resume: bool = False
    seed: int = 0
    threads: int | None = Field(None, ge=1)  # torch threads (None: torch's default)
    steps_per_epoch: int | None = Field(None, ge=1)  # cap, for quick runs; None = full epoch

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        model_config(value, 16)  # raises with the list of known names
        return value

    def to_json(self) -> dict:
        return json.loads(self.model_dump_json())


def _split(data: VLMData, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices of training and validation procedures (whole procedures held out)."""
    videos = np.unique(data.videos())
    n_val = max(1, round(fraction * len(videos)))
    if n_val >= len(videos):
        raise ValueError(f"{len(videos)} procedures cannot be split for validation: write more")
    val = np.isin(data.videos(), videos[-n_val:])
    return np.flatnonzero(~val), np.flatnonzero(val)


def collate(tokenizer: Tokenizer, tasks: list[list[QA]]
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per frame, its list of tasks -> tokens (S, T), loss mask (S, T), image_index (S,).

    Sequences are right-padded with <pad>: under causal attention a pad only ever follows
    the real tokens, and the mask keeps it out of the loss.
    """
    seqs, masks, owners = [], [], []
    for frame, qas in enumerate(tasks):
        for qa in qas:
            ids, mask = tokenizer.sequence(qa.question, qa.answer)
            seqs.append(ids)
            masks.append(mask)
            owners.append(frame)
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), tokenizer.pad_id, dtype=torch.long)
    loss_mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (s, m) in enumerate(zip(seqs, masks, strict=True)):
        tokens[i, :len(s)] = torch.tensor(s)
        loss_mask[i, :len(m)] = torch.tensor(m, dtype=torch.bool)
    return tokens, loss_mask, torch.tensor(owners)


def _images(batch: np.ndarray, rng: np.random.Generator | None) -> torch.Tensor:
    """uint8 frames -> normalised model input; with `rng`, jitter brightness and contrast
    (the tissue and lighting vary between procedures; hue is left alone because the
    instruments' colours are what tells their types apart)."""
    x = torch.from_numpy(batch)
    if rng is not None:
        n = len(batch)
        gain = torch.from_numpy(rng.uniform(0.8, 1.2, (n, 1, 1, 1)).astype(np.float32))
        contrast = torch.from_numpy(rng.uniform(0.8, 1.2, (n, 1, 1, 1)).astype(np.float32))
        f = x.float()
        mean = f.mean(dim=(1, 2, 3), keepdim=True)
        f = ((f - mean) * contrast + mean) * gain
        x = f.round_().clamp_(0, 255).to(torch.uint8)
    return normalize(x, DEFAULT_MEAN, DEFAULT_STD)


def _param_groups(model: VLM, weight_decay: float) -> list[dict]:
    """Decay matrices, not biases, norms, position tables or the class token (nanoGPT)."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "pos_embed" in name or "cls_token" in name:
            keep.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep,
                                                              "weight_decay": 0.0}]


@torch.no_grad()
def _val_loss(model: VLM, tokenizer: Tokenizer, data: VLMData, frames: np.ndarray,
              batch: int, autocast: bool) -> float:
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(frames), batch):
        idx = frames[s:s + batch]
        tasks = [[QA("caption", CAPTION_PROMPT, data.scenes[i].caption),
                  *eval_questions(data.scenes[i], QUESTION_SEED, int(i))] for i in idx]
        tokens, mask, owner = collate(tokenizer, tasks)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(_images(data.images[idx], None), tokens, owner)
        n = int(mask[:, 1:].sum())
        total += float(lm_loss(logits, tokens, mask)) * n
        count += n
    return total / max(1, count)


def train_vlm(cfg: VLMTrainConfig) -> Path:
    """Train, validate every epoch, keep the best checkpoint; returns the path of best.pt."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_vlm_data(cfg.data)
    train_idx, val_idx = _split(data, cfg.val_fraction)
    val_pick = val_idx[np.linspace(0, len(val_idx) - 1, min(cfg.val_frames, len(val_idx)))
                       .astype(int)]
    image_size = model_config(cfg.model, 16).image_size
    if data.input_size != image_size:
        raise ValueError(f"{cfg.data} holds {data.input_size[0]}x{data.input_size[1]} frames but "
                         f"{cfg.model} takes {image_size[0]}x{image_size[1]}: write the dataset "
                         f"with --input-size {image_size[0]}x{image_size[1]}")
    logger.info("{}: {} training frames, {} validation frames ({} scored per epoch)", cfg.data,
                len(train_idx), len(val_idx), len(val_pick))

    last_path, best_path = out / "last.pt", out / "best.pt"
    resumed = None
    if cfg.resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no {last_path} to resume from; drop --resume "
                                    "to start a new run")
        resumed = vlm_ckpt.load(last_path)
        if resumed.model_name != cfg.model:
            raise CheckpointError(f"{last_path} holds {resumed.model_name!r}, not {cfg.model!r}")
        tokenizer = resumed.tokenizer
    else:
        tokenizer = Tokenizer.build(itertools.chain(
            vocabulary_texts(), (data.scenes[i].caption for i in train_idx)))
    logger.info("tokenizer: {} words", len(tokenizer))

    model = build_model(cfg.model, len(tokenizer))
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=(0.9, 0.95))
    steps = cfg.steps_per_epoch or max(1, len(train_idx) // cfg.batch)
    total = steps * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_schedule(s, total, min(cfg.warmup, total // 5 + 1)))
    history: list[dict] = []
    best = -1.0
    start_epoch = 1
    if resumed is not None:
        model.load_state_dict(resumed.state_dict)
        optimizer.load_state_dict(resumed.extra["optimizer"])
        scheduler.load_state_dict(resumed.extra["scheduler"])
        history = list(resumed.extra["history"])
        best = float(resumed.extra["best"])
        start_epoch = int(resumed.extra["epoch"]) + 1
        logger.info("resuming {} at epoch {}", last_path, start_epoch)

    train_config = {**cfg.to_json(), "data_seed": data.info["seed"]}
    autocast = cfg.precision == "bf16"
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs + 1):
        rng = np.random.default_rng([cfg.seed, epoch])  # resuming replays the same epochs
        order = rng.permutation(train_idx)
        model.train()
        running, seen = 0.0, 0
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", unit="step", leave=False)
        for step in range(steps):
            s = (step * cfg.batch) % max(1, len(order) - cfg.batch + 1)
            idx = order[s:s + cfg.batch]
            tasks = [sample_tasks(data.scenes[i], rng, cfg.questions) for i in idx]
            tokens, mask, owner = collate(tokenizer, tasks)
            images = _images(data.images[idx], rng if cfg.augment else None)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = model(images, tokens, owner)
            loss = lm_loss(logits, tokens, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            running += loss.item()
            seen += 1
            bar.update()
            bar.set_postfix(loss=f"{running / seen:.4f}")
        bar.close()

        val_loss = _val_loss(model, tokenizer, data, val_pick, cfg.batch, autocast)
        val = score(model, tokenizer, data, DEFAULT_MEAN, DEFAULT_STD, val_pick)
        metrics = {"mention_f1": val["mentions"]["f1"], "vqa_accuracy": val["vqa"]["accuracy"],
                   "vqa_per_type": val["vqa"]["per_type"], "bleu4": val["bleu"]["bleu4"]}
        metrics["score"] = (metrics["mention_f1"] + metrics["vqa_accuracy"]) / 2
        record = {"epoch": epoch, "step": epoch * steps, "train_loss": running / seen,
                  "val_loss": val_loss, "val": metrics, "lr": scheduler.get_last_lr()[0],
                  "elapsed_s": round(time.perf_counter() - started, 1)}
        history.append(record)
        improved = metrics["score"] > best
        best = max(best, metrics["score"])
        logger.info("epoch {}/{}: train loss {:.4f}, val loss {:.4f}, mention F1 {:.3f}, VQA "
                    "{:.3f} ({}), BLEU-4 {:.3f}{}", epoch, cfg.epochs, record["train_loss"],
                    val_loss, metrics["mention_f1"], metrics["vqa_accuracy"],
                    ", ".join(f"{k} {v:.2f}" for k, v in metrics["vqa_per_type"].items()),
                    metrics["bleu4"], " (best)" if improved else "")

        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        common = dict(model_name=cfg.model, config=model.cfg, tokenizer=tokenizer,
                      state_dict=state, metrics={"epoch": epoch, **metrics})
        if improved:
            vlm_ckpt.save(vlm_ckpt.VLMCheckpoint(**common, extra={"train_config": train_config}),
                          best_path)
        vlm_ckpt.save(vlm_ckpt.VLMCheckpoint(**common, extra={
            "train_config": train_config, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "history": history, "best": best,
            "epoch": epoch}), last_path)
        (out / "history.json").write_text(json.dumps(history, indent=1))
        plot_vlm_curves(history, out / "curves.png")

    best_ckpt = vlm_ckpt.load(best_path)
    pick = val_pick[:6]
    shown = score(best_ckpt.build(), tokenizer, data, DEFAULT_MEAN, DEFAULT_STD, pick)
    plot_captions(data.images[pick], [s["caption"] for s in shown["samples"]],
                  [s["truth"] for s in shown["samples"]], out / "samples.png")
    logger.info("done in {:.0f} s: best validation score {:.4f} -> {}",
                time.perf_counter() - started, best, best_path)
    return best_path
