"""`orstream train tpsis`: train TP-SIS on an EndoVis-layout dataset (types task).

Every step shows each frame with the three training prompts of all seven types (a type absent
from the frame is a negative for its prompts) and a few prompts that name nothing in view: some
from engines/tpsis_prompts.NEGATIVES, some random vocabulary words. Loss: BCE + soft Dice on
each type's mixed mask, plus BCE on every single prompt's mask so that one prompt alone (how
the pipeline and `orstream eval` use them) also segments. Validation scores the class names
alone, after the per-instrument vote, as `orstream eval` does; held-out paraphrases and absent
prompts are never looked at during training, not even to pick the best epoch.

The run directory holds last.pt (with optimizer state, for --resume), best.pt, history.json,
curves.png and predictions.png, as `orstream train unet` writes them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm import tqdm

from orstream.common.classes import CLASSES, palette
from orstream.common.sizes import check_unet_input, parse_hw
from orstream.engines import checkpoint as unet_ckpt
from orstream.engines import tpsis_checkpoint as ckpt
from orstream.engines.postprocess import instance_vote
from orstream.engines.preprocess import normalize
from orstream.engines.registry import build_tpsis, tpsis_config
from orstream.engines.text_encoder import default_encoder, normalize_prompt
from orstream.engines.tpsis import TPSIS, PromptState, labels_from_logits, mix
from orstream.engines.tpsis_prompts import (
    ABSENT,
    ALL_TRAIN_PROMPTS,
    NEGATIVES,
    PARAPHRASES,
    TRAIN_PROMPTS,
)
from orstream.engines.tpsis_reading import READ_AS_MIN_SIMILARITY
from orstream.training.augment import AugmentConfig
from orstream.training.data import SegmentationSet, load_arrays
from orstream.training.datasets.endovis import discover, split_by_fold
from orstream.training.metrics import SegmentationMetrics
from orstream.training.plots import plot_curves, plot_predictions
from orstream.training.unet_trainer import lr_schedule


class TPSISTrainConfig(BaseModel):
    """Everything a TP-SIS training run depends on; saved into its checkpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path  # EndoVis 2017-layout dataset root (types ground truth)
    model: str = "tpsis_xs"  # a name from engines.registry.TPSIS_VARIANTS
    epochs: int = Field(6, ge=1)
    batch: int = Field(8, ge=1)
    lr: float = Field(2e-3, gt=0)  # AdamW peak for the prompting parts
    visual_lr: float = Field(3e-4, gt=0)  # peak for the U-Net: it starts trained
    weight_decay: float = Field(1e-4, ge=0)
    negatives: int = Field(4, ge=0)  # prompts per step that name nothing (half random words)
    # Gaussian noise on the text features during training, as a fraction of their norm: each
    # prompt stands for a small neighbourhood of text space, not one point (0: off).
    text_noise: float = Field(0.4, ge=0, le=2)
    size: tuple[int, int] = (256, 320)  # (H, W); strings are WxH (320x256)
    crop: tuple[int, int] | None = None  # (H, W) training crop; None = whole frames
    fold: int = Field(0, ge=0, le=3)
    out: Path = Path("runs/tpsis")
    resume: bool = False
    # The visual encoder's start: a types U-Net checkpoint of the same shape (its head is
    # dropped). Training then teaches the prompting, not the pixels, and fits on two cores.
    init_unet: Path | None = None
    init: Path | None = None  # or the weights of a TP-SIS checkpoint (same model)
    seed: int = 0
    workers: int = Field(2, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)
    val_frames: int | None = Field(None, ge=1)  # cap on validation frames; None = all

    @field_validator("size", "crop", mode="before")
    @classmethod
    def _hw(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("none", "full"):
            return None
        return parse_hw(value) if isinstance(value, str) else value

    @field_validator("size")
    @classmethod
    def _multiple_of_32(cls, value: tuple[int, int]) -> tuple[int, int]:
        return check_unet_input(value)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        tpsis_config(value)  # raises with the list of known names
        return value

    def to_json(self) -> dict:
        return json.loads(self.model_dump_json())


# A random negative word must stay below the similarity at which a prompt is read as a class
# (engines/tpsis_reading.py): the model is never taught to leave empty what reads as a class.
RANDOM_NEGATIVE_MAX_SIM = READ_AS_MIN_SIMILARITY


def _held_out_words() -> set[str]:
    words = set()
    for texts in (*ALL_TRAIN_PROMPTS.values(), *PARAPHRASES.values(), ABSENT):
        for text in texts:
            words.update(normalize_prompt(text).split())
    return words


def random_word_pool() -> list[str]:
    """Whole words of the tokenizer's vocabulary, minus every word of a class, paraphrase or
    absent prompt: random negatives must neither contradict a class nor train on held-out
    text."""
    banned = _held_out_words()
    encoder = default_encoder()
    vocab = encoder.tokenizer.get_vocab()
    words = sorted(w for t in vocab if t.startswith("\u2581") and (w := t[1:]).isalpha()
                   and len(w) > 3 and w.lower() == w and w not in banned)
    # Nor may a random negative mean a class ("drivers", "grasp", "others"): such a word,
    # trained to mark nothing, would teach the model that text near a class is nothing, the
    # opposite of what a paraphrase needs. Words at cosine >= 0.25 to any class prompt are
    # left out (the median vocabulary word's closest class prompt is at 0.13).
    classes = np.stack([encoder.encode(t).sentence for ts in ALL_TRAIN_PROMPTS.values()
                        for t in ts])
    table = encoder.table
    closest = np.empty(len(words))
    for i, w in enumerate(words):
        v = table[encoder.tokenizer.encode(w, add_special_tokens=False).ids].mean(axis=0)
        closest[i] = float((classes @ v).max()) / max(float(np.linalg.norm(v)), 1e-6)
    return [w for w, c in zip(words, closest, strict=True) if c < RANDOM_NEGATIVE_MAX_SIM]


def step_prompts(rng: np.random.Generator, negatives: int, pool: list[str]
                 ) -> tuple[list[str], list[int], torch.Tensor]:
    """One step's prompts: texts, the type id each marks (0: nothing), and groups (G, P): one
    group per type (three of its prompts, mixed), one per negative. A type's three are its name
    (what `orstream eval` and the pipeline's default prompts use), then two drawn from the
    area phrase, the description and the synonyms: all of them are seen, at the cost of three
    prompts a type per step."""
    texts, ids = [], []
    for type_id, name in enumerate(ALL_TRAIN_PROMPTS, start=1):
        others = ALL_TRAIN_PROMPTS[name][1:]
        texts += [name, *(others[i] for i in rng.choice(len(others), 2, replace=False))]
        ids += [type_id] * 3
    named = negatives // 2
    texts += [str(t) for t in rng.choice(NEGATIVES, named, replace=False)]
    texts += [" ".join(rng.choice(pool, rng.integers(1, 4))) for _ in range(negatives - named)]
    ids += [0] * negatives
    n_types = len(TRAIN_PROMPTS)
    groups = torch.zeros(n_types + negatives, len(texts))
    for p, type_id in enumerate(ids):
        groups[type_id - 1 if type_id else n_types + p - len(texts) + negatives, p] = 1.0
    return texts, ids, groups  # negatives are the last prompts, each its own last group


def encode_noisy(model: TPSIS, texts: list[str], groups: torch.Tensor, noise: float
                 ) -> PromptState:
    """encode_texts with Gaussian noise of `noise` times each feature's norm added to every
    word feature and to the sentence feature (then back to unit length)."""
    words, mask, sentence = (torch.from_numpy(a) for a in default_encoder().batch(texts))
    if noise > 0:
        d = words.shape[-1]
        words = words + noise * words.norm(dim=-1, keepdim=True) * torch.randn_like(words) / d**0.5
        sentence = F.normalize(sentence + noise * torch.randn_like(sentence) / d**0.5, dim=-1)
    return model.encode_prompts(words, mask, sentence, groups)


def tpsis_loss(logits: torch.Tensor, mixed: torch.Tensor, labels: torch.Tensor,
               prompt_ids: list[int], group_ids: list[int]) -> torch.Tensor:
    """BCE on every prompt's logits (B, P, H, W), BCE + soft Dice on the groups' mixed logits
    (B, G, H, W); labels (B, H, W) type ids. Dice counts the groups present in the batch."""
    def targets(ids: list[int]) -> torch.Tensor:
        t = torch.tensor(ids, device=labels.device)[None, :, None, None]
        return ((labels[:, None] == t) & (t > 0)).float()  # (B, P or G, H, W)

    tp, tg = targets(prompt_ids), targets(group_ids)
    bce = (F.binary_cross_entropy_with_logits(logits, tp)
           + F.binary_cross_entropy_with_logits(mixed, tg))
    prob = mixed.sigmoid()
    inter = (prob * tg).sum(dim=(0, 2, 3))
    denom = prob.sum(dim=(0, 2, 3)) + tg.sum(dim=(0, 2, 3))
    present = tg.sum(dim=(0, 2, 3)) > 0
    dice = (2 * inter + 1.0) / (denom + 1.0)
    dice_loss = (1 - dice[present]).mean() if bool(present.any()) else prob.sum() * 0.0
    return bce + dice_loss


@torch.inference_mode()
def _validate(model: TPSIS, images: np.ndarray, labels: np.ndarray, batch: int
              ) -> tuple[float, dict, np.ndarray]:
    """Class names as prompts, one each -> loss, types metrics after the vote, label maps."""
    model.eval()
    names = list(TRAIN_PROMPTS)
    state = model.encode_texts(names)
    metrics = SegmentationMetrics(len(CLASSES["types"]), "types")
    ids = list(range(1, len(names) + 1))
    losses, preds = [], np.empty(labels.shape, np.uint8)
    for i in range(0, len(images), batch):
        x = normalize(torch.from_numpy(images[i:i + batch]), unet_ckpt.DEFAULT_MEAN,
                      unet_ckpt.DEFAULT_STD)
        target = torch.from_numpy(labels[i:i + batch].astype(np.int64))
        logits = model(x, state)
        losses.append(float(tpsis_loss(logits, logits, target, ids, ids)) * len(x))
        for j, pred in enumerate(labels_from_logits(logits).numpy()):
            preds[i + j] = instance_vote(pred, len(CLASSES["types"]))
            metrics.update(labels[i + j], preds[i + j])
    return sum(losses) / len(images), metrics.compute(), preds


def _init_visual(model: TPSIS, path: Path) -> None:
    unet = unet_ckpt.load(path, task="types")
    if unet.config.width != model.cfg.unet.width or unet.config.depth != model.cfg.unet.depth:
        raise unet_ckpt.CheckpointError(f"--init-unet {path}: a {unet.model_name} does not fit "
                                        f"the visual encoder of this TP-SIS ({model.cfg.unet})")
    model.visual.load_state_dict({k: v for k, v in unet.state_dict.items()
                                  if not k.startswith("head.")})


def train_tpsis(cfg: TPSISTrainConfig) -> Path:
    """Train, validate every epoch, keep the best checkpoint; returns the path of best.pt."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    classes = CLASSES["types"]
    model = build_tpsis(cfg.model)
    if not cfg.resume:  # a wrong init fails here, before minutes of decoding
        if cfg.init is not None:
            model.load_state_dict(ckpt.load(cfg.init, model_name=cfg.model).state_dict)
        elif cfg.init_unet is not None:
            _init_visual(model, unet_ckpt.weights_path(cfg.init_unet))
    pool = random_word_pool()

    samples = discover(cfg.data, "types")
    train_samples, val_samples = split_by_fold(samples, cfg.fold)
    if cfg.val_frames is not None and len(val_samples) > cfg.val_frames:
        pick = np.linspace(0, len(val_samples) - 1, cfg.val_frames).astype(int)
        val_samples = [val_samples[i] for i in pick]
    logger.info("{}: {} training frames, {} validation frames (fold {})", cfg.data,
                len(train_samples), len(val_samples), cfg.fold)
    train_images, train_labels = load_arrays(train_samples, "types", cfg.size, cfg.workers,
                                             "loading training frames")
    val_images, val_labels = load_arrays(val_samples, "types", cfg.size, cfg.workers,
                                         "loading validation frames")
    train_set = SegmentationSet(train_images, train_labels, AugmentConfig(), cfg.crop, cfg.seed)

    visual = list(model.visual.parameters())
    ids = {id(p) for p in visual}
    prompting = [p for p in model.parameters() if id(p) not in ids]
    optimizer = torch.optim.AdamW([{"params": visual, "lr": cfg.visual_lr},
                                   {"params": prompting, "lr": cfg.lr}],
                                  weight_decay=cfg.weight_decay)
    steps = cfg.steps_per_epoch or max(1, len(train_set) // cfg.batch)
    total = steps * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_schedule(s, total, warmup=min(100, total // 10 + 1)))
    history: list[dict] = []
    best = -1.0
    start_epoch = 1
    last_path, best_path = out / "last.pt", out / "best.pt"
    if cfg.resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: no {last_path} to resume from; drop --resume "
                                    "to start a new run")
        state = ckpt.load(last_path, model_name=cfg.model)
        model.load_state_dict(state.state_dict)
        optimizer.load_state_dict(state.extra["optimizer"])
        scheduler.load_state_dict(state.extra["scheduler"])
        history = list(state.extra["history"])
        best = float(state.extra["best"])
        start_epoch = int(state.extra["epoch"]) + 1
        train_set.rng = np.random.default_rng([cfg.seed, start_epoch])
        rng = np.random.default_rng([cfg.seed, start_epoch, 1])
        logger.info("resuming {} at epoch {}", last_path, start_epoch)

    generator = torch.Generator().manual_seed(cfg.seed + start_epoch)
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch, shuffle=True,
                                             drop_last=True, generator=generator)
        running, seen = 0.0, 0
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", unit="step", leave=False)
        batches = iter(loader)
        for _ in range(steps):
            try:
                images, labels = next(batches)
            except StopIteration:
                batches = iter(loader)
                images, labels = next(batches)
            texts, prompt_ids, groups = step_prompts(rng, cfg.negatives, pool)
            group_ids = [prompt_ids[int(g.argmax())] for g in groups]
            state = encode_noisy(model, texts, groups, cfg.text_noise)
            x = normalize(images, unet_ckpt.DEFAULT_MEAN, unet_ckpt.DEFAULT_STD)
            logits, score = model.prompt_logits(*model.visual(x), state)
            loss = tpsis_loss(logits, mix(logits, score, state.groups), labels, prompt_ids,
                              group_ids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(images)
            seen += len(images)
            bar.update()
            bar.set_postfix(loss=f"{running / seen:.4f}")
        bar.close()

        val_loss, val, _ = _validate(model, val_images, val_labels, cfg.batch)
        record = {"epoch": epoch, "train_loss": running / seen, "val_loss": val_loss,
                  "val": val, "lr": scheduler.get_last_lr()[1],
                  "elapsed_s": round(time.perf_counter() - started, 1)}
        history.append(record)
        improved = val["mc_iou"] > best
        best = max(best, val["mc_iou"])
        logger.info("epoch {}/{}: train loss {:.4f}, val loss {:.4f}, val mc_iou {:.4f}{}",
                    epoch, cfg.epochs, record["train_loss"], val_loss, val["mc_iou"],
                    " (best)" if improved else "")
        common = dict(model_name=cfg.model, config=tpsis_config(cfg.model), classes=classes,
                      prompts={k: list(v) for k, v in ALL_TRAIN_PROMPTS.items()},
                      input_size=cfg.size,
                      state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
                      metrics={"epoch": epoch, **val})
        if improved:
            ckpt.save(ckpt.TPSISCheckpoint(**common, extra={"train_config": cfg.to_json()}),
                      best_path)
        ckpt.save(ckpt.TPSISCheckpoint(**common, extra={
            "train_config": cfg.to_json(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "history": history, "best": best,
            "epoch": epoch}), last_path)
        (out / "history.json").write_text(json.dumps(history, indent=1))
        plot_curves(history, out / "curves.png", "mc_iou", loss_label="BCE + Dice loss")

    best_model = ckpt.load(best_path).build()
    pick = np.linspace(0, len(val_images) - 1, min(4, len(val_images))).astype(int)
    _, _, preds = _validate(best_model, val_images[pick], val_labels[pick], cfg.batch)
    plot_predictions(val_images[pick], val_labels[pick], preds, palette("types"),
                     out / "predictions.png")
    logger.info("done in {:.0f} s: best validation mc_iou {:.4f} -> {}",
                time.perf_counter() - started, best, best_path)
    return best_path
