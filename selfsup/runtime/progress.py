"""Progress lines for long evaluation jobs (fine-tuning, probe searches, feature extraction, kNN).

One reporter, rate-limited so logs and tests are not flooded: a task prints at most one line
every ``every`` seconds, and nothing at all when it ends sooner, so short jobs stay silent.

```
progress = Progress(every=10)                      # Progress(enabled=False): quiet
task = progress.task("fine-tune", total=600, unit="steps")
for step in range(1, 601):
    task.update(step, status="best val macro-F1 0.81")
task.close()
```

prints to stderr lines such as
``fine-tune: 120/600 steps (20 %), best val macro-F1 0.81, 1:02 elapsed, ~4:08 left``; on a
terminal the line updates in place. Library functions take ``progress: Progress | None``;
None is ``Progress.from_env()``: on, a line every 10 s at most, unless the environment variable
``SELFSUP_PROGRESS`` is ``0`` / ``off`` (quiet) or another number of seconds.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

DEFAULT_EVERY = 10.0
ENV_VAR = "SELFSUP_PROGRESS"


def format_seconds(seconds: float) -> str:
    """1:02, 1:04:05: minutes and seconds, hours when there are some."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Where and how often progress lines go: ``enabled`` (False: quiet), at most one line per
    task every ``every`` seconds (0: every update, for tests), to ``stream`` (default stderr,
    looked up when writing so captured streams work)."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        every: float = DEFAULT_EVERY,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not every >= 0:
            raise ValueError(f"progress: every must be >= 0 seconds, got {every}")
        self.enabled = enabled
        self.every = every
        self.clock = clock
        self._stream = stream

    @classmethod
    def from_env(cls) -> Progress:
        """The default reporter: a line every 10 s; ``SELFSUP_PROGRESS=0`` (or ``off``)
        silences it, a positive number sets the seconds between lines."""
        value = os.environ.get(ENV_VAR, "").strip()
        if not value:
            return cls()
        try:
            every = 0.0 if value.lower() in ("off", "quiet", "false", "no") else float(value)
        except ValueError:
            every = math.nan
        if not every >= 0:
            raise ValueError(
                f"{ENV_VAR}='{value}': expected 0 or off (quiet) or the seconds between lines"
            )
        return cls(enabled=every > 0, every=every)

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def task(self, label: str, total: int, unit: str = "") -> ProgressTask:
        """A job of ``total`` units (steps, batches, epochs) to report on."""
        return ProgressTask(self, label, total, unit)

    def note(self, message: str) -> None:
        """One line now, whatever the rate limit (e.g. which benchmark cell starts)."""
        if self.enabled:
            self.write(message, final=True)

    def write(self, line: str, final: bool = True) -> None:
        """A line; on a terminal a non-``final`` line is overwritten by the next one."""
        stream = self.stream
        if stream.isatty():
            stream.write(f"\r\x1b[K{line}" + ("\n" if final else ""))
        else:
            stream.write(line + "\n")
        stream.flush()


def resolve_progress(progress: Progress | None) -> Progress:
    """``progress``, or the default reporter (``Progress.from_env``) when None."""
    return Progress.from_env() if progress is None else progress


class ProgressTask:
    """One job's progress: ``update(done, status=...)`` prints when ``every`` seconds passed
    since the last line (or since the start); ``close()`` ends with a line only if the job
    took that long. ``status`` (e.g. the best val score) is kept until replaced."""

    def __init__(self, progress: Progress, label: str, total: int, unit: str = "") -> None:
        self.progress = progress
        self.label = label
        self.total = max(int(total), 0)
        self.unit = unit
        self.done = 0
        self.status = ""
        self.start = progress.clock()
        self._last = self.start
        self._printed = False

    def update(self, done: int, status: str | None = None) -> None:
        """``done`` of ``total`` units finished (a repeat of the last update prints nothing)."""
        done = min(int(done), self.total) if self.total else int(done)
        changed = done != self.done or (status is not None and status != self.status)
        self.done = done
        if status is not None:
            self.status = status
        now = self.progress.clock()
        if changed and self.progress.enabled and now - self._last >= self.progress.every:
            self._last = now
            self._printed = True
            self.progress.write(self.line(now), final=False)

    def advance(self, count: int = 1, status: str | None = None) -> None:
        self.update(self.done + count, status)

    def close(self, status: str | None = None) -> None:
        """The closing line (done, total time), when the job lasted ``every`` seconds."""
        if status is not None:
            self.status = status
        now = self.progress.clock()
        if self.progress.enabled and (self._printed or now - self.start >= self.progress.every):
            self.progress.write(self.line(now, finished=True), final=True)

    def line(self, now: float, finished: bool = False) -> str:
        """``label: done/total unit (pct %), status, elapsed, ~left`` (or ``done in``)."""
        elapsed = now - self.start
        unit = f" {self.unit}" if self.unit else ""
        parts = [f"{self.label}: {self.done}/{self.total}{unit}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f} %)"
        if self.status:
            parts.append(self.status)
        if finished:
            parts.append(f"done in {format_seconds(elapsed)}")
        else:
            parts.append(f"{format_seconds(elapsed)} elapsed")
            parts.append(f"~{self._left(elapsed)} left")
        return ", ".join(parts)

    def _left(self, elapsed: float) -> str:
        if self.done <= 0 or not self.total:
            return "?"
        left = elapsed / self.done * (self.total - self.done)
        return format_seconds(left) if math.isfinite(left) else "?"
