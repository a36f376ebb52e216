"""``evaluate``: one typed call for every evaluation protocol, on a run or a loaded backbone.

```python
result = selfsup.evaluate("runs/simclr", protocol="linear", label_fraction=0.1)
result.metrics["macro_f1"]          # test metrics (kNN: the scores per k)
result.save("runs/simclr")          # runs/simclr/eval_linear_train_10.json, as `selfsup eval`
```

Protocols: ``knn`` (weighted kNN of frozen features: a labelled bank votes for queries),
``linear`` / ``mlp`` (probes of frozen features), ``finetune`` (backbone + linear head) and
``transfer`` (a probe on other labelled data B, at the backbone's size and channels). The
supervised ones select on val and score test once (``selfsup.eval.protocol`` says which data
plays which role). The record is what ``selfsup eval`` writes: protocol, seed, split sizes,
backbone checksum, chosen settings, test metrics.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from selfsup.eval.finetune import HEAD_INITS
from selfsup.eval.knn import KNN_K, KNN_TEMPERATURE
from selfsup.eval.metrics import REPORTED_METRICS
from selfsup.eval.protocol import (
    ProtocolData,
    check_fraction,
    knn_sources,
    load_eval_data,
    split_for,
)
from selfsup.eval.supervised import FINETUNE_EPOCHS, FINETUNE_MIN_STEPS, FitSettings, fit_and_test
from selfsup.eval.transfer import (
    PROBES,
    TransferLoader,
    match_styles,
    transfer_record_name,
    transfer_section,
)
from selfsup.runtime.progress import Progress, resolve_progress

PROTOCOLS = ("knn", "linear", "mlp", "finetune", "transfer")
SELECTION = "validation macro-F1; test scored once"


@dataclass
class EvaluationResult:
    """One evaluation: ``record`` is the JSON-able protocol record (what ``save`` writes and
    ``selfsup eval`` writes), ``name`` its default file name without ``.json``."""

    protocol: str
    record: dict[str, Any]
    name: str

    @property
    def metrics(self) -> dict[str, Any]:
        """Test metrics (macro_f1, balanced_accuracy, accuracy, ...); kNN: its scores per k
        (``knn5_macro_f1``, ...)."""
        return self.record["scores" if self.protocol == "knn" else "test"]

    def table(self) -> str:
        """The Markdown table ``selfsup eval`` prints."""
        from selfsup.eval.metrics import format_metrics_table

        if self.protocol == "knn":
            rows = [f"| {key} | {value:.4f} |" for key, value in self.metrics.items()]
            return "\n".join(["| metric | value |", "|---|---|", *rows])
        label = self.protocol
        if self.protocol == "transfer":
            label = f"transfer {self.record['transfer']['probe']}"
        return format_metrics_table({f"{label} (test)": self.metrics}, keys=list(REPORTED_METRICS))

    def save(self, path: str | Path) -> Path:
        """Write the record as JSON to ``path``, or to ``path/<name>.json`` when ``path`` is a
        folder (a run folder); returns the file written."""
        from selfsup.runtime.files import atomic_write_text

        path = Path(path)
        if path.is_dir():
            path = path / f"{self.name}.json"
        atomic_write_text(path, json.dumps(self.record, indent=2))
        return path


@dataclass
class _Trained:
    """A backbone to evaluate, its eval transform, metadata and (when loaded from one) run."""

    backbone: nn.Module
    preprocess: Any
    meta: dict[str, Any]
    run: Path | None = None
    checksum: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256()
        for key, value in sorted(self.backbone.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        self.checksum = digest.hexdigest()[:16]

    @property
    def identity(self) -> dict[str, Any]:
        """The record's ``backbone`` entry."""
        return {"name": self.meta.get("name"), "checksum": self.checksum}


def _trained(run_or_backbone: Any, checkpoint: str, trust_checkpoint: bool) -> _Trained:
    """The backbone of a run / export folder / .ckpt (``load_trained``), or a loaded one."""
    from selfsup.artifacts import load_trained, preprocess_for

    if isinstance(run_or_backbone, nn.Module):
        meta = getattr(run_or_backbone, "metadata", None)
        if not isinstance(meta, dict) or "image_size" not in meta:
            raise ValueError(
                f"evaluate: run_or_backbone is a {type(run_or_backbone).__name__} without a "
                "backbone metadata dict (load it with selfsup.load_backbone, or pass its run "
                "folder, export folder or .ckpt)"
            )
        return _Trained(run_or_backbone, preprocess_for(meta), meta)
    backbone, preprocess, meta = load_trained(
        run_or_backbone, checkpoint, trust_checkpoint=trust_checkpoint
    )
    return _Trained(backbone, preprocess, meta, Path(run_or_backbone))


def _json_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as JSON reads it back (tuples become lists, other objects strings)."""
    return json.loads(json.dumps(record, default=str))


def evaluate(
    run_or_backbone: str | Path | nn.Module,
    *,
    data: str = "wafers",
    protocol: str = "knn",
    label_fraction: float = 1.0,
    train_split: str | None = None,
    val_split: str | None = None,
    test_split: str | None = None,
    val_data: str | None = None,
    test_data: str | None = None,
    query_data: str | None = None,
    bank_split: str | None = None,
    query_split: str | None = None,
    k: int | Sequence[int] = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    probe: str = PROBES[0],
    epochs: int = FINETUNE_EPOCHS,
    min_steps: int = FINETUNE_MIN_STEPS,
    head_init: str = HEAD_INITS[0],
    views: Mapping[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 512,
    checkpoint: str = "auto",
    trust_checkpoint: bool = False,
    progress: Progress | None = None,
) -> EvaluationResult:
    """Evaluate a trained backbone with one protocol; see the module docstring.

    run_or_backbone: a run folder, export folder or ``.ckpt`` (``checkpoint`` = auto | best |
    last and ``trust_checkpoint`` as ``selfsup.artifacts.load_trained``), or a backbone
    module with its ``metadata`` (``selfsup.load_backbone``). data: labelled data (the kNN
    bank; the supervised protocols' train data; transfer's B). kNN: ``query_data`` (needed
    unless the data has named splits), ``bank_split``, ``query_split``, ``k``,
    ``temperature``. Supervised: ``train_split`` / ``val_split`` / ``test_split`` and
    ``val_data`` / ``test_data`` (``selfsup.eval.protocol.ProtocolData``), ``label_fraction``
    of train's labels in (0, 1]. Fine-tuning: ``epochs``, ``min_steps``, ``head_init``
    ("zero" or "probe"), ``views`` (view recipe parameters replaced, e.g. {"die_flip_p": 0}).
    Transfer: ``probe`` ("linear" or "mlp"). ``seed`` fixes every split and fit;
    ``batch_size`` images go through the frozen backbone at once (memory only). Options of
    other protocols are ignored. ``progress``: see ``selfsup.runtime.progress``.
    """
    _check_request(protocol, label_fraction, probe)
    load = partial(_trained, run_or_backbone, checkpoint, trust_checkpoint)
    progress = resolve_progress(progress)
    if protocol == "knn":
        sources = knn_sources(data, query_data, bank_split, query_split)
        ks = [int(k)] if isinstance(k, numbers.Integral) else list(k)
        return _evaluate_knn(load(), sources, ks, temperature, batch_size, progress)
    where = ProtocolData(data, train_split, val_split, test_split, val_data, test_data,
                         label_fraction)  # fmt: skip
    fit = FitSettings(seed, epochs, min_steps, head_init, dict(views or {}), batch_size, progress)
    return _evaluate_supervised(protocol, probe, where, load, fit)


def _check_request(protocol: str, label_fraction: float, probe: str) -> None:
    """ValueError for a protocol, label fraction or transfer probe that does not exist."""
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"evaluate: protocol must be one of {', '.join(PROTOCOLS)}, got '{protocol}'"
        )
    check_fraction(label_fraction, "evaluate: label_fraction")
    if protocol == "knn" and label_fraction != 1:
        raise ValueError(
            f"evaluate: label_fraction={label_fraction} applies to linear, mlp, finetune and "
            "transfer; knn votes with the whole bank"
        )
    if protocol == "transfer" and probe not in PROBES:
        raise ValueError(f"evaluate: probe must be one of {', '.join(PROBES)}, got '{probe}'")


def _evaluate_knn(
    trained: _Trained, sources: dict[str, tuple[str, str | None]], ks: list[int],
    temperature: float, batch_size: int, progress: Progress,
) -> EvaluationResult:  # fmt: skip
    """Weighted kNN: the bank's features vote for the queries' classes."""
    from selfsup.eval.knn import backbone_knn_scores

    bank, queries = (load_eval_data(spec, trained.meta, split) for spec, split in sources.values())
    for role, ds in (("bank", bank), ("queries", queries)):
        if ds.labels is None:
            raise ValueError(f"eval knn: the {role} data '{ds.source}' has no labels")
    scores = backbone_knn_scores(
        trained.backbone, trained.preprocess, bank, queries, k=ks, temperature=temperature,
        batch_size=batch_size, progress=progress,
    )  # fmt: skip
    (bank_spec, bank_split), (query_spec, query_split) = sources.values()
    record = {
        "protocol": "knn",
        "k": ks,
        "temperature": temperature,
        "bank": {"data": bank_spec, "split": bank_split, "size": len(bank)},
        "queries": {"data": query_spec, "split": query_split, "size": len(queries)},
        "backbone": trained.identity,
        "scores": scores,
    }
    return EvaluationResult("knn", _json_record(record), f"eval_knn_{query_split or 'val'}")


def _evaluate_supervised(
    protocol: str, probe: str, where: ProtocolData, load: Callable[[], _Trained],
    fit: FitSettings,
) -> EvaluationResult:  # fmt: skip
    """linear / mlp / finetune on ``where``'s data, or transfer (``probe``) to it."""
    sources = where.sources(protocol)  # before loading: a bad request fails fast
    trained = load()
    if protocol != "transfer":
        splits = where.load(
            sources, lambda spec, split: load_eval_data(spec, trained.meta, split),
            protocol=protocol, seed=fit.seed,
        )  # fmt: skip
        record = _supervised_record(protocol, protocol, trained, trained.preprocess, splits,
                                    where, fit)  # fmt: skip
        name = f"eval_{protocol}_{split_for(where.data, 'train', where.train_split) or 'data'}"
        return EvaluationResult(protocol, _json_record(record), name)
    loader = TransferLoader(trained.meta)
    splits = where.load(sources, loader, protocol=protocol, seed=fit.seed)
    splits, preprocess, style_note = match_styles(splits, trained.meta, trained.preprocess)
    record = _supervised_record(protocol, probe, trained, preprocess, splits, where, fit)
    record["transfer"] = transfer_section(
        probe, trained.run, where.data, trained.meta, loader, style_note
    )
    name = transfer_record_name(probe, where.data)
    return EvaluationResult(protocol, _json_record(record), name)


def _supervised_record(
    protocol: str, fitted: str, trained: _Trained, preprocess: Any,
    splits: dict[str, Any], where: ProtocolData, fit: FitSettings,
) -> dict[str, Any]:  # fmt: skip
    """Fit ``fitted`` (linear, mlp or finetune) on train, select on val, test once: the
    record of ``protocol``."""
    chosen, metrics = fit_and_test(fitted, trained.backbone, preprocess, trained.meta, splits, fit)
    return {
        "protocol": protocol,
        "selection": SELECTION,
        "seed": fit.seed,
        "label_fraction": where.label_fraction,
        "splits": {role: {"source": ds.source, "size": len(ds)} for role, ds in splits.items()},
        "backbone": trained.identity,
        "chosen": chosen,
        "test": metrics,
    }
