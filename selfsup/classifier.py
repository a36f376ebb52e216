"""A classifier handed over: the network an evaluation selected (backbone [+ projector blocks]
+ head), its preprocessing and its calibrated temperature, saved as ``classifier.safetensors``
+ ``classifier.json`` and loaded back without the method, the run or the training data.

```python
clf = selfsup.load_classifier("runs/simclr/eval_finetune_train_10_classifier")
logits = clf(images_uint8)                # [N, C], raw uint8 [N, C_in, S, S] in
probs = clf.predict_proba(images_uint8)   # softmax(logits / T), batched, no grad
clf.class_names                           # ["Center", "Donut", ...]
```

A classifier fine-tuned with test-time views (``selfsup.eval.test_time``) keeps them: its
logits are the average over the image's symmetric views, as in the scores that selected it.
An ensemble of fine-tuned members (``selfsup.eval.ensemble``) is saved as its members'
networks side by side and one head that averages their logits (``ensemble_members`` in the
JSON says how many networks to build).

``classifier.json`` holds the class names, the backbone's metadata (name, kwargs, input size
and channels, view style, normalisation, wafer encoding: everything preprocessing needs), the
layout of the projector blocks and head, the temperature, the test-time views and the protocol
record that chose the model (its calibration error before and after included). Weights load
from safetensors only, so a classifier file never runs code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.artifacts import artifact_files, build_backbone_from_metadata, preprocess_for
from selfsup.eval.test_time import averaged_logits, check_test_time_views
from selfsup.runtime.files import atomic_save_weights, atomic_write_text, load_weights

CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_META = "classifier.json"
CLASSIFIER_FORMAT = "selfsup-classifier"
# 2: test_time_views (a version-1 file has none); 3: ensemble_members (earlier files have 1)
CLASSIFIER_VERSION = 3
HEAD_KINDS = ("linear", "linear_probe", "mlp_probe")


class ImageClassifier(nn.Module):
    """Raw images -> class logits: preprocess (the backbone's eval transform), ``network``
    (backbone, or backbone + projector blocks) -> features, ``head`` -> logits [N, C].

    ``metadata``: the backbone's (``selfsup.artifacts.backbone_metadata``); ``head_spec`` and
    ``trunk_spec`` describe the head and projector blocks so ``load_classifier`` rebuilds
    them; ``temperature`` (a buffer) divides the logits in ``predict_proba``; ``record``: the
    protocol record that selected this model (saved beside it, not used to predict);
    ``test_time_views``: "none", or the symmetric views whose logits ``forward`` averages
    ("hflip", "dihedral"; ``selfsup.eval.test_time``).
    """

    def __init__(
        self,
        network: nn.Module,
        head: nn.Module,
        *,
        metadata: dict[str, Any],
        class_names: Sequence[str],
        head_spec: dict[str, Any],
        trunk_spec: Sequence[dict[str, Any]] = (),
        temperature: float = 1.0,
        record: dict[str, Any] | None = None,
        test_time_views: str = "none",
    ) -> None:
        super().__init__()
        self.test_time_views = check_test_time_views(
            test_time_views, "ImageClassifier: test_time_views"
        )
        if temperature <= 0:
            raise ValueError(f"ImageClassifier: temperature must be > 0, got {temperature}")
        self.network = network
        self.head = head
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.metadata = dict(metadata)
        self.class_names = [str(c) for c in class_names]
        self.head_spec = dict(head_spec)
        self.trunk_spec = [dict(b) for b in trunk_spec]
        self.record = dict(record or {})
        self.preprocess = preprocess_for(self.metadata)

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    @property
    def in_channels(self) -> int:
        return int(self.metadata["in_channels"])

    @property
    def ensemble_members(self) -> int:
        """How many fine-tuned networks the classifier averages (1: not an ensemble)."""
        from selfsup.eval.ensemble import ConcatFeatures

        return len(self.network.members) if isinstance(self.network, ConcatFeatures) else 1

    def forward(self, images: Tensor) -> Tensor:
        """images: uint8 [N, in_channels, image_size, image_size] -> logits [N, C] (float32),
        averaged over the ``test_time_views``."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"classifier expects uint8 images [N, {expected[0]}, {expected[1]}, "
                f"{expected[2]}] (its backbone's channels and size), got {tuple(images.shape)}"
            )
        device = next(self.network.parameters()).device
        x = self.preprocess(images.to(device))
        return averaged_logits(lambda v: self.head(self.network(v)), x, self.test_time_views)

    @torch.no_grad()
    def predict_proba(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Calibrated class probabilities softmax(logits / T) [N, C] on the CPU, in eval mode,
        ``batch_size`` images at a time."""
        self.eval()
        chunks = [
            (self(images[i : i + batch_size]) / self.temperature).softmax(dim=1).cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
        if not chunks:
            return torch.zeros(0, len(self.class_names))
        return torch.cat(chunks)

    def description(self) -> dict[str, Any]:
        """What ``classifier.json`` holds."""
        return {
            "format": CLASSIFIER_FORMAT,
            "version": CLASSIFIER_VERSION,
            "class_names": self.class_names,
            "num_classes": len(self.class_names),
            "image_size": self.image_size,
            "in_channels": self.in_channels,
            "backbone": self.metadata,
            "ensemble_members": self.ensemble_members,
            "projector_blocks": self.trunk_spec,
            "head": self.head_spec,
            "temperature": float(self.temperature),
            "test_time_views": self.test_time_views,
            "record": self.record,
        }


# -- the parts' layouts (what is saved to rebuild them) -------------------------------------------
def trunk_spec(blocks: Sequence[nn.Sequential]) -> list[dict[str, Any]]:
    """The layout of projector blocks Linear [+ BatchNorm1d] + ReLU (as
    ``selfsup.eval.finetune.projector_blocks`` finds them)."""
    spec = []
    for block in blocks:
        linear = block[0]
        norm = block[1] if isinstance(block[1], nn.BatchNorm1d) else None
        spec.append({
            "in_dim": linear.in_features, "out_dim": linear.out_features,
            "bias": linear.bias is not None,
            "batch_norm": None if norm is None else {"affine": norm.affine, "eps": norm.eps},
        })  # fmt: skip
    return spec


def blocks_from_spec(spec: Sequence[dict[str, Any]]) -> list[nn.Sequential]:
    blocks = []
    for b in spec:
        layers: list[nn.Module] = [nn.Linear(b["in_dim"], b["out_dim"], bias=b["bias"])]
        if b.get("batch_norm"):
            layers.append(nn.BatchNorm1d(b["out_dim"], **b["batch_norm"]))
        blocks.append(nn.Sequential(*layers, nn.ReLU()))
    return blocks


def head_from_spec(spec: dict[str, Any]) -> nn.Module:
    """An untrained head of the layout ``spec``: "linear" (fine-tuning's Linear(D, C)),
    "linear_probe" (Standardize + Linear) or "mlp_probe" (Standardize + Linear-ReLU-Dropout-
    Linear), as ``selfsup.eval.probe`` builds them."""
    from selfsup.eval.probe import Standardize

    kind, dim, classes = spec.get("kind"), spec["in_dim"], spec["num_classes"]
    if kind == "linear":
        return nn.Linear(dim, classes)
    standardize = Standardize(torch.zeros(dim), torch.ones(dim))
    if kind == "linear_probe":
        return nn.Sequential(standardize, nn.Linear(dim, classes))
    if kind == "mlp_probe":
        hidden = spec["hidden_dim"]
        mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(spec.get("dropout", 0.0)),
                            nn.Linear(hidden, classes))  # fmt: skip
        return nn.Sequential(standardize, mlp)
    raise ValueError(f"classifier head kind must be one of {', '.join(HEAD_KINDS)}, got {kind!r}")


# -- save and load --------------------------------------------------------------------------------
def save_classifier(classifier: ImageClassifier, folder: str | Path) -> Path:
    """Write ``classifier.safetensors`` and ``classifier.json`` into ``folder`` (each written to a
    temporary file and renamed: no half-written file); returns the folder."""
    folder = Path(folder)
    atomic_save_weights(classifier, folder / CLASSIFIER_WEIGHTS)
    text = json.dumps(classifier.description(), indent=2, default=str) + "\n"
    atomic_write_text(folder / CLASSIFIER_META, text)
    return folder


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> ImageClassifier:
    """The classifier saved in ``path`` (its folder, or a file in it), in eval mode.

    Raises FileNotFoundError naming the missing file, ValueError for a JSON that is not a
    selfsup classifier or weights that do not fit the layout it describes.
    """
    from safetensors.torch import load_file

    from selfsup.eval.ensemble import ConcatFeatures
    from selfsup.eval.finetune import ProjectorTrunk

    meta_path, weights_path = artifact_files(
        path, CLASSIFIER_META, CLASSIFIER_WEIGHTS, "classifier"
    )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"'{meta_path}' is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(
            f"'{meta_path}' is not a selfsup classifier (format != {CLASSIFIER_FORMAT})"
        )
    if meta.get("version", 0) > CLASSIFIER_VERSION:
        raise ValueError(
            f"'{meta_path}' is classifier format version {meta['version']}; this selfsup reads "
            f"up to {CLASSIFIER_VERSION} (upgrade selfsup)"
        )
    for field in ("class_names", "backbone", "head"):
        if field not in meta:
            raise ValueError(f"'{meta_path}' has no '{field}' field")
    members = meta.get("ensemble_members", 1)
    if not isinstance(members, int) or members < 1:
        raise ValueError(
            f"'{meta_path}': ensemble_members must be an integer >= 1, got {members!r}"
        )
    networks: list[nn.Module] = []
    for _ in range(members):
        network: nn.Module = build_backbone_from_metadata(meta["backbone"])
        if meta.get("projector_blocks"):
            network = ProjectorTrunk(network, blocks_from_spec(meta["projector_blocks"]))
        networks.append(network)
    network = networks[0] if members == 1 else ConcatFeatures(networks)
    classifier = ImageClassifier(
        network, head_from_spec(meta["head"]), metadata=meta["backbone"],
        class_names=meta["class_names"], head_spec=meta["head"],
        trunk_spec=meta.get("projector_blocks") or [], temperature=meta.get("temperature", 1.0),
        record=meta.get("record"), test_time_views=meta.get("test_time_views", "none"),
    )  # fmt: skip
    load_weights(classifier, load_file(str(weights_path)), lambda first: ValueError(
        f"'{weights_path}' does not fit the layout in {meta_path.name}: {first}"))  # fmt: skip
    return classifier.to(map_location).eval()
