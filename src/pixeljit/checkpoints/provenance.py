"""Which weights a score belongs to.

`pixeljit eval --out` (and the demo's score.json) record, beside the scores, the checkpoint they
loaded, its training step, which weights (an EMA, the raw model) and a digest of those weights.
`pixeljit convert --hub` publishes a scores file only when that digest is the exported weights'
digest: a run's eval.json left from an earlier step, or scores of another EMA, are not theirs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

DIGEST_KEY = "weights_sha256"
MODEL_KEY = "model"  # the record's entry describing the scored weights


def weights_digest(net: torch.nn.Module) -> str:
    """SHA-256 over the network's state dict (names, dtypes, shapes and bytes, in order): the same
    weights give the same digest whichever file or device they were read from."""
    h = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(flat.view(torch.uint8).numpy())
    return h.hexdigest()


def model_record(model, checkpoint: str) -> dict:
    """What a score file says about the weights it scored (`model` a TrainedModel)."""
    return {
        "checkpoint": str(checkpoint),
        "description": model.description,
        "step": model.step,
        "weights": model.weights or None,
        DIGEST_KEY: weights_digest(model.net),
    }


DIGEST_SHOWN = 12  # hex digits of a weights SHA-256 a message shows


def describe_scored(record: dict) -> str:
    """'step 1200, ema:0.999 of runs/fm' from a model record (the parts it has)."""
    parts = []
    if record.get("step") is not None:
        parts.append(f"step {record['step']}")
    if record.get("weights"):
        parts.append(str(record["weights"]))
    where = f" of {record['checkpoint']}" if record.get("checkpoint") else ""
    return (", ".join(parts) or "unnamed weights") + where


def mismatch(record: dict | None, model, digest: str) -> str | None:
    """Why scores recorded for `record` are not the scores of `model` (whose weights digest to
    `digest`), or None when they are. A record without a digest cannot be matched."""
    if record is None or not isinstance(record.get(DIGEST_KEY), str):
        return "it does not record which weights it scored"
    if record[DIGEST_KEY] == digest:
        return None
    these = describe_scored({"step": model.step, "weights": model.weights})
    scored = describe_scored({"step": record.get("step"), "weights": record.get("weights")})
    if scored == these:  # same step and name: only the bytes tell them apart
        return (
            f"it scored other weights ({describe_scored(record)}) under the same name as these: "
            f"SHA-256 {record[DIGEST_KEY][:DIGEST_SHOWN]}…, these {digest[:DIGEST_SHOWN]}…"
        )
    return f"it scored other weights ({describe_scored(record)}), not these ({these})"


# ------------------------------------------------------------------ reading a scores file

MAX_SCORES_BYTES = 1 << 20
MAX_SCORES = 100
MAX_SCORE_TEXT = 100  # characters of a score's name or text value
SWEEP_ONLY = frozenset({DIGEST_KEY})  # row fields that are not scores


@dataclass(frozen=True)
class ScoresFile:
    """The scores of a `pixeljit eval --out` JSON (or of the demo's score.json) and what they
    were measured on."""

    path: Path
    scores: dict  # name → finite number or short text
    model: dict | None = None  # model_record() of the scored weights; None: not recorded
    about: str = ""  # '1000 images, seed 1, dpm++3m 10 steps, CFG 2.5 …, against fashion-mnist'


def read_scores(path: str | os.PathLike) -> ScoresFile:
    """A scores file as `pixeljit eval --out` writes it: {"scores": {...}, "model": {...}, ...};
    a CFG sweep's {"sweep": [...], "best": {...}} (its best row); the demo's score.json; or a
    flat {name: value} object (written before the record; its weights are unknown). Names and
    text values short and on one line, numbers finite."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"scores file {path} is a folder: pass the JSON file that `pixeljit "
                         "eval --out` wrote (or a run's score.json)")  # fmt: skip
    if not path.is_file():
        raise FileNotFoundError(f"scores file {path} does not exist")
    with open(path, "rb") as f:
        raw = f.read(MAX_SCORES_BYTES + 1)
    if len(raw) > MAX_SCORES_BYTES:
        raise ValueError(f"scores file {path} is over {MAX_SCORES_BYTES:,} bytes: not eval output")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"scores file {path} is not valid JSON ({err})") from None
    record = data.get(MODEL_KEY) if isinstance(data, dict) else None
    record = record if isinstance(record, dict) else None
    if isinstance(data, dict) and isinstance(data.get("best"), dict):  # eval --sweep-cfg
        best = data["best"]  # the checkpoint and step are the sweep's, the weights the row's
        row = {"weights": best.get("weights"), DIGEST_KEY: best.get(DIGEST_KEY)}
        record = {**(record or {}), **row}
        scores = {k: v for k, v in best.items() if k not in SWEEP_ONLY}
    elif isinstance(data, dict) and isinstance(data.get("scores"), dict):
        scores = data["scores"]
    elif isinstance(data, dict) and "scores" in data:
        raise ValueError(
            f"scores file {path}: 'scores' must be a JSON object of scores, got "
            f"{type(data['scores']).__name__}"
        )
    elif record is not None:
        raise ValueError(
            f"scores file {path} has a 'model' entry but no 'scores' (an older demo's "
            "score.json?): score the weights again with `pixeljit eval --out`"
        )
    else:
        scores = data
    if isinstance(data, dict) and isinstance(data.get("images"), str) and record is None:
        raise ValueError(
            f"scores file {path} scored the images of {data['images']} (`eval --images`), not "
            "a model's weights: score the weights with `pixeljit eval --checkpoint SOURCE "
            "--out FILE`"
        )
    if record is not None and not isinstance(record.get(DIGEST_KEY), str):
        record = None  # names no digest: cannot be matched to weights
    if not isinstance(scores, dict) or not scores or len(scores) > MAX_SCORES:
        raise ValueError(
            f"scores file {path}: expected a JSON object of 1 to {MAX_SCORES} scores "
            "(what `pixeljit eval --out` writes)"
        )
    for name, value in scores.items():
        if not (plain(name) and (finite(value) or plain(value))):
            raise ValueError(
                f"scores file {path}: entry {str(name)[:40]!r} must map a short "
                "name to a finite number or a short text"
            )
    return ScoresFile(path, scores, record, _about(data) if record is not None else "")


def plain(text) -> bool:
    """A short one-line text, safe in a Markdown table cell."""
    return (
        isinstance(text, str)
        and 0 < len(text) <= MAX_SCORE_TEXT
        and text.isprintable()
        and "|" not in text
    )


def finite(value) -> bool:
    """A JSON number (not a bool) that a float holds, finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer of hundreds of digits
        return False


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _about(data: dict) -> str:
    """What the scores were measured on, from the fields of the record that are well formed."""
    parts = []
    if _count(data.get("num")):
        parts.append(f"{data['num']} images")
    if _count(data.get("seed")):
        parts.append(f"seed {data['seed']}")
    s = data.get("sampler")
    if isinstance(s, dict) and plain(s.get("method")) and _count(s.get("steps")):
        text = f"{s['method']} {s['steps']} steps"
        cfg, interval = s.get("cfg"), s.get("interval")
        if finite(cfg):
            text += f", CFG {cfg:g}"
            if isinstance(interval, list) and len(interval) == 2 and all(map(finite, interval)):
                text += f" on ({interval[0]:g}, {interval[1]:g})"
        parts.append(text)
    reference = data.get("reference")
    if plain(reference):
        parts.append(f"against {reference}")
    return ", ".join(parts)


UNVERIFIED = "the file does not record which weights it scored: published as given"


def scores_for(path, model, digest: str, named: bool) -> tuple[ScoresFile | None, str]:
    """The scores of `path` to publish with `model` (whose weights digest to `digest`), and a
    note: scores of other weights are refused when the user named the file (`named`) and left
    out when it was found (a run's eval.json), with the reason; a file that records no weights
    is published only when named, marked unverified."""
    try:
        found = read_scores(path)
    except (OSError, ValueError) as err:
        if named:
            raise
        return None, f"{path} was not used: {err}"
    why = mismatch(found.model, model, digest)
    if why is None:
        return found, ""
    if found.model is None and named:
        return found, UNVERIFIED
    if named:
        raise ValueError(
            f"--scores {path}: {why}. Score these weights (`pixeljit eval --checkpoint SOURCE "
            "--weights W ... --out FILE`) or export the weights it scored (--weights)"
        )
    return None, f"{path} was not used: {why}"
