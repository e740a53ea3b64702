"""Decode one sample file fully, as the trainer would read it: image, torch, numpy or json.

Run by pre-flight's data check (`mcp_server.datacheck`) with the trainer's interpreter:

    python data_probe.py KIND PATH

A truncated PNG or a pickle where a tensor file belongs fails here, not an hour into the run.
Imports only the standard library and the library of KIND (`mcp_server` may not be importable
here). Prints one JSON object on its last stdout line: {"ok": true, "info": ...} or
{"ok": false, "error": ...}.
"""

from __future__ import annotations

import json
import sys


def decode(kind: str, path: str) -> str:
    """What the file holds, in a few words; raises whatever its reader raises."""
    if kind == "image":
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            return f"{im.format} {im.size[0]}x{im.size[1]} {im.mode}"
    if kind == "torch":
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        keys = f" with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else ""
        return f"{type(obj).__name__}{keys}"
    if kind == "numpy":
        import numpy

        obj = numpy.load(path, mmap_mode="r", allow_pickle=False)
        return f"array {obj.shape} {obj.dtype}" if hasattr(obj, "shape") else f"npz with {sorted(obj.files)[:8]}"
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    return f"JSON {type(obj).__name__}"


def main() -> None:
    kind, path = sys.argv[1], sys.argv[2]
    try:
        answer = {"ok": True, "info": decode(kind, path)}
    except Exception as exc:  # noqa: BLE001 - every decode failure is the answer
        answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:400]}
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
