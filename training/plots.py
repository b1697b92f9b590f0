"""PNG figures of a training run: curves, and a grid of predictions next to ground truth."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(history: list[dict], path: Path, metric: str,
                loss_label: str = "Dice + CE loss") -> Path:
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel(loss_label)
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(epochs, [h["val"][metric] for h in history], "o-", color="C2")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(f"validation {metric}")
    ax2.set_ylim(0, 1)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def colorize(labels: np.ndarray, palette: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    return np.asarray(palette, np.uint8)[labels]


def plot_predictions(images: np.ndarray, truths: np.ndarray, preds: np.ndarray,
                     palette: tuple[tuple[int, int, int], ...], path: Path) -> Path:
    """One row per frame: image, ground truth, prediction."""
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(9, 2.6 * n), squeeze=False)
    for row in range(n):
        for col, (title, pic) in enumerate((("frame", images[row]),
                                            ("ground truth", colorize(truths[row], palette)),
                                            ("prediction", colorize(preds[row], palette)))):
            ax = axes[row][col]
            ax.imshow(pic)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_vlm_curves(history: list[dict], path: Path) -> Path:
    """VLM run: losses, and the validation scores that pick the best epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("answer-token cross-entropy")
    ax1.set_yscale("log")
    ax1.legend()
    ax1.grid(alpha=0.3)
    for key, label in (("mention_f1", "mention F1"), ("vqa_accuracy", "VQA accuracy"),
                       ("bleu4", "BLEU-4")):
        ax2.plot(epochs, [h["val"][key] for h in history], "o-", label=label)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation")
    ax2.set_ylim(0, 1)
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_captions(images: np.ndarray, captions: list[str], truths: list[str],
                  path: Path) -> Path:
    """One frame per row with the model's caption and the ground truth's under it."""
    import textwrap

    n = len(images)
    fig, axes = plt.subplots(n, 2, figsize=(10, 2.4 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2.6]})
    for row in range(n):
        axes[row][0].imshow(images[row])
        axes[row][0].set_axis_off()
        text = (f"model: {textwrap.fill(captions[row], 70)}\n\n"
                f"truth: {textwrap.fill(truths[row], 70)}")
        axes[row][1].text(0, 0.5, text, va="center", fontsize=8, family="monospace")
        axes[row][1].set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
