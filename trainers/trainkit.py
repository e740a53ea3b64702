"""The trainer side of the trainguard contract: metrics stream, stop signals, safe checkpoints,
and a rank's place in a torchrun job (only rank 0 reports; every rank stops together).

What every bundled trainer shares lives here, once: saving and loading checkpoints as plain data
(save_checkpoint, load_checkpoint: never an unpickled object), the random streams a resume
restores (rng_state, restore_rng), the end of a run (finish) and the PSNR metric (psnr_db).

Standard library only at import time (torch and numpy are imported where needed), so a user's
training script can copy this file beside itself. Non-finite floats are written as the strings
"nan", "inf" and "-inf", so every line stays valid JSON for strict readers.

    with MetricsStream() as metrics:  # appends to $TRAINGUARD_METRICS; a no-op when unset
        metrics.event("start", config=config)
        metrics.log(step, "train", epoch=1, loss=0.7, acc=0.61)
"""

from __future__ import annotations

import json
import math
import numbers
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    """Converts a value into plain JSON types, spelling non-finite floats as strings."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # str() spells them nan, inf, -inf
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, numbers.Integral):  # numpy integers (torch tensors are not Integral)
        return int(value)
    return _jsonable(float(value))  # 0-d tensors and numpy floats; anything else raises TypeError


DEVICE_MEMORY_EVERY_S = 10.0  # how often a trainer on a GPU reports its allocator's memory


class MetricsStream:
    """Appends one JSON object per line to the metrics file that a supervisor tails.

    Args:
        path: File to append to. Defaults to ``$TRAINGUARD_METRICS``; when neither is given,
            every method is a no-op so the same script runs unsupervised.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        path = path or os.environ.get("TRAINGUARD_METRICS")
        if Distributed().rank != 0:  # under torchrun, rank 0 alone reports
            path = None
        self.path = Path(path) if path else None
        self._file = None
        self._memory_at = -math.inf
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", buffering=1, encoding="utf-8")  # closed in close()

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:  # flush, not fsync: the reader polls; a crash loses only the tail
            self._file.write(json.dumps(_jsonable(record), allow_nan=False) + "\n")
            self._file.flush()

    def log(self, step: int, split: str, epoch: int | None = None, **values: float) -> None:
        """Writes ``{"t", "step", "epoch"?, "split", **values}``; each value goes through float()."""
        record: dict[str, Any] = {"t": time.time(), "step": int(step)}
        if epoch is not None:
            record["epoch"] = int(epoch)
        record["split"] = split
        record.update({name: float(v) for name, v in values.items()})
        self._write(record)
        self._device_memory()

    def _device_memory(self) -> None:
        """Every DEVICE_MEMORY_EVERY_S, once CUDA/HIP is in use: a ``device_memory`` event with what
        torch's allocator holds. In a container the GPU driver lists host pids, so the supervisor
        matches this run to its GPU process by this figure instead."""
        now = time.monotonic()
        if self._file is None or now - self._memory_at < DEVICE_MEMORY_EVERY_S:
            return
        torch = sys.modules.get("torch")  # never imported here: a trainer without torch stays without
        if torch is None or not torch.cuda.is_initialized():  # initialised implies available
            return
        self._memory_at = now
        index = torch.cuda.current_device()
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        self.event(
            "device_memory",
            device=index,
            uuid=str(uuid) if uuid is not None else None,
            pid=os.getpid(),
            reserved_bytes=int(torch.cuda.memory_reserved(index)),
            peak_reserved_bytes=int(torch.cuda.max_memory_reserved(index)),
        )

    def event(self, name: str, **fields: Any) -> None:
        """Writes ``{"t", "event": name, **fields}`` (start, checkpoint, done, error)."""
        self._write({"t": time.time(), "event": name, **fields})

    def close(self) -> None:
        """Closes the file; later writes are ignored."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricsStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class StopFlag:
    """Turns SIGTERM/SIGINT into a flag that the training loop checks between batches.

    A second signal restores the previous handlers and re-delivers itself, so an impatient
    Ctrl-C still works. Must be created in the main thread (a limit of ``signal.signal``).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.requested = False
        self.signum: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in signals}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            self.restore()
            signal.raise_signal(signum)
            return
        self.requested, self.signum = True, signum

    @property
    def exit_code(self) -> int:
        """The shell's code for death by this signal (143 for SIGTERM, 130 for SIGINT); 0 if none."""
        return 128 + self.signum if self.signum is not None else 0

    def restore(self) -> None:
        """Puts back the handlers that were installed before this flag."""
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)  # None: set outside Python
        self._previous = {}


def _atomic_write(path: str | os.PathLike, write: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary ``.<name>.tmp-<pid>`` beside ``path``, fsync, then rename over it."""
    import torch

    _atomic_write(path, lambda f: torch.save(obj, f))


PLAIN_SCALARS = (str, int, float, bool, type(None))  # with tensors, dicts, lists, tuples: what weights_only reads


def _check_plain(value: Any, where: str) -> None:
    """Raises TypeError at the first value ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(value, PLAIN_SCALARS) and type(value).__module__ == "builtins":  # numpy.float64 is a float too
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, f"{where} key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):  # not a NamedTuple or a list subclass: those pickle as their class
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    torch = sys.modules.get("torch")
    if torch is not None and type(value) in (torch.Tensor, torch.nn.Parameter, torch.Size, torch.dtype, torch.device):
        return
    raise TypeError(
        f"checkpoint value {where} is a {type(value).__module__}.{type(value).__qualname__}: a checkpoint holds "
        "tensors, dicts, lists, tuples, str, int, float, bool and None only, so that load_checkpoint can read it "
        "without unpickling code; convert it (str() for a Path, .tolist() or torch.from_numpy for numpy)"
    )


def save_checkpoint(
    metrics: MetricsStream,
    state: dict[str, Any],
    path: str | os.PathLike,
    *,
    kind: str,
    step: int,
    epoch: int,
    **event: Any,
) -> None:
    """Writes ``state`` atomically (atomic_torch_save) and reports a ``checkpoint`` event, on rank 0 only.

    Every rank holds the same weights, so one copy is written. ``state`` is checked first: a
    value that ``torch.load(weights_only=True)`` would refuse raises TypeError naming it, before
    anything is written, so every checkpoint a trainer writes is one that load_checkpoint reads.

    Args:
        kind, step, epoch, **event: the checkpoint event's fields beside ``path``.
    """
    if not Distributed().is_main:
        return
    _check_plain(state, "state")
    atomic_torch_save(state, path)
    metrics.event("checkpoint", path=str(path), step=step, epoch=epoch, kind=kind, **event)


def load_checkpoint(
    path: str | os.PathLike,
    written_by: str,
    required: Any = (),
    config: dict | None = None,
    flags: str = "",
    flag: str = "--resume",
) -> dict[str, Any]:
    """Reads a checkpoint to resume from, as plain data only, on the CPU.

    ``torch.load(weights_only=True)``: tensors, dicts, lists, tuples, str, int, float, bool and
    None. A pickle is a program; a checkpoint holding anything else (a pickled object whose
    ``__reduce__`` runs a command, say) is refused, never run.

    Args:
        path: The checkpoint file (--resume's value).
        written_by: The trainer that writes such files, for the messages ("trm_nav.py").
        required: Keys the trainer reads from it.
        config: When given, the model config the flags build; the checkpoint's ``config`` must equal it.
        flags: The flags that set ``config``, named in the mismatch message.
        flag: The command-line flag that gave ``path``.

    Raises:
        FileNotFoundError: There is no such file.
        ValueError: It holds more than plain data, is not a dict, holds another model, or lacks a required key.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path} does not exist; pass a last.pt or best.pt written by {written_by}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is long and advises weights_only=False; keep its line naming the object.
        named = [line.strip() for line in str(exc).splitlines() if "global" in line.lower()]
        raise ValueError(
            f"{flag} {path} holds Python objects, not only tensors and plain data, so it was not loaded: "
            f"unpickling an object can run any code ({named[0] if named else 'torch.load refused it'}). "
            f"Pass a checkpoint written by {written_by}; do not load this one with weights_only=False "
            "unless you trust where it came from"
        ) from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{flag} {path} holds a {type(ckpt).__name__}, not a checkpoint written by {written_by}")
    if config is not None:
        check_same_model(ckpt, config, path, flags, flag)
    missing = sorted(set(required) - set(ckpt))
    if missing:
        raise ValueError(f"{flag} {path} lacks {missing}: it was not written by this {written_by}")
    return ckpt


def check_same_model(ckpt: dict, config: dict, path: str | os.PathLike, flags: str, flag: str = "--resume") -> None:
    """Raises ValueError unless the checkpoint's ``config`` is the model these flags build."""
    if ckpt.get("config") != config:
        raise ValueError(
            f"{flag} {path} holds a model with {ckpt.get('config')}, but these flags build {config}; "
            f"pass the same {flags}"
        )


def rng_state(device: str = "cpu") -> dict[str, Any]:
    """Every random stream a trainer draws from, as plain data (so weights_only loads it back).

    torch's CPU generator, the device's CUDA generator (None off CUDA), numpy's global
    generator (None without numpy) and Python's ``random``.
    """
    import torch

    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.startswith("cuda") else None,
        "numpy": None,
        "python": random.getstate(),  # (version, tuple of ints, None): plain already
    }
    try:
        import numpy as np
    except ImportError:
        return state
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state["numpy"] = [str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]
    return state


def restore_rng(state: dict[str, Any], device: str = "cpu") -> None:
    """Puts back what rng_state saved; a stream it did not save (or this machine lacks) is left alone."""
    import torch

    torch.set_rng_state(state["torch"])
    if device.startswith("cuda") and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    if state.get("python") is not None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if state.get("numpy") is not None:
        import numpy as np

        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def psnr_db(image: Any, target: Any, mse_floor: float = 1e-10) -> Any:
    """Per-image PSNR in dB of images with values in [0, 1]: 10 log10(1 / MSE), (B, ...) x 2 -> (B,).

    One definition for every trainer, so ``psnr_db`` means one thing when compare_runs ranks
    runs by it. ``image`` is clamped to [0, 1] first (a renderer may overshoot; the image as it
    would be shown is what is scored), and the MSE is floored at ``mse_floor`` (1e-10), so a
    perfect reconstruction scores a finite 100 dB instead of inf. Computed in float32 even
    under autocast.
    """
    mse = (image.float().clamp(0, 1) - target.float()).pow(2).flatten(1).mean(1)  # (B,)
    return -10.0 * mse.clamp_min(mse_floor).log10()


def atomic_write_json(obj: Any, path: str | os.PathLike) -> None:
    """Writes ``obj`` as JSON (non-finite floats as strings), atomically like atomic_torch_save."""
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def pick_device(requested: str = "auto") -> str:
    """Resolves a device name, checking an explicit one against this machine.

    Args:
        requested: "auto" (cuda, which also covers ROCm builds, then mps, then cpu), or an
            explicit "cpu", "cuda", "cuda:N" or "mps".

    Returns:
        A device string accepted by torch.

    Raises:
        ValueError: If the name is unknown or that device is not available here.
    """
    import torch

    name = requested.strip().lower()
    cuda_ok, mps_ok = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if cuda_ok else ("mps" if mps_ok else "cpu")
    kind, colon, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (colon and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"unknown device {requested!r}; expected auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not cuda_ok:
        raise ValueError(
            f"{requested!r} requested, but torch {torch.__version__} sees no CUDA/ROCm GPU; use auto or cpu"
        )
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"{requested!r} requested, but there are {torch.cuda.device_count()} GPUs, numbered from 0")
    if kind == "mps" and not mps_ok:
        raise ValueError(f"{requested!r} requested, but MPS is not available here; use auto or cpu")
    return name


def seed_everything(seed: int) -> None:
    """Seeds Python's random, numpy (when installed), torch and every CUDA device."""
    import torch

    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)  # already implied by manual_seed; explicit for older builds


class Distributed:
    """This process's place in a torchrun job (RANK, LOCAL_RANK and WORLD_SIZE in the
    environment), or a job of one. Rank 0 alone writes metrics and checkpoints; every rank
    checks for a stop together (`should_stop`), so they leave the loop at the same step and
    none waits forever in a collective for a rank that left."""

    def __init__(self) -> None:
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.enabled = "RANK" in os.environ and "WORLD_SIZE" in os.environ  # started by torchrun, even alone

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, batch_size: int) -> int:
        """This rank's share of the global batch.

        Raises:
            ValueError: the batch does not split evenly over the ranks.
        """
        if batch_size % self.world_size:
            raise ValueError(
                f"--batch-size {batch_size} (the global batch) does not split over "
                f"{self.world_size} ranks; pass a multiple of {self.world_size}"
            )
        return batch_size // self.world_size

    def say(self, *args: Any, **kwargs: Any) -> None:
        """print, on rank 0 only: one copy of the trainer's lines in the log."""
        if self.is_main:
            print(*args, **kwargs)

    def device(self, device: str) -> str:
        """This rank's device: its own GPU (cuda:LOCAL_RANK; torchrun's slots show each job only
        its GPUs), else `device` unchanged."""
        return f"cuda:{self.local_rank}" if self.enabled and device.startswith("cuda") else device

    def init(self, device: str) -> None:
        """Joins the job's process group: NCCL on GPUs, gloo on the CPU. A no-op alone."""
        if not self.enabled:
            return
        import torch
        import torch.distributed as dist

        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")

    def wrap(self, model: Any, device: str) -> Any:
        """`model` under DistributedDataParallel in a job, else `model`."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None)

    def should_stop(self, stop: StopFlag, device: str) -> bool:
        """True on every rank as soon as any rank was asked to stop."""
        return self.any(stop.requested, device)

    def any(self, flag: bool, device: str) -> bool:
        """True on every rank when `flag` is true on any: one decision for the whole job."""
        if not self.enabled:
            return flag
        import torch
        import torch.distributed as dist

        packed = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(packed, op=dist.ReduceOp.MAX)
        return bool(packed.item())

    def sum(self, *values: Any) -> list[float]:
        """The job-wide sums of 0-d tensors (or numbers) each rank holds."""
        import torch

        if not self.enabled:
            return [float(v) for v in values]
        import torch.distributed as dist

        device = next((v.device for v in values if isinstance(v, torch.Tensor)), "cpu")
        packed = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
        dist.all_reduce(packed)
        return packed.tolist()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def finish(
    metrics: MetricsStream,
    stop: StopFlag,
    *,
    stopped: bool,
    save_last: Any,
    last_path: str | os.PathLike,
    best_name: str,
    best_value: float,
    best_epoch: int,
    best_line: str,
    epochs: int,
    steps: int,
    reason: str = "completed",
) -> int:
    """The end of a run, the same in every trainer; returns the process's exit code.

    On a stop (which lands mid-epoch), ``save_last()`` writes the last checkpoint, whose epoch
    stays the last completed one so a resume starts at the next, and a line says so. Then the
    ``done`` event, the best-so-far line, and under torchrun a barrier: no rank leaves before
    rank 0 has written its checkpoint.

    Args:
        stopped: The loop ended on a stop request (on any rank).
        save_last: Writes last.pt (a no-op on ranks other than 0, as save_checkpoint is).
        last_path: That file, for the line.
        best_name: The done event's field for the best value ("best_val_acc").
        best_value, best_epoch: The best so far; epoch 0 means none (both are then null in the event).
        best_line: Printed when there is a best, formatted with ``value`` and ``epoch``
            ("Best val acc {value:.4f} at epoch {epoch}").
        epochs, steps: Epochs completed and optimizer steps taken, for the done event.
        reason: Why the loop ended when it was not stopped: "completed" or "early_stopping".

    Returns:
        128 + the signal's number when stopped (143 if none was recorded), else 0.
    """
    ranks = Distributed()
    if stopped:
        reason = "stopped"
        save_last()
        ranks.say(f"Stopped by signal {stop.signum}; wrote {last_path}", flush=True)
    metrics.event(
        "done",
        reason=reason,
        **{best_name: best_value if best_epoch else None},
        best_epoch=best_epoch or None,
        epochs=epochs,
        steps=steps,
    )
    if best_epoch:
        ranks.say(best_line.format(value=best_value, epoch=best_epoch), flush=True)
    ranks.barrier()
    return (stop.exit_code or 143) if stopped else 0


def run_trainer(train: Any, args: Any) -> int:
    """Runs ``train(args, metrics, stop)`` with the contract's plumbing around it.

    Opens the metrics stream and installs the stop flag; a crash is written as an ``error``
    event and re-raised (non-zero exit), and under torchrun into the rank's error file
    (torch.distributed.elastic's ``record``); the stream is closed and the signal handlers put
    back whatever happens.

    Returns:
        What ``train`` returns: the process's exit code.
    """
    stop = StopFlag()
    metrics = MetricsStream()
    ranks = Distributed()
    if ranks.enabled:  # under torchrun: a failing rank leaves its traceback in its error file
        from torch.distributed.elastic.multiprocessing.errors import record

        train = record(train)
    try:
        code = train(args, metrics, stop)
    except Exception as exc:
        metrics.event("error", message=str(exc), type=type(exc).__name__)
        raise
    finally:
        metrics.close()
        stop.restore()
    if ranks.enabled:
        # Every rank has passed the trainer's last barrier and rank 0 has written (and fsynced)
        # its checkpoint: leave now. Tearing the gloo group down while the other ranks leave
        # at the same moment can abort a rank (SIGABRT, "terminate called without an active
        # exception"), which torchrun takes for a failed job.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
