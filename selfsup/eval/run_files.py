"""A run folder's own records read back, tolerant of damage: ``config.yaml`` and
``summary.json``. A missing or unreadable file reads as an empty dict, so a report of an
interrupted run still gets written (and says what was missing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"


def read_config(run_dir: Path) -> dict[str, Any]:
    """``run_dir/config.yaml`` as a dict; {} when it is missing or not a YAML mapping."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    return values if isinstance(values, dict) else {}


def read_summary_safe(run_dir: Path) -> dict[str, Any]:
    """``run_dir/summary.json`` as a dict; {} when it is missing or not a JSON object."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        values = json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return values if isinstance(values, dict) else {}
