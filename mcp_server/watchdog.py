"""The run watchdog: notices a run going wrong while it runs, and warns or stops it.

The supervisor polls it about once a second. It reads only the bytes the metrics stream
gained since the last poll, so its cost does not grow with the run. It fires on:

- a non-finite value of a loss (any metric named like `loss`) or of the primary metric;
- a stall: no new metric for `stall_factor` times the run's usual interval (at least
  `stall_min_s`; before the first metric, `startup_s`);
- GPU memory of the run's GPU above `gpu_memory_gib`, or its temperature above
  `temperature_c` (from the same GPU sampler as `gpu_status`);
- a run longer than its time budget `max_runtime_s`.

Each firing is an event `{t, kind, action, detail}`; the supervisor records it in the run's
state and the scratchpad, and on `action == "stop"` stops the run. An experiment configures
it in a `[watchdog]` table of its experiment.toml.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mcp_server import safefiles
from mcp_server.curves import names, records

Action = Literal["stop", "warn", "off"]


class WatchdogConfig(BaseModel):
    """`[watchdog]` in experiment.toml; every key optional."""

    model_config = ConfigDict(extra="forbid")

    nonfinite: Action = "stop"
    stall: Action = "warn"
    stall_factor: float = Field(default=10.0, ge=2.0)
    stall_min_s: float = Field(default=300.0, ge=1.0)
    startup_s: float = Field(default=900.0, ge=1.0)
    gpu_memory_gib: float | None = Field(default=None, gt=0)
    gpu_memory: Action = "warn"
    temperature_c: float | None = Field(default=90.0, gt=0)
    temperature: Action = "warn"
    max_runtime_s: float | None = Field(default=None, gt=0, description="a time budget for the whole run")
    timeout: Action = "stop"
    stop_grace_s: float = Field(
        default=30.0, ge=0.5, le=3600, description="seconds the trainer gets to checkpoint after SIGTERM, then SIGKILL"
    )


class Watchdog:
    """Stateful checks over one run; `poll` returns the events that fired since the last call."""

    def __init__(self, config: WatchdogConfig, metrics_path: Path, primary_metric: str, now: float | None = None):
        self.config = config
        self.path = metrics_path
        self.primary = names.key(primary_metric)
        self.offset = 0
        self.partial = b""
        self.started = time.monotonic() if now is None else now
        self.last_metric: float | None = None
        self.intervals: deque[float] = deque(maxlen=50)
        self.stall_fired = False
        self.nonfinite_fired: set[str] = set()
        self.gpu_fired: set[str] = set()
        self.timeout_fired = False

    def _event(self, kind: str, action: Action, detail: str) -> dict[str, Any]:
        return {"t": time.time(), "kind": kind, "action": action, "detail": detail}

    def _new_records(self) -> list[dict[str, Any]]:
        """The metric records appended since the last poll, parsed as every JSONL reader parses them
        (a malformed line is the curve reader's to count, not a firing)."""
        try:
            with safefiles.open_read(self.path, follow_links=False) as fh:
                fh.seek(self.offset)
                data = fh.read(4 * 2**20)
        except (FileNotFoundError, safefiles.NotRegular):
            return []
        self.offset += len(data)
        lines, self.partial = records.complete_lines(self.partial + data)  # a torn last line waits
        parsed, _ = records.parse_lines(lines)
        return [r for r in parsed if "event" not in r]

    def poll(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.monotonic() if now is None else now
        events = []
        budget = self.config.max_runtime_s
        if budget and self.config.timeout != "off" and not self.timeout_fired and now - self.started > budget:
            self.timeout_fired = True
            events.append(
                self._event(
                    "timeout", self.config.timeout, f"ran {now - self.started:.0f} s, past its budget of {budget:g} s"
                )
            )
        new = self._new_records()
        for record in new:
            split = record.get("split")
            for key, value in record.items():
                name = f"{split}/{key}" if split else key
                watched = names.is_loss(key) or names.key(name) == self.primary
                if key in ("t", "step", "epoch", "split") or not watched:
                    continue
                number = names.number(value)
                if number is not None and not math.isfinite(number) and name not in self.nonfinite_fired:
                    self.nonfinite_fired.add(name)
                    if self.config.nonfinite != "off":
                        events.append(
                            self._event(
                                "nonfinite", self.config.nonfinite, f"{name} is {value} at step {record.get('step')}"
                            )
                        )
        if new:
            if self.last_metric is not None:
                self.intervals.append(now - self.last_metric)
            self.last_metric = now
            self.stall_fired = False
        elif self.config.stall != "off" and not self.stall_fired:
            if self.last_metric is None:
                waited, limit = now - self.started, self.config.startup_s
                what = "no metric since the start"
            else:
                usual = statistics.median(self.intervals) if self.intervals else 0.0
                waited = now - self.last_metric
                limit = max(self.config.stall_min_s, self.config.stall_factor * usual)
                what = f"no new metric (usual interval {usual:.1f} s)"
            if waited > limit:
                self.stall_fired = True
                detail = f"{what} for {waited:.0f} s (limit {limit:.0f} s)"
                events.append(self._event("stall", self.config.stall, detail))
        return events

    def check_gpu(self, memory_used_bytes: int | None, temperature_c: float | None, where: str) -> list[dict[str, Any]]:
        """GPU figures of the run's device, sampled by the caller."""
        events = []
        c = self.config
        if (
            c.gpu_memory != "off"
            and c.gpu_memory_gib
            and memory_used_bytes is not None
            and memory_used_bytes > c.gpu_memory_gib * 2**30
            and "memory" not in self.gpu_fired
        ):
            self.gpu_fired.add("memory")
            events.append(
                self._event(
                    "gpu_memory",
                    c.gpu_memory,
                    f"{where} uses {memory_used_bytes / 2**30:.1f} GiB, above the limit of {c.gpu_memory_gib:g} GiB",
                )
            )
        if (
            c.temperature != "off"
            and c.temperature_c
            and temperature_c is not None
            and temperature_c > c.temperature_c
            and "temperature" not in self.gpu_fired
        ):
            self.gpu_fired.add("temperature")
            events.append(
                self._event(
                    "temperature", c.temperature, f"{where} at {temperature_c:.0f} C, above {c.temperature_c:g} C"
                )
            )
        return events
