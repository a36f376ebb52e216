"""Wafer-map tools: similarity search, synthetic maps, model-input encodings (library only; the
``selfsup wafers`` commands live in ``selfsup.cli.wafers``).

```
result = find_similar("runs/simclr", query=17, data="wafers", split="test", k=10)
save_similarity_grid(result, "grid.png")
index = SimilarityIndex.build(backbone, preprocess, images, cache_path="feats.npz")
```
"""

from selfsup.wafers.encode import WAFER_ENCODINGS, encode_wafer
from selfsup.wafers.search import (
    SimilarMaps,
    find_similar,
    load_wafer_maps,
    save_similarity_grid,
    select_maps,
)
from selfsup.wafers.similar import SimilarityIndex, grid_size, save_grid, wafer_rgb

__all__ = [
    "WAFER_ENCODINGS",
    "SimilarMaps",
    "SimilarityIndex",
    "encode_wafer",
    "find_similar",
    "grid_size",
    "load_wafer_maps",
    "save_grid",
    "save_similarity_grid",
    "select_maps",
    "wafer_rgb",
]
