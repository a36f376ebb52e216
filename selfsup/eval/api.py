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
import logging
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from selfsup.eval.finetune import (
    FINETUNE_BACKBONE_LR,
    FINETUNE_LR,
    HEAD_INITS,
    check_learning_rates,
)
from selfsup.eval.knn import KNN_K, KNN_TEMPERATURE, capped_bank
from selfsup.eval.metrics import REPORTED_METRICS
from selfsup.eval.protocol import (
    ProtocolData,
    check_fraction,
    knn_sources,
    load_eval_data,
    named_splits,
    split_for,
)
from selfsup.eval.supervised import (
    FINETUNE_EPOCHS,
    FINETUNE_MIN_STEPS,
    SEMI_METHODS,
    FitSettings,
    Fitted,
    fit_and_test,
)
from selfsup.eval.test_time import check_test_time_views
from selfsup.eval.transfer import (
    PROBES,
    TransferLoader,
    data_slug,
    match_styles,
    run_config,
    transfer_hint,
    transfer_record_name,
    transfer_section,
)
from selfsup.runtime.progress import Progress, resolve_progress

if TYPE_CHECKING:
    from selfsup.classifier import ImageClassifier

log = logging.getLogger(__name__)

PROTOCOLS = ("knn", "linear", "mlp", "finetune", "transfer")
SELECTION = "validation macro-F1; test scored once"
DEFAULT_DATA = "wafers"  # when neither the caller nor the run's config.yaml names data


@dataclass(frozen=True)
class DataChoice:
    """The data an evaluation reads: ``data`` as given, else the run's (config.yaml), else
    ``DEFAULT_DATA``; ``origin`` says which, ``config`` holds the run's config values."""

    data: str
    origin: str
    run_data: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def is_runs(self) -> bool:
        """True when the data is the one the run was pretrained on (or the default)."""
        from selfsup.data.spec import absolute_spec

        return absolute_spec(self.data) == absolute_spec(self.run_data)

    @property
    def from_run(self) -> bool:
        """True when the data was not given but read from the run's config.yaml."""
        return self.origin.startswith("the run's")

    def note(self) -> str:
        """``data: <spec> (<origin>)``, the line ``selfsup eval`` and ``embed`` print."""
        return f"data: {self.data} ({self.origin})"


def choose_data(run_or_backbone: Any, data: str | None) -> DataChoice:
    """``data`` when given, else the data in the run's config.yaml (a run folder, or an export
    folder / .ckpt inside one), else ``DEFAULT_DATA``."""
    run = None if isinstance(run_or_backbone, nn.Module) else Path(run_or_backbone)
    path, config = run_config(run)
    run_data = str(config["data"]) if config.get("data") else DEFAULT_DATA
    if data is not None:
        return DataChoice(str(data), "given", run_data, config)
    if config.get("data"):
        return DataChoice(run_data, f"the run's data, {path}", run_data, config)
    return DataChoice(DEFAULT_DATA, "default: no data in a run config.yaml", run_data, config)


@dataclass
class EvaluationResult:
    """One evaluation: ``record`` is the JSON-able protocol record (what ``save`` writes and
    ``selfsup eval`` writes), ``name`` its default file name without ``.json``."""

    protocol: str
    record: dict[str, Any]
    name: str
    notes: list[str] = field(default_factory=list)
    # linear, mlp, finetune: the selected model as a classifier of raw images (calibrated)
    classifier: ImageClassifier | None = None

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
            bank = self.record["bank"]
            cap, seed = bank["cap"], self.record["seed"]
            capped = f" (--max-bank {cap}, seed {seed})" if cap else ""
            size = f"kNN bank: {bank['size']} of {bank['of']} labelled samples{capped}"
            return "\n".join(["| metric | value |", "|---|---|", *rows, "", size])
        label = self.protocol
        if self.protocol == "transfer":
            label = f"transfer {self.record['transfer']['probe']}"
        return format_metrics_table({f"{label} (test)": self.metrics}, keys=list(REPORTED_METRICS))

    def save(self, path: str | Path) -> Path:
        """Write the record as JSON to ``path``, or to ``path/<name>.json`` when ``path`` is a
        folder (a run folder); returns the file written. A result with a ``classifier`` also
        writes it into the folder ``<json name>_classifier`` beside the JSON (first, so the
        record never names a classifier that is not there)."""
        from selfsup.classifier import save_classifier
        from selfsup.runtime.files import atomic_write_text

        path = Path(path)
        if path.is_dir():
            path = path / f"{self.name}.json"
        if self.classifier is not None:
            folder = classifier_folder(path)
            save_classifier(self.classifier, folder)
            self.record["classifier"] = folder.name
        atomic_write_text(path, json.dumps(self.record, indent=2))
        return path

    def key_metric(self) -> str:
        """``<name> <value>`` of the headline metric (``replaced ...`` messages)."""
        return key_metric(self.record)


def classifier_folder(record_path: str | Path) -> Path:
    """Where ``EvaluationResult.save`` puts the classifier of the record ``record_path``."""
    record_path = Path(record_path)
    return record_path.with_name(f"{record_path.stem}_classifier")


def key_metric(record: dict[str, Any]) -> str:
    """The headline metric of a saved record: kNN's first macro-F1, else test macro-F1."""
    scores = record.get("scores") or {}
    if not isinstance(scores, dict) or not scores:
        scores = {"macro_f1": (record.get("test") or {}).get("macro_f1")}
    key = next((k for k in scores if k.endswith("macro_f1")), None)
    value = scores.get(key) if key else None
    return f"{key} {value:.4f}" if isinstance(value, float) else "unknown"


def previous_result(path: str | Path) -> str | None:
    """The headline metric of the record already at ``path`` ("unreadable" if it is not
    JSON); None when there is no file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "unreadable"
    return key_metric(record) if isinstance(record, dict) else "unreadable"


@dataclass
class _Trained:
    """A backbone to evaluate, its eval transform, metadata and (when loaded from one) run."""

    backbone: nn.Module
    preprocess: Any
    meta: dict[str, Any]
    run: Path | None = None
    # what fine-tuning trains when it is more than the backbone (backbone + projector layers)
    network: nn.Module | None = None
    projector_layers: int = 0
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


def _trained(
    run_or_backbone: Any, checkpoint: str, trust_checkpoint: bool,
    from_projector_layer: int | None = 0,
) -> _Trained:  # fmt: skip
    """The backbone of a run / export folder / .ckpt (``load_trained``), or a loaded one; with
    projector layers to fine-tune (``_with_projector_layers``), the method's from a checkpoint."""
    from selfsup.artifacts import load_trained, preprocess_for

    if isinstance(run_or_backbone, nn.Module):
        meta = getattr(run_or_backbone, "metadata", None)
        if not isinstance(meta, dict) or "image_size" not in meta:
            raise ValueError(
                f"evaluate: run_or_backbone is a {type(run_or_backbone).__name__} without a "
                "backbone metadata dict (load it with selfsup.load_backbone, or pass its run "
                "folder, export folder or .ckpt)"
            )
        trained = _Trained(run_or_backbone, preprocess_for(meta), meta)
    else:
        backbone, preprocess, meta = load_trained(
            run_or_backbone, checkpoint, trust_checkpoint=trust_checkpoint
        )
        trained = _Trained(backbone, preprocess, meta, Path(run_or_backbone))
    return _with_projector_layers(trained, from_projector_layer, checkpoint, trust_checkpoint)


def _with_projector_layers(
    trained: _Trained, requested: int | None, checkpoint: str, trust_checkpoint: bool
) -> _Trained:
    """``trained`` as it is, or, when fine-tuning keeps k > 0 projector layers (``requested``;
    None: the method's default, SimCLR v2's 1), the method from the run's checkpoint with
    ``network`` = its backbone + the first k blocks of its projector."""
    from selfsup.artifacts import backbone_metadata, load_method_from_checkpoint, run_checkpoint
    from selfsup.eval.finetune import (
        check_projector_layer,
        default_projector_layers,
        finetune_network,
    )

    method_name = trained.meta.get("method")
    layers = default_projector_layers(method_name) if requested is None else requested
    if check_projector_layer(layers) == 0:
        return trained
    why = (
        f"{method_name} fine-tunes from projector layer {layers} by default (its paper's setting)"
        if requested is None
        else f"from_projector_layer={layers}"
    )
    escape = "from_projector_layer=0 (--from-projector-layer 0) fine-tunes the backbone alone"
    if trained.run is None:
        raise ValueError(
            f"evaluate: {why}, and a loaded backbone has no projector; pass the run folder or "
            f".ckpt, or {escape}"
        )
    try:
        ckpt = run_checkpoint(trained.run, checkpoint)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"evaluate: {why}: {err}, or {escape}") from None
    method = load_method_from_checkpoint(ckpt, trust=trust_checkpoint)
    network = finetune_network(method, layers)
    return _Trained(method.backbone.eval(), method.views.preprocess, backbone_metadata(method),
                    trained.run, network, layers)  # fmt: skip


def _json_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as JSON reads it back (tuples become lists, other objects strings)."""
    return json.loads(json.dumps(record, default=str))


def evaluate(
    run_or_backbone: str | Path | nn.Module,
    *,
    data: str | None = None,
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
    max_bank: int | None = None,
    probe: str = PROBES[0],
    epochs: int = FINETUNE_EPOCHS,
    min_steps: int = FINETUNE_MIN_STEPS,
    max_minutes: float | None = None,
    head_init: str = HEAD_INITS[0],
    from_projector_layer: int | None = None,
    views: Mapping[str, Any] | None = None,
    semi: str | None = None,
    unlabeled_data: str | None = None,
    unlabeled_split: str | None = None,
    test_time_views: str = "none",
    lr: float | Sequence[float] = FINETUNE_LR,
    backbone_lr: float | Sequence[float] = FINETUNE_BACKBONE_LR,
    ensemble: int = 1,
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
    bank; the supervised protocols' train data; transfer's B); None: the data in the run's
    config.yaml, else "wafers" (``choose_data``; ``result.notes`` says which). kNN:
    ``query_data`` (needed unless the data has named splits; default with the run's data: the
    run's ``val_data``), ``bank_split`` / ``query_split`` (default with the run's wafers: its
    ``train_split`` / ``val_split``), ``k``, ``temperature``, ``max_bank`` (a seeded random
    subset of the bank, the training monitor's ``knn_max_train`` draw). Supervised:
    ``train_split`` / ``val_split`` / ``test_split`` and
    ``val_data`` / ``test_data`` (``selfsup.eval.protocol.ProtocolData``), ``label_fraction``
    of train's labels in (0, 1]. Fine-tuning: ``epochs``, ``min_steps``, ``max_minutes`` (a
    wall-clock budget: the schedule ends when it is spent; ``chosen.steps_run``), ``head_init``
    ("zero" or "probe"), ``views`` (view recipe parameters replaced, e.g. {"die_flip_p": 0}),
    ``from_projector_layer`` (k > 0: the backbone and the first k Linear-BN-ReLU layers of the
    method's projector are fine-tuned, read from the run's checkpoint; None: the method's
    paper, 1 for SimCLR v2, else 0 = the backbone alone; recorded in ``chosen``),
    ``semi`` ("fixmatch": FixMatch with the unlabelled images of ``unlabeled_data`` /
    ``unlabeled_split``, default the data's whole training split, wafers' ``train``, else train
    before its label fraction; recorded in ``chosen.semi``; the record's name ends
    ``_fixmatch``), ``test_time_views`` ("none", "hflip", "dihedral": val selection, test
    scores and the saved classifier average the logits over these symmetric views of each
    image, ``selfsup.eval.test_time``; recorded in ``chosen``), ``lr`` / ``backbone_lr``
    (the head's and the backbone's SGD learning rate; several values: every pair is
    fine-tuned, the one with the best val macro-F1 is kept, ``max_minutes`` covers them all;
    ``chosen.lr``, ``chosen.backbone_lr``, ``chosen.lr_candidates``), ``ensemble`` (N > 1:
    N members fine-tuned with seeds ``seed`` ... ``seed + N - 1``, their logits averaged, in
    the val score, the test scores and the saved classifier; ``max_minutes`` covers them all;
    ``chosen.ensemble`` lists each member's step, learning rates and val score).
    Transfer: ``probe`` ("linear" or "mlp"). ``seed`` fixes every split and fit;
    ``batch_size`` images go through the frozen backbone at once (memory only). Options of
    other protocols are ignored. ``progress``: see ``selfsup.runtime.progress``.
    """
    _check_request(protocol, label_fraction, probe, semi, test_time_views)
    lrs = tuple(check_learning_rates(lr, "evaluate: lr"))
    backbone_lrs = tuple(check_learning_rates(backbone_lr, "evaluate: backbone_lr"))
    if not (isinstance(ensemble, int) and ensemble >= 1):
        raise ValueError(f"evaluate: ensemble must be an integer >= 1, got {ensemble!r}")
    if ensemble > 1 and protocol != "finetune":
        raise ValueError(
            f"evaluate: ensemble applies to protocol finetune only, got ensemble={ensemble} "
            f"with protocol '{protocol}'"
        )
    load = partial(_trained, run_or_backbone, checkpoint, trust_checkpoint,
                   from_projector_layer if protocol == "finetune" else 0)  # fmt: skip
    progress = resolve_progress(progress)
    choice = choose_data(run_or_backbone, data)
    log.debug("evaluate %s: %s", protocol, choice.note())
    if protocol == "knn":
        query_data, bank_split, query_split = _knn_defaults(
            choice, query_data, bank_split, query_split
        )
        sources = knn_sources(choice.data, query_data, bank_split, query_split)
        ks = [int(k)] if isinstance(k, numbers.Integral) else list(k)
        knn = _KnnRequest(ks, temperature, max_bank, seed, batch_size)
        result = _evaluate_knn(load(), sources, knn, progress)
        result.name = _knn_record_name(choice, sources, max_bank)
    else:
        where = ProtocolData(choice.data, train_split, val_split, test_split, val_data,
                             test_data, label_fraction, unlabeled_data,
                             unlabeled_split)  # fmt: skip
        fit = FitSettings(seed, epochs, min_steps, head_init, dict(views or {}), batch_size,
                          progress, semi, max_minutes, test_time_views, lrs,
                          backbone_lrs, ensemble)  # fmt: skip
        result = _evaluate_supervised(protocol, probe, where, load, fit)
        result.name = _supervised_record_name(protocol, probe, choice, where)
        if semi is not None:
            result.name += f"_{semi}"
    result.record["data_from"] = choice.origin
    result.notes.append(choice.note())
    return result


@dataclass(frozen=True)
class _KnnRequest:
    ks: list[int]
    temperature: float
    max_bank: int | None
    seed: int
    batch_size: int


def _knn_defaults(
    choice: DataChoice, query_data: str | None, bank_split: str | None, query_split: str | None
) -> tuple[str | None, str | None, str | None]:
    """(query_data, bank_split, query_split) with the run's own where not given: for the run's
    wafers its train / val splits (the monitor's bank and queries), for other data its
    ``val_data`` as the queries."""
    from selfsup.data.spec import spec_kind

    if not choice.is_runs:
        return query_data, bank_split, query_split
    config = choice.config
    if spec_kind(choice.data) == "wafers":
        bank_split = bank_split or config.get("train_split")
        query_split = query_split or config.get("val_split")
    elif named_splits(choice.data) is None and not query_data:
        query_data = config.get("val_data")
    return query_data, bank_split, query_split


def _knn_record_name(
    choice: DataChoice, sources: dict[str, tuple[str, str | None]], max_bank: int | None
) -> str:
    """``eval_knn_<query split or val>`` on the run's data and queries (today's name), with
    the data's / the queries' names when they are other data and ``_bank<N>`` when capped."""
    (bank_spec, _), (query_spec, query_split) = sources.values()
    parts = ["eval_knn"]
    if not choice.is_runs:
        parts.append(data_slug(bank_spec))
    run_queries = choice.config.get("val_data")
    if query_spec != bank_spec and query_spec != run_queries:
        parts.append(data_slug(query_spec))
    if query_split or len(parts) == 1:
        parts.append(query_split or "val")
    if max_bank is not None:
        parts.append(f"bank{max_bank}")
    return "_".join(parts)


def _supervised_record_name(
    protocol: str, probe: str, choice: DataChoice, where: ProtocolData
) -> str:
    """Today's names on the run's data with all labels (``eval_linear_train_10``,
    ``eval_linear_data``, ``eval_transfer_linear_<B>``); other data adds its (and its test
    data's) names before the split, a label fraction below 1 adds ``_f<fraction>``."""
    if protocol == "transfer":
        name = transfer_record_name(probe, where.data)
    else:
        others = [] if choice.is_runs else [data_slug(where.data)]
        if others and where.test_data:
            others.append(data_slug(where.test_data))
        split = split_for(where.data, "train", where.train_split)
        name = "_".join(
            ["eval", protocol, *others, *([split or "data"] if split or not others else [])]
        )
    if where.label_fraction < 1:
        name += f"_f{where.label_fraction:g}"
    return name


def _check_request(
    protocol: str, label_fraction: float, probe: str, semi: str | None, test_time_views: str
) -> None:
    """ValueError for a protocol, label fraction, transfer probe, semi-supervised method or
    test-time views that do not exist or do not apply."""
    check_test_time_views(test_time_views, "evaluate: test_time_views")
    if test_time_views != "none" and protocol != "finetune":
        raise ValueError(
            f"evaluate: test_time_views applies to protocol finetune only (the probes classify "
            f"features extracted once), got test_time_views={test_time_views!r} with protocol "
            f"'{protocol}'"
        )
    if semi is not None and (protocol != "finetune" or semi not in SEMI_METHODS):
        raise ValueError(
            f"evaluate: semi must be one of {', '.join(SEMI_METHODS)} and applies to protocol "
            f"finetune only, got semi={semi!r} with protocol '{protocol}'"
        )
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
    trained: _Trained, sources: dict[str, tuple[str, str | None]], knn: _KnnRequest,
    progress: Progress,
) -> EvaluationResult:  # fmt: skip
    """Weighted kNN: the bank's features (all, or a seeded ``max_bank`` of them) vote for the
    queries' classes."""
    from selfsup.eval.knn import backbone_knn_scores

    bank, queries = (load_eval_data(spec, trained.meta, split) for spec, split in sources.values())
    for role, ds in (("bank", bank), ("queries", queries)):
        if ds.labels is None:
            raise ValueError(f"eval knn: the {role} data '{ds.source}' has no labels")
    whole = len(bank)
    bank = capped_bank(bank, knn.max_bank, knn.seed)
    with transfer_hint("eval knn", trained.meta, (bank, queries)):
        scores = backbone_knn_scores(
            trained.backbone, trained.preprocess, bank, queries, k=knn.ks,
            temperature=knn.temperature, batch_size=knn.batch_size, progress=progress,
        )  # fmt: skip
    (bank_spec, bank_split), (query_spec, query_split) = sources.values()
    record = {
        "protocol": "knn",
        "k": knn.ks,
        "temperature": knn.temperature,
        "seed": knn.seed,
        "bank": {
            "data": bank_spec,
            "split": bank_split,
            "size": len(bank),
            "of": whole,
            "cap": knn.max_bank,
        },  # fmt: skip
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
        unlabeled = where.unlabeled_source() if fit.semi is not None else None
        if unlabeled is not None and unlabeled in (sources["test"], sources.get("val")):
            raise ValueError(
                f"eval {protocol}: the unlabelled data {unlabeled} is the validation or test "
                "data; FixMatch may only learn from training images"
            )
        splits = where.load(
            sources, lambda spec, split: load_eval_data(spec, trained.meta, split),
            protocol=protocol, seed=fit.seed, unlabeled=fit.semi is not None,
        )  # fmt: skip
        with transfer_hint(f"eval {protocol}", trained.meta, splits.values()):
            record, fitted = _supervised_record(protocol, protocol, trained, trained.preprocess,
                                                splits, where, fit)  # fmt: skip
        classifier = _classifier(fitted, trained, splits, record)
        name = f"eval_{protocol}_{split_for(where.data, 'train', where.train_split) or 'data'}"
        return EvaluationResult(protocol, _json_record(record), name, classifier=classifier)
    loader = TransferLoader(trained.meta)
    splits = where.load(sources, loader, protocol=protocol, seed=fit.seed)
    splits, preprocess, style_note = match_styles(splits, trained.meta, trained.preprocess)
    record, _ = _supervised_record(protocol, probe, trained, preprocess, splits, where, fit)
    record["transfer"] = transfer_section(
        probe, trained.run, where.data, trained.meta, loader, style_note
    )
    name = transfer_record_name(probe, where.data)
    return EvaluationResult(protocol, _json_record(record), name)


def _supervised_record(
    protocol: str, fitted: str, trained: _Trained, preprocess: Any,
    splits: dict[str, Any], where: ProtocolData, fit: FitSettings,
) -> tuple[dict[str, Any], Fitted]:  # fmt: skip
    """Fit ``fitted`` (linear, mlp or finetune) on train, select on val, test once: the
    record of ``protocol`` (its probabilities' calibration included) and the fit."""
    from selfsup.eval.calibration import calibrate

    network = trained.backbone if trained.network is None else trained.network
    result = fit_and_test(fitted, network, preprocess, trained.meta, splits, fit)
    chosen, metrics = result.chosen, result.metrics
    if protocol == "finetune":
        chosen["from_projector_layer"] = trained.projector_layers
    _, calibration = calibrate(result.val_logits, splits["val"].labels, result.test_logits,
                               splits["test"].labels)  # fmt: skip
    record = {
        "protocol": protocol,
        "selection": SELECTION,
        "seed": fit.seed,
        "label_fraction": where.label_fraction,
        "splits": {role: {"source": ds.source, "size": len(ds)} for role, ds in splits.items()},
        "backbone": trained.identity,
        "chosen": chosen,
        "test": metrics,
        "calibration": calibration,
    }
    return record, result


def _classifier(
    fitted: Fitted, trained: _Trained, splits: dict[str, Any], record: dict[str, Any]
) -> ImageClassifier:
    """The fit's network and head as a classifier of raw images, with the calibrated
    temperature and the class names of the training data (indices when it has none)."""
    from selfsup.classifier import ImageClassifier, trunk_spec
    from selfsup.eval.ensemble import ConcatFeatures
    from selfsup.eval.finetune import ProjectorTrunk

    num_classes = fitted.head_spec["num_classes"]
    names = splits["train"].class_names or [str(i) for i in range(num_classes)]
    network = fitted.network
    member = network.members[0] if isinstance(network, ConcatFeatures) else network
    blocks = trunk_spec(list(member.projector)) if isinstance(member, ProjectorTrunk) else []
    classifier = ImageClassifier(
        network, fitted.head, metadata=trained.meta, class_names=names[:num_classes],
        head_spec=fitted.head_spec, trunk_spec=blocks,
        temperature=record["calibration"]["temperature"], record=_json_record(record),
        test_time_views=fitted.test_time_views,
    )  # fmt: skip
    return classifier.to(next(network.parameters()).device).eval()  # one device, the network's
