"""`orstream`: parse arguments, then call plain functions that know nothing about argv."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

if TYPE_CHECKING:
    from orstream.pipeline.security import Curve


def _size_wh(text: str) -> tuple[int, int]:
    """--size WxH -> (W, H): every size on the command line is written WxH."""
    from orstream.common.sizes import SizeError, parse_size

    try:
        return parse_size(text)
    except SizeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    """--frames N: 0 or less would mean 'never stop' to one command and 'stop now' to another."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of frames, got {text!r}") \
            from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more frames, got {value}")
    return value


def _weights(text: str) -> Path:
    """--weights: a checkpoint as given, or one of the shipped ones by its repository path
    (engines/weights/..., from any folder). A path that names neither is passed on as given,
    for the command's own one-line error."""
    from orstream.engines.checkpoint import CheckpointError, weights_path

    try:
        return weights_path(text)
    except CheckpointError:
        return Path(text)


def _cmd_synth_dataset(args: argparse.Namespace) -> int:
    from orstream.training.synth.writers import write_endovis2017

    w, h = args.size
    write_endovis2017(args.dir, videos=args.videos, frames=args.frames, seed=args.seed,
                      width=w, height=h, workers=args.workers, step=args.step)
    print(args.dir)
    return 0


def _cmd_synth_video(args: argparse.Namespace) -> int:
    from orstream.training.synth.writers import write_video

    w, h = args.size
    write_video(args.path, seconds=args.seconds, width=w, height=h, fps=args.fps, seed=args.seed)
    print(args.path)
    return 0


def _cmd_synth_vlm_data(args: argparse.Namespace) -> int:
    from orstream.training.vlm.data import write_vlm_data

    write_vlm_data(args.dir, frames=args.frames, seed=args.seed, per_video=args.per_video,
                   step=args.step, render_size=args.size, input_size=args.input_size,
                   workers=args.workers)
    print(args.dir)
    return 0


def _cmd_train_vlm(args: argparse.Namespace) -> int:
    from orstream.training.vlm.trainer import VLMTrainConfig, train_vlm

    print(train_vlm(_train_config(VLMTrainConfig, args)))
    return 0


def _cmd_eval_vlm(args: argparse.Namespace) -> int:
    from orstream.training.vlm.evaluate import evaluate_vlm, format_table

    result = evaluate_vlm(args.data, args.weights, batch=args.batch, frames=args.frames)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def _cmd_train_unet(args: argparse.Namespace) -> int:
    from orstream.training.unet_trainer import TrainConfig, train_unet

    print(train_unet(_train_config(TrainConfig, args)))
    return 0


def _cmd_train_tpsis(args: argparse.Namespace) -> int:
    from orstream.training.tpsis_trainer import TPSISTrainConfig, train_tpsis

    print(train_tpsis(_train_config(TPSISTrainConfig, args)))
    return 0


def _train_config(model: type, args: argparse.Namespace):
    """The --config YAML with the flags given on top, validated; errors name the key."""
    from pydantic import ValidationError

    from orstream.common.errors import UsageError
    from orstream.common.yamlio import load_mapping

    values: dict = {}
    if args.config:
        values.update(load_mapping(args.config))
    values.update({k: v for k, v in vars(args).items()
                   if k in model.model_fields and v is not None})
    try:
        return model(**values)
    except ValidationError as exc:
        raise UsageError(_config_error(exc, args.config)) from None


def _config_error(exc, source: str | None) -> str:
    """One line: where, then each bad key with pydantic's reason (its 'Value error, ' prefix
    says nothing to a user) and the value given."""
    where = f" in {source}" if source else " (flags)"
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        shown = err["type"] == "missing" or f"{err.get('input')!r}" in msg
        got = "" if shown else f" (got {err.get('input')!r})"
        problems.append(f"{key}: {msg}{got}")
    return f"invalid training configuration{where}: " + "; ".join(problems)


def _cmd_eval(args: argparse.Namespace) -> int:
    from orstream.training.evaluate import evaluate, format_table

    videos = [int(v) for v in args.videos.split(",")] if args.videos else None
    extra = {}
    if args.vocabulary is not None:
        from orstream.common.errors import UsageError
        from orstream.engines.tpsis_checkpoint import is_tpsis

        if not is_tpsis(args.weights):
            raise UsageError(f"--vocabulary is for TP-SIS weights (its prompts are read with "
                             f"it); {args.weights} is a U-Net checkpoint")
        extra["vocabulary"] = args.vocabulary
    result = evaluate(args.data, args.weights, videos=videos, fold=args.fold, batch=args.batch,
                      postprocess=args.postprocess, **extra)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0


def _install_signal_handlers(request_stop) -> None:
    import signal

    def handler(signum, _frame):
        logger.info("{} received: stopping", signal.Signals(signum).name)
        request_stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# The flag (or argument) of `run`/`replay` behind each config key it sets, for errors.
_FLAGS = {"publish.endpoint": "--publish", "record.path": "--record", "source.mode": "--mode",
          "source.loop": "--loop", "source.start": "--start", "source.end": "--end"}


def _run_pipeline(args: argparse.Namespace, **source: object) -> int:
    """`run` and `replay`: the config, the options they share, and `source` as
    `source__key=value` overrides (None: keep the config's value)."""
    import gc

    # Start-up (imports, the model, the render kernels) makes hundreds of thousands of
    # objects and the collector walked them over and over: 50-70 ms of a start that a
    # recording killed at any moment pays for. The runner collects once, freezes what
    # survives and turns the collector back on before the first frame is captured.
    gc.disable()
    from orstream.pipeline.capture import keep_frame_memory
    from orstream.pipeline.config import load_config
    from orstream.pipeline.runner import Pipeline

    keep_frame_memory()  # freed frames stay in the process: no page faults per frame

    overrides, publish = list(args.set), args.publish
    if publish is not None and publish.lower() in ("null", "none"):
        overrides.append("publish.endpoint=null")  # as in the YAML: no publisher
        publish = None
    cfg = load_config(args.config, overrides, port_base=args.port_base,
                      flags={**_FLAGS, "source.spec": "--source" if args.command == "run"
                             else "the recording"},
                      publish__endpoint=publish, record__path=args.record, **source)
    stages = args.stages.split(",") if getattr(args, "stages", None) else None

    def publishing(endpoint: str) -> None:  # called once bound: never of a port that is taken
        print(f"publishing on {endpoint}  (watch: orstream view {endpoint})", flush=True)

    # A source that cannot open raises SourceError here: main() reports it (exit 2).
    pipeline = Pipeline(cfg, max_frames=args.frames, status_every_s=1.0, stages=stages,
                        on_publishing=publishing)
    _install_signal_handlers(pipeline.request_stop)
    result = pipeline.run()  # a failed stage raises PipelineError: main() reports it
    outages = (f", source down {result.source_reconnects} time(s) for "
               f"{result.source_outage_s:.1f} s (~{result.source_missed} frames missed)"
               if result.source_reconnects else "")
    if result.inference_outages:
        outages += (f", inference server down {result.inference_outages} time(s) for "
                    f"{result.inference_outage_s:.1f} s ({result.unlabelled} frames shown "
                    f"unlabelled)")
    logger.info("{} frames in {:.1f} s, {} dropped, {} rejected{}", result.frames_out,
                result.elapsed_s, result.dropped, result.rejected, outages)
    if result.recording_failed is not None:
        # The cause was logged when it happened; the exit status tells a script that the
        # run went on but its recording did not reach the end.
        logger.warning("the recording is incomplete: it stopped mid-run (the error above) and "
                       "{} frames after it were not recorded; exit status 1",
                       result.unrecorded)
        return 1
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    return _run_pipeline(args, source__spec=args.source)


def _cmd_replay(args: argparse.Namespace) -> int:
    return _run_pipeline(args, source__spec=args.path, source__mode=args.mode,
                         source__loop=args.loop, source__start=args.start,
                         source__end=args.end)


def _cmd_view(args: argparse.Namespace) -> int:
    import threading

    from orstream.pipeline.capture import keep_frame_memory
    from orstream.pipeline.view import no_frames_message, view

    keep_frame_memory()  # each frame's message buffer reused, not faulted in afresh
    curve = _client_curve(args, "view", "the publisher's")
    stop = threading.Event()
    _install_signal_handlers(stop.set)
    summary = view(args.endpoint, frames=args.frames, save=args.save, save_every=args.every,
                   window=False if args.headless else None, timeout_s=args.timeout,
                   stop=stop, quiet=args.json, measure=args.measure, clock=args.clock,
                   size=args.size, curve=curve, stall_warn_s=args.stall)
    if args.json:
        print(json.dumps(summary.to_json()))
    if summary.frames == 0:
        logger.error("{}", no_frames_message(args.endpoint, summary.elapsed_s))
        return 1
    if args.frames is not None and summary.frames < args.frames:
        logger.error("{} of the {} frames asked for came from {} in {:.0f} s", summary.frames,
                     args.frames, args.endpoint, summary.elapsed_s)
        return 1
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    from orstream.pipeline.config import effective_yaml, load_config

    cfg = load_config(args.config, args.set, port_base=args.port_base)
    print(effective_yaml(cfg), end="")
    return 0


def _client_curve(args: argparse.Namespace, command: str, whose: str) -> Curve | None:
    """--key/--server-key of a client command: both or neither."""
    from orstream.common.errors import UsageError
    from orstream.pipeline.security import curve_from_files

    if not (args.key or args.server_key):
        return None
    if not (args.key and args.server_key):
        raise UsageError(f"{command} over CurveZMQ needs both --key (yours, NAME.key_secret) "
                         f"and --server-key ({whose} NAME.key)")
    return curve_from_files(args.key, args.server_key, names=("--key", "--server-key"))


def _cmd_ask(args: argparse.Namespace) -> int:
    from orstream.pipeline.describe import ask

    curve = _client_curve(args, "ask", "the pipeline's")
    reply = ask(args.endpoint, args.question, args.timeout, curve)
    if args.json:
        print(json.dumps(reply))
    elif "error" in reply:
        logger.error("{}", reply["error"])
    else:
        print(f"{reply['answer']}  (frame {reply['seq']} of {reply['stream']}, "
              f"{reply['ms']:.0f} ms)")
    return 1 if "error" in reply else 0


def _cmd_prompt(args: argparse.Namespace) -> int:
    from orstream.pipeline.prompting import set_prompts

    curve = _client_curve(args, "prompt", "the pipeline's")
    reply = set_prompts(args.endpoint, args.prompts, args.timeout, curve)
    if args.json:
        print(json.dumps(reply))
    elif "error" in reply:
        logger.error("{}", reply["error"])
    else:
        since = (f"from frame {reply['seq']}" if reply.get("seq") is not None
                 else "from the next frame")
        print(f"segmenting {', '.join(repr(p) for p in reply['prompts'])} {since}")
        for r in reply.get("read_as", []):
            print(f"  {r['prompt']!r} read as {r['read_as']!r} ({r['class']}: nearest "
                  f"{r['nearest']!r}, similarity {r['similarity']:.2f}; "
                  f"segment.read_prompts: false to turn off)")
    return 1 if "error" in reply else 0


def _cmd_web(args: argparse.Namespace) -> int:
    import os
    import threading

    from orstream.pipeline.capture import keep_frame_memory
    from orstream.pipeline.web import WebOptions, serve
    from orstream.pipeline.web.access import TOKEN_ENV

    keep_frame_memory()  # as `view`: each frame's message buffer reused
    opts = WebOptions(args.endpoint, listen=args.listen, ask=args.ask, full=args.full,
                      curve=_client_curve(args, "web", "the publisher's"),
                      token=args.token or os.environ.get(TOKEN_ENV) or None,
                      tls_cert=args.tls_cert, tls_key=args.tls_key, insecure=args.insecure,
                      quality=args.quality, stall_warn_s=args.stall)
    stop = threading.Event()
    _install_signal_handlers(stop.set)

    def listening(url: str) -> None:  # called once bound: never of a port that is taken
        hint = "?token=YOUR_TOKEN" if opts.token else ""
        print(f"serving {url}{hint}  (open it in a browser; Ctrl-C stops)", flush=True)

    serve(opts, stop, listening)
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from orstream.pipeline.security import make_keys

    public, secret = make_keys(args.dir, args.name)
    logger.info("public key {} (give it to peers: allowed_clients or server_public_key); "
                "secret key {} (keep it on this machine: security.key)", public, secret)
    print(public)
    print(secret)
    return 0


def _size_hw(text: str) -> tuple[int, int]:
    """A model input, written WxH like every size (320x256) -> the (H, W) engines take."""
    w, h = _size_wh(text)
    return h, w


def _cmd_export(args: argparse.Namespace) -> int:
    from orstream.engines.cache import EngineCache
    from orstream.engines.export import EngineSpec, cache_listing, export_engine

    cache = EngineCache(args.cache)
    if args.list:
        rows = cache_listing(cache)
        if args.json:
            print(json.dumps({"cache": str(cache.root), "entries": rows}, indent=2))
            return 0
        print(f"engine cache {cache.root}: {len(rows)} entries")
        for r in rows:
            print(f"  {r['backend']:<11} {r['precision']:<5} {r['input']:<9} {r['model']:<10} "
                  f"{r['mb']:>6} MB  built {r['built_at']} in {r['build_s']} s  "
                  f"weights {r['weights_sha256']}  {r['device']}  [{r['status']}]")
        return 0
    if args.weights is None or args.backend is None:
        logger.error("export needs --weights and --backend (or --list)")
        return 2
    if args.backend == "triton":
        return _export_triton(args, cache.root)
    entry = export_engine(EngineSpec(args.weights, args.backend, args.precision, args.size,
                                     args.device, cache=cache.root), rebuild=args.rebuild)
    print(entry.folder)
    return 0


def _export_triton(args: argparse.Namespace, cache: Path) -> int:
    from orstream.common.errors import UsageError
    from orstream.engines.triton_repo import TritonModelOptions, export_triton_repo

    if args.out is None:
        raise UsageError("export --backend triton needs --out MODEL_REPO: the folder Triton "
                         "serves (--model-repository)")
    options = TritonModelOptions(args.triton_runtime, args.model_name, args.max_batch,
                                 args.queue_delay_us, args.instances, args.threads,
                                 args.device == "cuda", args.precision)
    folder = export_triton_repo(args.weights, args.out, options, args.size, cache)
    print(folder)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import threading

    from orstream.common.errors import UsageError
    from orstream.engines.triton_server import Ports, serve

    stop = threading.Event()
    _install_signal_handlers(stop.set)
    tls = None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("serve: --tls-cert and --tls-key go together")
    if args.tls_cert is not None:
        tls = (args.tls_cert, args.tls_key)
    return serve(args.triton, Ports(args.http_port, args.grpc_port, args.metrics_port),
                 args.address, stop.is_set, tls=tls, insecure=args.insecure)


def _cmd_calibrate_collect(args: argparse.Namespace) -> int:
    from orstream.calibration.sets import collect
    from orstream.common.sizes import format_hw

    calib = collect(args.source, args.frames, args.size, args.crop, args.holdout)
    path = calib.save(args.out)
    truth = max((t.frames for t in calib.holdout_truth.values()), default=0)
    logger.info("calibration set: {} frames + {} held out ({} with ground truth) at {} from "
                "{} -> {} ({:.1f} MB)", len(calib.frames), len(calib.holdout), truth,
                format_hw(calib.size), ", ".join(args.source), path, path.stat().st_size / 1e6)
    print(path)
    return 0


def _cmd_calibrate_build(args: argparse.Namespace) -> int:
    from orstream.calibration.build import GateRefused, build_int8
    from orstream.engines.cache import EngineCache

    try:
        entry = build_int8(args.weights, args.backend, args.calib, args.size, args.threshold,
                           EngineCache(args.cache), args.report, args.method)
    except GateRefused as exc:
        logger.error("{}", exc)
        return 1
    print(entry.folder)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from orstream.pipeline.bench.harness import bench_command
    from orstream.pipeline.bench.profiles import ProfileError
    from orstream.pipeline.capture import keep_frame_memory

    keep_frame_memory()  # as `run` does: the bench measures what users run

    try:
        return bench_command(args.source, args.out, args.config, args.mode, args.profile,
                             args.frames, args.warmup, args.set, args.baseline,
                             args.regression, not args.no_peers, args.allow_unlike)
    except ProfileError as exc:
        logger.error("{}", exc)
        return 2


def _add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """Options every pipeline command takes (run, replay)."""
    parser.add_argument("--config", type=Path,
                        help="pipeline YAML (default $ORSTREAM_CONFIG, else the shipped "
                             "configs/pipeline.yaml)")
    parser.add_argument("--frames", type=_positive, help="stop after N rendered frames")
    parser.add_argument("--publish",
                        help="ZeroMQ endpoint for displays, e.g. tcp://127.0.0.1:5600; "
                             "null: no publisher")
    parser.add_argument("--record", type=Path, help="record the overlay to this .mp4 or .ts")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set render.alpha=0.6 "
                             "(repeatable)")
    parser.add_argument("--port-base", dest="port_base", type=_port_base, metavar="N",
                        help="a second pipeline on this host: publish on tcp://127.0.0.1:N, "
                             "questions on N+1, the mask stream (when on) on N+2")


def _port_base(text: str) -> int:
    """--port-base N: three consecutive ports from N, above the privileged ones."""
    if not text.isdigit() or not 1024 <= int(text) <= 65533:
        raise argparse.ArgumentTypeError(f"expected a port from 1024 to 65533, got {text!r}")
    return int(text)


DESCRIPTION = ("Real-time instrument segmentation and scene captions on endoscope video, "
               "published to ZeroMQ displays and recorded.")
EXAMPLES = """examples:
  orstream run                                   live pipeline on a synthetic 1080p30 feed
  orstream run --source rtsp://cam/or1 --record out.mp4
                                                 a network camera, recorded
  orstream replay procedure.mp4 --mode lossless  every frame of a recording
  orstream view tcp://127.0.0.1:5600             watch a pipeline's overlay
  orstream web tcp://127.0.0.1:5600 --ask tcp://127.0.0.1:5601
                                                 watch it in a browser (http://127.0.0.1:8080/)
  orstream ask tcp://127.0.0.1:5601 "is there smoke?"
                                                 ask the scene-describing model
  orstream prompt tcp://127.0.0.1:5601 "scissors" "needle holder"
                                                 segment these (segment.model: tpsis)
  orstream run --port-base 5700                  a second pipeline on the same host
  orstream config show --set render.alpha=0.6    the configuration a run would use
  orstream bench --frames 300                    latency against the device's budgets
  orstream export --weights W.pt --backend openvino
                                                 build an inference engine
  orstream export --weights W.pt --backend triton --out model_repo
  orstream serve --triton model_repo             one Triton server for many rooms'
                                                 pipelines (segment.backend: triton)
  orstream synth dataset data/synth17            a synthetic EndoVis-style dataset
  orstream train unet --config configs/train/unet_xs_types.yaml
  orstream eval --data data/synth17 --weights W.pt

`orstream COMMAND --help` lists a command's options. Expected errors print one line and
exit 2; --debug shows their traceback too."""


def build_parser() -> argparse.ArgumentParser:
    from orstream import __version__
    from orstream.engines.backends import INT8_DEVICE, NAMES, TRITON
    from orstream.engines.triton_repo import DEFAULT_MODEL as TRITON_MODEL
    from orstream.engines.triton_repo import RUNTIMES as TRITON_RUNTIMES

    parser = argparse.ArgumentParser(prog="orstream", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"orstream {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of every error, expected ones too")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="the pipeline configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the effective configuration as YAML "
                                 "(the file, then ORSTREAM_SET, then --set)")
    show.add_argument("--config", type=Path, help="pipeline YAML (default $ORSTREAM_CONFIG, "
                      "else the shipped configs/pipeline.yaml)")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key, as for run (repeatable)")
    show.add_argument("--port-base", dest="port_base", type=_port_base, metavar="N",
                      help="as for run")
    show.set_defaults(func=_cmd_config_show)

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
    vd = synth_sub.add_parser("vlm-data", help="frames + ground truth for the scene VLM")
    vd.add_argument("dir", type=Path)
    vd.add_argument("--frames", type=int, default=20000, help="frames in all")
    vd.add_argument("--seed", type=int, default=0,
                    help="procedures' seed; evaluate on a seed training never saw")
    vd.add_argument("--per-video", dest="per_video", type=int, default=50,
                    help="frames per procedure (each has its own tissue)")
    vd.add_argument("--step", type=int, default=30,
                    help="take every Nth frame of the 30 fps video (default 30: 1 Hz)")
    vd.add_argument("--size", type=_size_wh, default=(1920, 1080), help="render WxH")
    vd.add_argument("--input-size", dest="input_size", type=_size_hw, default=(128, 160),
                    help="stored WxH, the model's input (default 160x128)")
    vd.add_argument("--workers", type=int, default=2, help="processes")
    vd.set_defaults(func=_cmd_synth_vlm_data)

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
    unet.add_argument("--size", help="WxH model input, multiples of 32 (default 320x256)")
    unet.add_argument("--crop", help="WxH training crop (default 160x128), or none: whole "
                      "frames")
    unet.add_argument("--fold", type=int, help="TernausNet fold 0-3 held out for validation")
    unet.add_argument("--out", type=Path)
    unet.add_argument("--resume", action="store_true", default=None)
    unet.add_argument("--init", type=Path,
                      help="start from this checkpoint's weights (same task and model)")
    unet.add_argument("--seed", type=int)
    unet.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=int)
    unet.set_defaults(func=_cmd_train_unet)
    tp = train_sub.add_parser("tpsis", help="train TP-SIS, text-promptable segmentation")
    tp.add_argument("--config", help="YAML with TPSISTrainConfig keys; flags override it")
    tp.add_argument("--data", type=Path)
    tp.add_argument("--model", help="tpsis_xs, tpsis_s")
    tp.add_argument("--epochs", type=int)
    tp.add_argument("--batch", type=int)
    tp.add_argument("--lr", type=float)
    tp.add_argument("--out", type=Path)
    tp.add_argument("--resume", action="store_true", default=None)
    tp.add_argument("--init-unet", dest="init_unet", type=Path,
                    help="types U-Net whose weights start the visual encoder")
    tp.add_argument("--init", type=Path, help="start from this TP-SIS checkpoint's weights")
    tp.add_argument("--seed", type=int)
    tp.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=int)
    tp.add_argument("--val-frames", dest="val_frames", type=int,
                    help="validation frames scored per epoch")
    tp.set_defaults(func=_cmd_train_tpsis)
    vlm = train_sub.add_parser("vlm", help="train the scene-describing VLM")
    vlm.add_argument("--config", help="YAML with VLMTrainConfig keys; flags override it")
    vlm.add_argument("--data", type=Path, help="from `orstream synth vlm-data`")
    vlm.add_argument("--model", help="vlm_tiny, vlm_s")
    vlm.add_argument("--epochs", type=int)
    vlm.add_argument("--batch", type=int, help="frames per step")
    vlm.add_argument("--questions", type=int, help="questions per frame per step (0-4)")
    vlm.add_argument("--lr", type=float)
    vlm.add_argument("--precision", choices=["fp32", "bf16"])
    vlm.add_argument("--threads", type=int, help="torch threads")
    vlm.add_argument("--val-frames", dest="val_frames", type=int,
                     help="validation frames scored per epoch")
    vlm.add_argument("--out", type=Path)
    vlm.add_argument("--resume", action="store_true", default=None)
    vlm.add_argument("--seed", type=int)
    vlm.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=int)
    vlm.set_defaults(func=_cmd_train_vlm)

    run = sub.add_parser("run", help="run the live pipeline (default: synthetic 1080p30 feed)")
    run.add_argument("--source", help="synthetic, a video file, a stream URL (rtsp://, "
                     "udp://, tcp://, http://, ...), camera:N or /dev/videoN")
    run.add_argument("--stages", help="run only these stages here, e.g. capture,segment "
                     "(of capture, segment, render); the config's ipc/tcp edges join them "
                     "to the processes running the rest")
    _add_pipeline_options(run)
    run.set_defaults(func=_cmd_run)

    replay = sub.add_parser("replay", help="run the pipeline on a recorded procedure")
    replay.add_argument("path", help="video file (any container and codec FFmpeg reads)")
    replay.add_argument("--mode", choices=["paced", "lossless"],
                        help="paced: at the recording's own timestamps, newest frame only "
                             "(default); lossless: every frame once, as fast as processed")
    replay.add_argument("--loop", action="store_true", default=None,
                        help="start again at the end")
    replay.add_argument("--start", type=float, metavar="S", help="begin S seconds in")
    replay.add_argument("--end", type=float, metavar="S", help="stop S seconds in")
    _add_pipeline_options(replay)
    replay.set_defaults(func=_cmd_replay)

    vw = sub.add_parser("view", help="display client: subscribe to a publisher")
    vw.add_argument("endpoint", help="e.g. tcp://127.0.0.1:5600")
    vw.add_argument("--frames", type=_positive, help="exit after N frames")
    vw.add_argument("--save", type=Path, help="write every Nth frame as PNG into this dir")
    vw.add_argument("--every", type=int, default=30, help="N for --save (default 30)")
    vw.add_argument("--timeout", type=float, help="exit after this many seconds without frames")
    vw.add_argument("--stall", type=float, default=2.0, metavar="S",
                    help="warn when no frame came for S seconds (default 2)")
    vw.add_argument("--headless", action="store_true", help="never open a window")
    vw.add_argument("--json", action="store_true", help="one summary JSON object at exit")
    vw.add_argument("--size", type=_size_wh, help="show the picture at WxH (a smaller screen)")
    vw.add_argument("--measure", action="store_true",
                    help="capture to display from the timecode in the pixels shown "
                         "(source.timecode; synthetic by default)")
    vw.add_argument("--clock", choices=["monotonic", "wall"], default="monotonic",
                    help="--measure against: monotonic (same host, default) or wall (another "
                         "host; as good as the clocks' sync)")
    vw.add_argument("--key", type=Path, help="CurveZMQ: your NAME.key_secret")
    vw.add_argument("--server-key", dest="server_key", type=Path,
                    help="CurveZMQ: the publisher's public NAME.key")
    vw.set_defaults(func=_cmd_view)

    ak = sub.add_parser("ask", help="ask the running pipeline about the scene (describe)")
    ak.add_argument("endpoint", help="the pipeline's describe.ask_endpoint, by default "
                    "tcp://127.0.0.1:5601")
    ak.add_argument("question", help='e.g. "is there smoke?"')
    ak.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    ak.add_argument("--json", action="store_true", help="the reply as JSON")
    ak.add_argument("--key", type=Path, help="CurveZMQ: your NAME.key_secret")
    ak.add_argument("--server-key", dest="server_key", type=Path,
                    help="CurveZMQ: the pipeline's public NAME.key")
    ak.set_defaults(func=_cmd_ask)

    pr = sub.add_parser("prompt", help="change what a running TP-SIS pipeline segments "
                        "(segment.model: tpsis)")
    pr.add_argument("endpoint", help="the pipeline's describe.ask_endpoint, by default "
                    "tcp://127.0.0.1:5601")
    pr.add_argument("prompts", nargs="+", metavar="PROMPT",
                    help='1-16 texts, each its own colour, e.g. "scissors" "needle holder"')
    pr.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply")
    pr.add_argument("--json", action="store_true", help="the reply as JSON")
    pr.add_argument("--key", type=Path, help="CurveZMQ: your NAME.key_secret")
    pr.add_argument("--server-key", dest="server_key", type=Path,
                    help="CurveZMQ: the pipeline's public NAME.key")
    pr.set_defaults(func=_cmd_prompt)

    wb = sub.add_parser("web", help="browser display: the overlay, caption, latency and "
                        "questions in a web page")
    wb.add_argument("endpoint", help="the publisher, e.g. tcp://127.0.0.1:5600")
    wb.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                    help="where the page is served (default 127.0.0.1:8080, this machine "
                         "only; any other address needs --tls-cert/--tls-key and a token)")
    wb.add_argument("--ask", metavar="ENDPOINT",
                    help="the pipeline's describe.ask_endpoint (e.g. tcp://127.0.0.1:5601): "
                         "questions, and prompt changes for TP-SIS, from the page")
    wb.add_argument("--token", help="required in the page's URL (?token=...) and by its "
                    "WebSocket and API (default $ORSTREAM_WEB_TOKEN)")
    wb.add_argument("--tls-cert", dest="tls_cert", type=Path, help="HTTPS: PEM certificate")
    wb.add_argument("--tls-key", dest="tls_key", type=Path, help="HTTPS: its PEM private key")
    wb.add_argument("--insecure", action="store_true",
                    help="serve off loopback without TLS or token (logged as a warning)")
    wb.add_argument("--full", action="store_true",
                    help="send every tab full-resolution frames, not scaled to its canvas")
    wb.add_argument("--quality", type=int, default=80, choices=range(30, 101),
                    metavar="30-100", help="JPEG quality (default 80)")
    wb.add_argument("--stall", type=float, default=2.0, metavar="S",
                    help="warn when no frame came for S seconds (default 2)")
    wb.add_argument("--key", type=Path, help="CurveZMQ: your NAME.key_secret")
    wb.add_argument("--server-key", dest="server_key", type=Path,
                    help="CurveZMQ: the publisher's public NAME.key")
    wb.set_defaults(func=_cmd_web)

    keys = sub.add_parser("keys", help="make a CurveZMQ key pair (NAME.key, NAME.key_secret)")
    keys.add_argument("dir", type=Path)
    keys.add_argument("name", help="e.g. the host or role: or1-capture, inference, display-3")
    keys.set_defaults(func=_cmd_keys)

    ex = sub.add_parser("export", help="build an inference engine into the engine cache")
    ex.add_argument("--weights", type=_weights, help="checkpoint (e.g. engines/weights/...pt)")
    ex.add_argument("--backend", choices=[*NAMES, TRITON],
                    help="triton: a Triton model repository in --out instead of a cached engine")
    ex.add_argument("--precision", choices=["fp32", "bf16", "fp16", "int8"], default="fp32")
    ex.add_argument("--size", type=_size_hw, help="model input WxH, e.g. 320x256 (default: "
                    "as trained)")
    ex.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ex.add_argument("--cache", type=Path,
                    help="engine cache (default $ORSTREAM_ENGINE_CACHE or ~/.cache/orstream)")
    ex.add_argument("--rebuild", action="store_true", help="build even if cached")
    ex.add_argument("--list", action="store_true", help="show the cache's entries")
    ex.add_argument("--json", action="store_true", help="--list as JSON")
    tr = ex.add_argument_group("--backend triton")
    tr.add_argument("--out", type=Path, help="the model repository folder (made if missing)")
    tr.add_argument("--triton-runtime", dest="triton_runtime", default="python",
                    choices=TRITON_RUNTIMES,
                    help="python: ONNX Runtime inside Triton's Python backend (what `orstream "
                         "serve --triton` runs); onnxruntime, tensorrt (ONNX Runtime with "
                         "TensorRT, GPU), openvino: the official container's backends")
    tr.add_argument("--model-name", dest="model_name", default=TRITON_MODEL,
                    help="the model's name on the server (segment.triton.model)")
    tr.add_argument("--max-batch", dest="max_batch", type=_positive, default=8,
                    help="largest batch the server forms from the rooms' frames")
    tr.add_argument("--instances", type=_positive, default=1, help="model instances")
    tr.add_argument("--threads", type=int, default=0,
                    help="python runtime: inference threads per instance (0: all cores)")
    tr.add_argument("--queue-delay-us", dest="queue_delay_us", type=int, default=0,
                    help="how long a frame may wait for others to batch with (0: never)")
    ex.set_defaults(func=_cmd_export)

    sv = sub.add_parser("serve", help="run a Triton Inference Server for many rooms' pipelines")
    sv.add_argument("--triton", type=Path, required=True, metavar="MODEL_REPO",
                    help="the model repository (orstream export --backend triton --out ...)")
    sv.add_argument("--address", default="127.0.0.1",
                    help="where to listen (default loopback; another address needs --tls-cert "
                         "and --tls-key, or --insecure)")
    sv.add_argument("--grpc-port", dest="grpc_port", type=int, default=8001)
    sv.add_argument("--http-port", dest="http_port", type=int, default=8000,
                    help="HTTP/REST (segment.triton.protocol http); on loopback when --tls-cert "
                         "is given: Triton has no TLS for it")
    sv.add_argument("--metrics-port", dest="metrics_port", type=int, default=8002)
    sv.add_argument("--tls-cert", dest="tls_cert", type=Path, help="gRPC TLS certificate (PEM)")
    sv.add_argument("--tls-key", dest="tls_key", type=Path, help="its private key (PEM)")
    sv.add_argument("--insecure", action="store_true",
                    help="allow a non-loopback address without TLS (a closed network only)")
    sv.set_defaults(func=_cmd_serve)

    be = sub.add_parser("bench", help="per-frame latency against a device's budgets")
    be.add_argument("--source", default="synthetic", help="synthetic, a recording, a URL")
    be.add_argument("--mode", choices=["paced", "lossless"], help="files: replay mode")
    be.add_argument("--profile", default="auto",
                    help="configs/devices/NAME.yaml or auto (picked by the detected device)")
    be.add_argument("--frames", type=_positive, default=600, help="measured frames")
    be.add_argument("--warmup", type=int, default=30, help="frames left out of the figures")
    be.add_argument("--out", type=Path, default=Path("bench-report"))
    be.add_argument("--baseline", type=Path, help="an earlier --out to compare with")
    be.add_argument("--allow-unlike", dest="allow_unlike", action="store_true",
                    help="compare with a baseline of another source, mode or profile "
                         "(refused by default: its ratios mean little); warns in the report")
    be.add_argument("--regression", type=float, default=0.10,
                    help="ratio over which a figure counts as regressed (default 0.10)")
    be.add_argument("--config", type=Path, help="pipeline YAML (default configs/pipeline.yaml)")
    be.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="pipeline key, or budgets.KEY for the profile's budgets")
    be.add_argument("--no-peers", action="store_true", help="skip the floors (memcpy, ...)")
    be.set_defaults(func=_cmd_bench)

    cal = sub.add_parser("calibrate", help="INT8 engines: calibration sets, quantise + gate")
    cal_sub = cal.add_subparsers(dest="calibrate_command", required=True)
    co = cal_sub.add_parser("collect", help="sample frames spread over sources")
    co.add_argument("--source", action="append", required=True,
                    help="synthetic[:SEED], a recording, or a folder of frames (repeatable)")
    co.add_argument("--frames", type=int, default=300, help="calibration frames (>= 100)")
    co.add_argument("--holdout", type=int, help="held-out frames for the gate "
                    "(default: a quarter, at least 50 per source)")
    co.add_argument("--size", type=_size_hw, default=(256, 320),
                    help="model input WxH (default 320x256)")
    co.add_argument("--crop", choices=["endovis", "none"], default="endovis")
    co.add_argument("--out", type=Path, default=Path("calib.npz"))
    co.set_defaults(func=_cmd_calibrate_collect)
    cb = cal_sub.add_parser("build", help="quantise to INT8; store only if the gate passes")
    cb.add_argument("--weights", type=_weights, required=True)
    cb.add_argument("--backend", choices=list(INT8_DEVICE), required=True)
    cb.add_argument("--calib", type=Path, required=True, help="from `calibrate collect`")
    cb.add_argument("--size", type=_size_hw, help="model input WxH; must match the "
                    "calibration set's")
    cb.add_argument("--threshold", type=float, default=1.0,
                    help="largest mean Dice drop allowed, in points (default 1.0)")
    cb.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    cb.add_argument("--cache", type=Path, help="engine cache (default as for export)")
    cb.add_argument("--report", type=Path, help="where a refused engine's report goes "
                    "(default ./int8-gate-BACKEND)")
    cb.set_defaults(func=_cmd_calibrate_build)

    ev = sub.add_parser("eval", help="score segmentation weights on a dataset")
    ev.add_argument("--data", type=Path, required=True)
    ev.add_argument("--weights", type=_weights, required=True)
    ev.add_argument("--videos", help="comma-separated video ids (default: all)")
    ev.add_argument("--fold", type=int, help="score only this fold's validation videos")
    ev.add_argument("--batch", type=int, default=8)
    ev.add_argument("--postprocess", choices=["auto", "vote", "none"], default="auto",
                    help="vote: one type per connected instrument (default for types)")
    ev.add_argument("--vocabulary", type=Path, help="TP-SIS: a site's instrument names, "
                    "added to the shipped vocabulary the held-out prompts are read with")
    ev.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ev.set_defaults(func=_cmd_eval)

    evl = sub.add_parser("eval-vlm", help="score VLM weights: BLEU, mention F1, VQA")
    evl.add_argument("--data", type=Path, required=True, help="from `orstream synth vlm-data`")
    evl.add_argument("--weights", type=Path, required=True)
    evl.add_argument("--frames", type=int, help="score only the first N frames")
    evl.add_argument("--batch", type=int, default=64)
    evl.add_argument("--json", action="store_true", help="one JSON object on stdout")
    evl.set_defaults(func=_cmd_eval_vlm)
    # -v and --debug work after the command too (`orstream run --debug`), where a user adds
    # them when a command fails. SUPPRESS: absent there, the top level's value stands.
    for group in (sub, config_sub, synth_sub, train_sub, cal_sub):
        for command in group.choices.values():
            command.add_argument("-v", "--verbose", action="store_true",
                                 default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logger.remove()
    # Logs go to stderr so that stdout carries only results (paths, JSON) for scripts.
    # diagnose=False: a traceback never prints the values of locals (frames of patient video).
    logger.add(sys.stderr, level="DEBUG" if args.verbose else "INFO", diagnose=False)
    from orstream.common.errors import OrstreamError
    from orstream.pipeline.runner import PipelineError

    def report(exc: BaseException, code: int) -> int:
        """One line naming the input and the fix; the traceback only with --debug."""
        logger.opt(exception=exc if args.debug else None).error("{}", exc)
        return code

    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        raise  # the reader of stdout went away (| head): console() leaves quietly
    except OrstreamError as exc:
        return report(exc, exc.exit_code)
    except PipelineError as exc:
        # A stage's expected error leaves run() as itself (caught above); this is a bug in a
        # stage, whose traceback the executor has logged, or stages that would not stop.
        return report(exc, 1)
    # Errors raised by libraries on the user's input rather than by orstream: a missing or
    # unreadable file, an unanswered `ask` (TimeoutError), a value a library refused.
    except (ValueError, OSError) as exc:
        return report(exc, 2)


def console() -> None:
    """The `orstream` command: main(), then a quick exit (pipeline/quick_exit.py)."""
    import os

    from orstream.pipeline.quick_exit import exit_now

    try:
        try:
            code = main()
        finally:
            sys.stdout.flush()  # a reader that closed the pipe (| head) shows up here
    except BrokenPipeError:
        # Python's documented way (library/signal, "Note on SIGPIPE"): point stdout at
        # /dev/null so the interpreter's own flush at exit cannot fail again, and leave.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        exit_now(1)
    exit_now(code)


if __name__ == "__main__":
    console()
