"""Changing TP-SIS's prompts while the pipeline runs, without a restart.

`orstream prompt ENDPOINT "scissors" "needle holder"` (or any client of the ask socket,
describe.ask_endpoint) sends `{"prompts": ["scissors", "needle holder"]}`; the reply is
`{"prompts": [...], "seq": int | null, "ms": float, "read_as": [...]}` or `{"error": str}`;
`read_as` lists each prompt the model is given as a trained prompt (engines/tpsis_reading.py:
`{"prompt", "read_as", "class", "similarity", "nearest"}`: the trained prompt or vocabulary
name it was nearest), empty when every prompt is read as typed.

The new prompt state is computed on the ask socket's thread, in torch, never on the frame
path (`PromptSlot.change`); the segment stage picks it up at the start of its next frame with
one attribute read (`PromptSlot.take`), so a frame is segmented with one prompt list from
start to end and carries that list's class table. The reply waits for that frame and names
it (`seq`): every frame from that seq on has the new prompts. Bad prompts get an error reply
and the running ones stay.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from orstream.common.classes import prompt_table
from orstream.common.errors import OrstreamError
from orstream.engines.tpsis_engine import PromptEncoder, PromptError, PromptInputs, check_prompts
from orstream.pipeline.security import Curve
from orstream.pipeline.transport import NO_REPLY_KEYS_HINT, normalize_endpoint, request_json

# How long a prompt change waits for the frame that first uses it before replying without
# its seq: two frames at 1 fps, far above a live feed's frame time; below the asker's 4 s.
APPLY_WAIT_S = 2.0

PromptHandler = Callable[[Any], dict]


@dataclass
class ActivePrompts:
    """One prompt list, encoded, with its class table; made once, never changed (but for
    `first_seq`, written by the frame path before `applied` is set)."""

    inputs: PromptInputs
    classes: dict[str, Any]
    applied: threading.Event = field(default_factory=threading.Event)
    first_seq: int | None = None  # the first frame segmented with these prompts


class PromptSlot:
    """The prompt state the segment stage uses: read on the frame path, swapped from the ask
    socket's thread."""

    def __init__(self, encoder: PromptEncoder, prompts: Sequence[str]) -> None:
        self._encoder = encoder
        self._lock = threading.Lock()  # one change is encoded at a time
        # The engine's preparation for a new prompt state (Engine.prepare), set once it is
        # open
        self.prepare: Callable[[dict[str, Any]], None] = lambda _inputs: None
        self._next = self._make(prompts)
        self._active: ActivePrompts | None = None

    def _make(self, prompts: Sequence[str]) -> ActivePrompts:
        inputs = self._encoder(prompts)
        for r in inputs.reread():
            logger.info("segment: prompt {!r} read as {!r} ({}: nearest {!r}, similarity "
                        "{:.2f})", r["prompt"], r["read_as"], r["class"], r["nearest"],
                        r["similarity"])
        return ActivePrompts(inputs, prompt_table(inputs.prompts))

    @property
    def upcoming(self) -> PromptInputs:
        """The prompts frames are segmented with from the next frame on."""
        return self._next.inputs

    def take(self, seq: int) -> ActivePrompts:
        """The frame path: the prompts for frame `seq` (the newest change, if any)."""
        current = self._next  # one read: the frame uses this list whatever happens meanwhile
        if current is not self._active:
            current.first_seq = seq
            self._active = current
            current.applied.set()
        return current

    def change(self, prompts: Any, wait_s: float = APPLY_WAIT_S) -> dict:
        """Off the frame path: encode `prompts`, swap them in, wait for the first frame that
        uses them. The reply for the ask socket; bad prompts leave the running ones."""
        t0 = time.perf_counter()
        try:
            with self._lock:
                new = self._make(prompts)
                # Before the swap, so the frame path never compiles (OpenVINO: a model for
                # this prompt count, the first time it is used)
                self.prepare(new.inputs.arrays)
                self._next = new
        except PromptError as exc:
            return {"error": f"prompts refused, the running ones stay: {exc}"}
        ms = (time.perf_counter() - t0) * 1e3
        shown = list(new.inputs.prompts)
        logger.info("segment: prompts changed to {} (encoded in {:.1f} ms)", shown, ms)
        applied = new.applied.wait(wait_s)
        return {"prompts": shown, "seq": new.first_seq if applied else None,
                "ms": round(ms, 1), "read_as": new.inputs.reread()}


def refuse(reason: str) -> PromptHandler:
    """A handler for a pipeline whose prompts cannot be changed here: every request gets
    `reason` as its error."""
    def handler(_prompts: Any) -> dict:
        return {"error": reason}

    return handler


UNET_REFUSAL = ("segment.model is unet: a U-Net segments its fixed classes; run with "
                "segment.model: tpsis to segment what prompts name")


def set_prompts(endpoint: str, prompts: Sequence[str], timeout_s: float = 5.0,
                curve: Curve | None = None) -> dict:
    """Send new prompts to a running pipeline's ask socket (describe.ask_endpoint); its JSON
    reply (module docstring). PromptError for prompts that would be refused, before anything
    is sent. `curve`: this client's keys and the pipeline's public key."""
    # One text is one prompt, not a list of its letters.
    shown = check_prompts([prompts] if isinstance(prompts, str) else list(prompts))
    endpoint = normalize_endpoint(endpoint)
    reply = request_json(endpoint, {"prompts": list(shown)}, timeout_s, curve)
    if reply is None:
        keys = "" if curve is not None else NO_REPLY_KEYS_HINT
        raise PromptTimeout(f"no reply from {endpoint} within {timeout_s:g} s: is "
                            f"`orstream run` running with segment.model tpsis and this "
                            f"describe.ask_endpoint?{keys}")
    return reply


class PromptTimeout(OrstreamError, TimeoutError):
    """The pipeline did not answer a prompt change."""
