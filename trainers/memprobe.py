"""Peak memory of one training step, traced under PyTorch's fake tensors (run in the trainer's interpreter).

The MCP server never imports torch, so pre-flight runs this file as a subprocess with the
trainer's own Python:

    python trainers/memprobe.py SCRIPT --function memory_step --batch-sizes 8 16 -- [TRAINER FLAGS...]

SCRIPT is the training script (bundled or the user's); it must define

    def memory_step(argv: list[str], batch_size: int, device: str) -> Callable[[], object]

which parses ``argv`` (the flags the run would get) with the script's own parser, builds
everything the training loop keeps on the device (model, optimizer, resident data, one
batch of ``batch_size``) and returns a closure that runs one optimizer step exactly as the
loop does. The probe builds and steps twice (the second step holds the optimizer state)
under ``FakeTensorMode``: no real memory is allocated and nothing is computed, so a trace
takes about as long at batch 4096 as at batch 4. A step whose shapes depend on data (e.g.
``repeat_interleave`` with computed counts) cannot be traced that way; the probe then runs
it for real on the CPU at a quarter of the batch size and at the batch size, and says so.

Prints one JSON object on its last stdout line:
``{"method": "fake"|"real-cpu", "peaks": {"8": bytes, ...}, "exceeded": {"batch_size", "bytes"}|null,
"seconds": s, "fallback_reason": str|null}``,
or ``{"error": "..."}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only


def real_fallback_batches(batch_sizes: list[int]) -> list[int]:
    """A real step costs real memory and time: measure at a quarter of the smallest size and at it.

    Two points far apart keep the cost per sample visible above fixed buffers (PPO's lookup
    tables outweigh a few environments); the probe's limit stops a step that grows too big.
    """
    b = min(batch_sizes)
    return [max(1, b // 4), max(2, b)]


class LimitExceeded(RuntimeError):
    """A real (fallback) step grew past the probe's memory limit; the host is spared the rest."""


class PeakMemory(TorchDispatchMode):
    """Counts the bytes of every tensor storage alive under it and keeps the high-water mark.

    Each op's outputs are registered by storage (views and in-place results share one), and a
    weakref finalizer subtracts a storage's bytes when it dies. Works on real and fake tensors.
    Tensors created before the mode was entered are not counted: enter it before building.
    """

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.limit = limit
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.live:
            return
        nbytes = storage.nbytes()
        self.live[key] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)
        if self.limit is not None and self.current > self.limit:
            raise LimitExceeded(self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self._track, out)
        return out


def load_entry(script: Path, function: str) -> Callable[[list[str], int, str], Callable[[], object]]:
    """Import ``script`` by path (its folder first on sys.path, for its own imports) and return ``function``."""
    script = script.resolve()
    sys.path.insert(0, str(script.parent))
    spec = importlib.util.spec_from_file_location(f"_trainguard_memprobe_{script.stem}", script)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look their module up there
    spec.loader.exec_module(module)
    entry = getattr(module, function, None)
    if not callable(entry):
        raise AttributeError(
            f"{script.name} defines no function {function}(argv, batch_size, device); see trainers/memprobe.py"
        )
    return entry


@contextmanager
def _module_to_keeps_placed_modules():
    """``Module.to(device)`` returns the module untouched when it is already all on that device.

    Under FakeTensorMode, torch 2.13's ``Module.to`` swaps every fake parameter even for a no-op
    move and fails ("Couldn't swap ...weight"); training scripts call ``model.to(device)`` anyway.
    """
    original = torch.nn.Module.to

    def to(self, *args, **kwargs):
        device = args[0] if args and isinstance(args[0], str | torch.device) else kwargs.get("device")
        if device is not None and len(args) + len(kwargs) == 1:
            target = torch.device(device)
            tensors = [*self.parameters(), *self.buffers()]
            if all(t.device.type == target.type and target.index in (None, t.device.index) for t in tensors):
                return self
        return original(self, *args, **kwargs)

    torch.nn.Module.to = to
    try:
        yield
    finally:
        torch.nn.Module.to = original


def step_peak(entry: Callable, argv: list[str], batch_size: int, *, fake: bool, limit: int | None = None) -> int:
    """Peak bytes of building everything and running two optimizer steps, fake or real (on the CPU).

    Raises:
        LimitExceeded: when a real step holds more than ``limit`` bytes.
    """
    tracker = PeakMemory(None if fake else limit)
    if fake:
        with _module_to_keeps_placed_modules(), FakeTensorMode(), tracker:
            step = entry(list(argv), batch_size, "cpu")
            step()
            step()
    else:
        with tracker:
            step = entry(list(argv), batch_size, "cpu")
            step()
            step()
    return tracker.peak


def probe(script: Path, function: str, argv: list[str], batch_sizes: list[int], real_limit: int | None = None) -> dict:
    """Trace the step at each batch size; fall back to small real CPU steps when fake tracing cannot.

    A real step that grows past ``real_limit`` bytes is cut short and reported as ``exceeded``.
    """
    t0 = time.perf_counter()
    entry = load_entry(script, function)
    exceeded = None
    try:
        peaks = {b: step_peak(entry, argv, b, fake=True) for b in batch_sizes}
        method, reason = "fake", None
    except Exception as exc:  # noqa: BLE001 - data-dependent shapes, ops without a fake kernel: any of them
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        method, peaks = "real-cpu", {}
        for b in real_fallback_batches(batch_sizes):
            try:
                peaks[b] = step_peak(entry, argv, b, fake=False, limit=real_limit)
            except LimitExceeded as over:
                exceeded = {"batch_size": b, "bytes": over.args[0]}
                break
    return {
        "method": method,
        "peaks": {str(b): p for b, p in peaks.items()},
        "exceeded": exceeded,
        "seconds": round(time.perf_counter() - t0, 3),
        "fallback_reason": reason,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, trainer_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], usage="%(prog)s [options] SCRIPT -- FLAGS")
    parser.add_argument("script", type=Path)
    parser.add_argument("--function", default="memory_step")
    parser.add_argument("--batch-sizes", type=int, nargs="+", required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for a real fallback step")
    parser.add_argument("--real-limit-bytes", type=int, help="cut a real fallback step short past this many bytes")
    args = parser.parse_args(own)
    torch.set_num_threads(args.threads)
    try:
        result = probe(args.script, args.function, trainer_args, args.batch_sizes, args.real_limit_bytes)
    except BaseException as exc:  # noqa: BLE001 - report every failure as JSON; the caller shows it
        last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        where = f" at {Path(last[0].filename).name}:{last[0].lineno}" if last else ""
        result = {"error": f"{type(exc).__name__}: {exc}{where}"[:1000]}
    print(json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
