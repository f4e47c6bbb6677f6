"""Training checkpoints: written atomically, read without running code.

`torch.load` with `weights_only=False` unpickles arbitrary objects, so a
checkpoint file from someone else could run code on load. promptlift only
ever loads with `weights_only=True`: tensors, and plain Python containers and
numbers (what a module's, AdamW's and LambdaLR's `state_dict()` hold, plus
lists/dicts/str/int/float/bool/None). Anything else is refused with one line.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .errors import ArtifactError
from .files import write_bytes


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically (see `files.write_bytes`)."""
    import io

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (tensors land on `map_location`).

    Never executes code from the file: a pickle that names any callable other
    than torch's tensor rebuilders, a truncated or corrupt file, or one that is
    not a checkpoint at all raises `ArtifactError("<path>: corrupt or foreign checkpoint (...)")`.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the one-line error below says enough
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError, ValueError, ... : all mean the same here
        raise ArtifactError(f"{path}: corrupt or foreign checkpoint ({_first_line(e)})") from None
    if not isinstance(state, dict):
        raise ArtifactError(f"{path}: corrupt or foreign checkpoint (holds a {type(state).__name__}, not a dict)")
    return state


def _first_line(e: BaseException, limit: int = 160) -> str:
    """The informative sentence of a (often multi-paragraph) torch loading error."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = lines[0] if lines else ""
    # torch's weights_only message opens with generic advice; the reason is on a later line
    for ln in lines:
        if ln.startswith(("Trying to load unsupported", "Unsupported")):
            msg = ln
            break
    msg = msg.split(". ")[0].rstrip(".")
    msg = msg if len(msg) <= limit else msg[: limit - 3] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
