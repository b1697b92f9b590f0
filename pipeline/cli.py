"""`orstream`: parse arguments, then call plain functions that know nothing about argv."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from loguru import logger


def _size_wh(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 1920x1080, got {text!r}") from None
    return w, h


def _cmd_synth_dataset(args: argparse.Namespace) -> int:
    from training.synth.writers import write_endovis2017

    w, h = args.size
    write_endovis2017(args.dir, videos=args.videos, frames=args.frames, seed=args.seed,
                      width=w, height=h, workers=args.workers, step=args.step)
    print(args.dir)
    return 0


def _cmd_synth_video(args: argparse.Namespace) -> int:
    from training.synth.writers import write_video

    w, h = args.size
    write_video(args.path, seconds=args.seconds, width=w, height=h, fps=args.fps, seed=args.seed)
    print(args.path)
    return 0


def _cmd_train_unet(args: argparse.Namespace) -> int:
    import yaml
    from pydantic import ValidationError

    from training.unet_trainer import TrainConfig, train_unet

    values: dict = {}
    if args.config:
        values.update(yaml.safe_load(Path(args.config).read_text()) or {})
    overrides = {k: v for k, v in vars(args).items()
                 if k in TrainConfig.model_fields and v is not None}
    values.update(overrides)
    try:
        cfg = TrainConfig(**values)
    except ValidationError as exc:
        raise SystemExit(_config_error(exc, args.config)) from None
    print(train_unet(cfg))
    return 0


def _config_error(exc, source: str | None) -> str:
    where = f" in {source}" if source else ""
    lines = [f"invalid training configuration{where}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _cmd_eval(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate, format_table

    videos = [int(v) for v in args.videos.split(",")] if args.videos else None
    result = evaluate(args.data, args.weights, videos=videos, fold=args.fold, batch=args.batch)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orstream", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="make synthetic endoscope videos and datasets")
    synth_sub = synth.add_subparsers(dest="what", required=True)
    ds = synth_sub.add_parser("dataset", help="write a dataset in the EndoVis 2017 layout")
    ds.add_argument("dir", type=Path)
    ds.add_argument("--layout", choices=["endovis2017"], default="endovis2017")
    ds.add_argument("--videos", type=int, default=8)
    ds.add_argument("--frames", type=int, default=225, help="frames per video")
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--size", type=_size_wh, default=(1920, 1080), help="WxH")
    ds.add_argument("--step", type=int, default=15,
                    help="take every Nth frame of the 30 fps video (default 15: 2 Hz)")
    ds.add_argument("--workers", type=int, default=2, help="processes, one video each")
    ds.set_defaults(func=_cmd_synth_dataset)
    vid = synth_sub.add_parser("video", help="write a synthetic procedure as H.264 video")
    vid.add_argument("path", type=Path)
    vid.add_argument("--seconds", type=float, default=10.0)
    vid.add_argument("--size", type=_size_wh, default=(1920, 1080), help="WxH")
    vid.add_argument("--fps", type=float, default=30.0)
    vid.add_argument("--seed", type=int, default=0)
    vid.set_defaults(func=_cmd_synth_video)

    train = sub.add_parser("train", help="train a model")
    train_sub = train.add_subparsers(dest="what", required=True)
    unet = train_sub.add_parser("unet", help="train a U-Net segmentation model")
    unet.add_argument("--config", help="YAML with TrainConfig keys; flags override it")
    unet.add_argument("--data", type=Path)
    unet.add_argument("--task", choices=["binary", "parts", "types"])
    unet.add_argument("--model", help="unet_xs, unet_s, unet_m, attunet_xs, attunet_s")
    unet.add_argument("--epochs", type=int)
    unet.add_argument("--batch", type=int)
    unet.add_argument("--lr", type=float)
    unet.add_argument("--size", help="HxW model input, multiple of 32 (default 256x320)")
    unet.add_argument("--crop", help="HxW training crop (default 128x160)")
    unet.add_argument("--fold", type=int, help="TernausNet fold 0-3 held out for validation")
    unet.add_argument("--out", type=Path)
    unet.add_argument("--resume", action="store_true", default=None)
    unet.add_argument("--seed", type=int)
    unet.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=int)
    unet.set_defaults(func=_cmd_train_unet)

    ev = sub.add_parser("eval", help="score segmentation weights on a dataset")
    ev.add_argument("--data", type=Path, required=True)
    ev.add_argument("--weights", type=Path, required=True)
    ev.add_argument("--videos", help="comma-separated video ids (default: all)")
    ev.add_argument("--fold", type=int, help="score only this fold's validation videos")
    ev.add_argument("--batch", type=int, default=8)
    ev.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ev.set_defaults(func=_cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logger.remove()
    # Logs go to stderr so that stdout carries only results (paths, JSON) for scripts.
    logger.add(sys.stderr, level="DEBUG" if args.verbose else "INFO")
    from engines.checkpoint import CheckpointError
    from training.datasets.endovis import DatasetError

    try:
        return int(args.func(args) or 0)
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError) as exc:
        logger.error("{}", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
