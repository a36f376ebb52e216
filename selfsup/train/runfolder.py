"""The self-describing run folder: resolved config, seed, versions, git commit, summary."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import yaml

from selfsup.runtime.files import atomic_write_text


def versions() -> dict[str, str]:
    import lightning
    import numpy
    import torch
    import torchvision

    from selfsup.version import __version__

    found = {
        "selfsup": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
    return {name: str(version) for name, version in found.items()}  # TorchVersion -> str


def git_commit() -> str | None:
    """Commit of the selfsup source tree when it is a git checkout (None for installed wheels)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def new_run_dir(out: str | Path, name: str | None, default_name: str) -> Path:
    """A fresh folder ``out/name``; a timestamp suffix avoids overwriting an existing run."""
    base = Path(out)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run = base / (name or f"{default_name}-{stamp}")
    if run.exists() and any(run.iterdir()):
        run = base / f"{run.name}-{stamp}"
    run.mkdir(parents=True, exist_ok=True)
    return run


def write_config(run_dir: Path, config: dict[str, Any], extra: dict[str, Any]) -> None:
    """config.yaml: the resolved config (what ``--config`` accepts) plus a provenance block."""
    provenance = {
        "versions": versions(),
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        **extra,
    }
    text = yaml.safe_dump(config, sort_keys=False)
    text += "\n# provenance (ignored when the file is used as --config)\n"
    text += "\n".join(
        "# " + line for line in yaml.safe_dump(provenance, sort_keys=False).splitlines()
    )
    atomic_write_text(run_dir / "config.yaml", text + "\n")
    atomic_write_text(run_dir / "provenance.json", json.dumps(provenance, indent=2) + "\n")


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}
