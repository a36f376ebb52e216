"""The fast paths give the same numbers as the plain ones: caches, memory maps, bf16 and
channels_last, pinning and thread choices; and every recipe of benchmarks/throughput.py (the
selfsup side and lightly's side of each paired method) runs."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup
import selfsup.data.folder_cache as folder_cache
from selfsup.data import BatchLoader, ImageDataset, load_image_folder
from selfsup.data.folders import decode_image
from selfsup.data.loader import pin_memory_for
from selfsup.methods import METHODS
from selfsup.runtime.precision import SMALL_VIEWS_ELEMENTS, views_threads

# --- decoded-folder cache ------------------------------------------------------------------------


def make_folder(root: Path, n: int = 12) -> list[str]:
    """``n`` small RGB images of different sizes in two class folders; returns their paths."""
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        h, w = 6 + i % 5, 7 + (i * 3) % 6
        rel = f"{'ab'[i % 2]}/img{i:02d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / rel)
        names.append(rel)
    (root / "a" / "broken.png").write_bytes(b"not a png")
    return sorted(names)


def mapped_files() -> str:
    return Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""


@pytest.mark.parametrize("mmap", [True, False, None])
def test_cached_equals_decoded(tmp_path, mmap):
    root = tmp_path / "images"
    names = make_folder(root)
    cache = tmp_path / "cache"
    plain = load_image_folder(root, 8, cache=False)
    first = load_image_folder(root, 8, cache_dir=cache, mmap=mmap)  # decodes, writes the cache
    again = load_image_folder(root, 8, cache_dir=cache, mmap=mmap)  # reads the cache
    by_hand = np.stack([decode_image(root / rel, 8, "RGB") for rel in names])
    assert plain.names == first.names == again.names == names
    assert plain.skipped == first.skipped == again.skipped == ["a/broken.png"]
    for data in (plain, first, again):
        assert data.images.dtype == torch.uint8 and data.images.shape == (12, 3, 8, 8)
        assert np.array_equal(data.images.numpy(), by_hand)
        assert data.labels.tolist() == plain.labels.tolist()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps")
def test_large_cache_is_memory_mapped_small_one_read(tmp_path, monkeypatch):
    root = tmp_path / "images"
    make_folder(root)
    cache = tmp_path / "cache"
    load_image_folder(root, 8, cache_dir=cache)
    (npy,) = cache.glob("*.npy")
    small = load_image_folder(root, 8, cache_dir=cache)  # 2 KB < MMAP_MIN_BYTES: read
    assert str(npy) not in mapped_files()
    monkeypatch.setattr(folder_cache, "MMAP_MIN_BYTES", 100)
    large = load_image_folder(root, 8, cache_dir=cache)  # now "larger than the threshold"
    assert str(npy) in mapped_files()
    assert torch.equal(small.images, large.images)
    forced = load_image_folder(root, 8, cache_dir=cache, mmap=False)
    assert torch.equal(forced.images, large.images)
    large.images[0, 0, 0, 0] = 255 - int(large.images[0, 0, 0, 0])  # copy-on-write map
    assert torch.equal(load_image_folder(root, 8, cache_dir=cache).images, small.images)


def test_loader_gathers_the_same_batches_from_a_memory_map(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (40, 1, 4, 4), dtype=np.uint8)
    path = tmp_path / "images.npy"
    np.save(path, images)
    mapped = ImageDataset(np.load(path, mmap_mode="c"))
    in_memory = ImageDataset(torch.from_numpy(images.copy()))
    for a, b in zip(
        BatchLoader(mapped, 16, seed=3), BatchLoader(in_memory, 16, seed=3), strict=True
    ):
        assert torch.equal(a, b)


# --- precision and memory format ------------------------------------------------------------------


def _loss(name: str, views: list[torch.Tensor], *, channels_last: bool, bf16: bool) -> float:
    torch.manual_seed(0)
    method = selfsup.build(
        name, backbone="convnet_tiny", in_channels=3, image_size=16, backbone_kwargs={"width": 8}
    )
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return float(method.training_loss(views).loss.detach())


@pytest.mark.parametrize("name", ["simclr", "fastsiam", "byol"])
def test_channels_last_and_bf16_losses_match_fp32(name):
    num_views = 4 if name == "fastsiam" else 2
    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(32, 3, 16, 16, generator=generator) for _ in range(num_views)]
    fp32 = _loss(name, views, channels_last=False, bf16=False)
    assert np.isfinite(fp32)
    assert _loss(name, views, channels_last=True, bf16=False) == pytest.approx(fp32, abs=1e-4)
    # bf16 keeps 8 bits of mantissa: the loss moves by under 1 % (NT-Xent, ~4 here), or by
    # under 0.005 for the cosine losses in [-1, 1] (near 0 at initialisation)
    close = pytest.approx(fp32, rel=1e-2, abs=5e-3)
    assert _loss(name, views, channels_last=False, bf16=True) == close
    assert _loss(name, views, channels_last=True, bf16=True) == close


# --- pinning and threads --------------------------------------------------------------------------


def test_pin_memory_only_for_cuda(monkeypatch):
    assert pin_memory_for("cpu") is False
    assert pin_memory_for(torch.device("cpu")) is False
    for device in ("cuda", "cuda:1", "gpu", torch.device("cuda", 0)):
        assert pin_memory_for(device) is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pin_memory_for("auto") is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pin_memory_for("auto") is True


def test_views_threads_one_thread_for_small_cpu_batches():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with views_threads(torch.zeros(8, 3, 4, 4, dtype=torch.uint8)):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with views_threads(torch.zeros(SMALL_VIEWS_ELEMENTS, dtype=torch.uint8)):
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), views_threads(torch.zeros(1)):
            raise RuntimeError("restored even on errors")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --- benchmarks/throughput.py: every paired method, both sides ------------------------------------


def _load_throughput():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
    spec = importlib.util.spec_from_file_location("throughput", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["throughput"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


throughput = _load_throughput()
PAIRED = list(throughput.PAIRINGS)
# methods the throughput script cannot time yet, with why
UNTIMED = {  # no whole-image backbone pass to time (benchmarks/mae_speed.py times it)
    "mae": "a ViT only; its encoder runs on visible tokens, no whole-image pass",
}
UNPAIRED = [m for m in METHODS.names() if m not in PAIRED and m not in UNTIMED]  # selfsup's side
TINY = throughput.Case("tiny test", "convnet_tiny", 1, 1, backbone_kwargs={"width": 4})
SIZE = 16  # DINO's and SwAV's local crops: 8 px
BATCH = 8
# the backbone passes of one step at batch 8 (ShuffleBN's two half-batches merged into one)
EXPECTED_PASSES = {
    "simclr": "fwd+bwd 16x16px",
    "mocov2": "fwd+bwd 8x16px, fwd 8x16px",
    "byol": "fwd+bwd 16x16px, fwd 16x16px",
    "fastsiam": "fwd+bwd 32x16px",
    "dino": "fwd+bwd 16x16px, fwd+bwd 48x8px, fwd 16x16px",
    "rotnet": "fwd+bwd 32x16px",
    # the autoencoders decode feature maps: the bare pass is the backbone's feature map
    "denoising_ae": "fwd+bwd (feature map) 8x16px",
    "context_ae": "fwd+bwd (feature map) 8x16px",
    # the discriminator's part runs the encoder frozen: forward only
    "bigan": "fwd+bwd 8x16px, fwd 8x16px",
}


def _registered(method: str) -> None:
    if method not in METHODS:
        pytest.skip(f"{method} is not a registered selfsup method yet")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method", PAIRED + UNPAIRED)
def test_selfsup_recipe_runs(method):
    _registered(method)
    result = throughput.run_selfsup(TINY, method, 1, 1, "cpu", batch=BATCH, size=SIZE)
    assert math.isfinite(result["loss"])
    assert result["images_per_s"] > 0 and result["step_over_bare"] > 0
    assert result["bare_passes"].startswith("fwd+bwd")
    if method in EXPECTED_PASSES:
        assert result["bare_passes"] == EXPECTED_PASSES[method]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method", PAIRED)
def test_lightly_recipe_runs(method):
    pytest.importorskip("lightly")
    _registered(method)
    result = throughput.run_lightly(TINY, method, 1, 1, "cpu", False, 0, batch=BATCH, size=SIZE)
    assert math.isfinite(result["loss"]) and result["images_per_s"] > 0


@pytest.mark.parametrize("method", PAIRED)
def test_lightly_transform_makes_selfsup_views_and_heads_are_as_wide(method):
    """lightly's transform gives as many views of the same sizes as selfsup's (with the
    example's class where it can: no note for the methods whose views it expresses), and
    both sides train heads of about the same size (they differ only in biases / BN layers)."""
    pytest.importorskip("lightly")
    _registered(method)
    pairing = throughput.PAIRINGS[method]
    views = throughput.selfsup_views(method, SIZE)
    backbone = throughput._backbone(TINY)
    recipe = pairing.lightly(backbone, pairing.sizes(backbone.feature_dim), views, 2)
    image = Image.fromarray(throughput.generated_images(1, SIZE)[0])
    made = recipe.transform(image)
    assert [tuple(v.shape) for v in made] == [(3, v.size, v.size) for v in views.views]
    if method in ("simclr", "mocov2", "byol", "simsiam", "fastsiam", "barlow_twins", "dino"):
        assert recipe.notes == []
    ours = throughput.build_selfsup(method, throughput._backbone(TINY), SIZE)
    ours_heads = throughput.head_parameters(ours)
    assert throughput.head_parameters(recipe.model) == pytest.approx(ours_heads, rel=0.05)


def test_step_clock_leaves_the_bare_passes_between_steps_out_of_each_step(monkeypatch):
    """Each step is timed from the end of the reference run after the previous step, so the
    paired ratio compares a step with the bare passes run right after it."""
    now = [0.0]
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: now[0])

    def bare() -> float:
        now[0] += 5.0  # the reference run takes 5 s of the clock
        return 5.0

    clock = throughput.StepClock("cpu", between_steps=bare)
    callback = clock.callback()
    callback.on_train_start()
    for step_seconds in (1.0, 2.0, 3.0):
        now[0] += step_seconds  # data loading + the step
        callback.on_train_batch_end()
    assert clock.steps == [1.0, 2.0, 3.0]
    assert clock.between == [5.0, 5.0, 5.0]


def test_bare_passes_merge_one_modules_calls_per_size():
    online, target = torch.nn.Identity(), torch.nn.Identity()
    half = torch.zeros(4, 3, 16, 16)
    calls = [
        (online, "forward", half, True),
        (online, "forward", half + 1, True),  # ShuffleBN's second half-batch
        (online, "forward", torch.zeros(6, 3, 8, 8), True),  # local crops: their own pass
        (online, "feature_map", half, True),  # a feature-map pass is a pass of its own
        (target, "forward", half, False),
        (target, "forward", half, False),
    ]
    passes = throughput.bare_passes(calls)
    assert [(m, kind, x.shape[0], x.shape[-1], g) for m, kind, x, g in passes] == [
        (online, "forward", 8, 16, True),
        (online, "forward", 6, 8, True),
        (online, "feature_map", 4, 16, True),
        (target, "forward", 8, 16, False),
    ]
    assert torch.equal(passes[0][2][4:], half + 1)


def test_methods_not_registered_or_not_taking_the_widths_are_skipped(monkeypatch):
    assert set(throughput.choose_methods(None)[0]) == set(PAIRED) & set(METHODS.names())
    simclr = throughput.PAIRINGS["simclr"]
    renamed = throughput.Pairing(lambda d: {"projection_width": d}, simclr.lightly)
    monkeypatch.setitem(throughput.PAIRINGS, "not_a_method", simclr)
    monkeypatch.setitem(throughput.PAIRINGS, "byol", renamed)
    chosen, notes = throughput.choose_methods(["simclr", "not_a_method", "byol"])
    assert chosen == ["simclr"]
    assert "not_a_method: skipped, not a registered" in notes[0]
    assert "byol: skipped, selfsup's byol takes no projection_width" in notes[1]


def test_unpaired_methods_run_on_selfsups_side_only():
    chosen, notes = throughput.choose_methods(["unpaired", "rotnet", "simclr"])
    lacking = [m for m in METHODS.names() if m not in PAIRED]
    assert chosen[: len(lacking)] == lacking and chosen[-1] == "simclr" and not notes
    assert "rotnet" in UNPAIRED and chosen.count("rotnet") == 1
    recipes = ["selfsup", "lightly-fp32"]
    assert throughput.recipes_for("rotnet", recipes) == ["selfsup"]
    assert throughput.recipes_for("simclr", recipes) == recipes


def test_a_method_without_whole_image_backbone_passes_is_refused_by_name():
    method = selfsup.build(
        "mae", backbone="vit_tiny", backbone_kwargs={"depth": 1, "width": 32, "heads": 2},
        image_size=SIZE,
    )  # fmt: skip
    batch = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    with pytest.raises(ValueError, match="mae makes no backbone pass"):
        throughput.BarePasses(method, batch, "32-true", False)()


def test_feature_map_passes_are_recorded_and_the_backbone_left_as_it_was():
    method = selfsup.build(
        "denoising_ae", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=SIZE
    )
    views = method.views(torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8))
    calls = throughput.backbone_calls(method, views, bf16=False)
    assert [(m, kind, tuple(x.shape), g) for m, kind, x, g in calls] == [
        (method.backbone, "feature_map", (4, 3, SIZE, SIZE), True)
    ]
    assert "feature_map" not in vars(method.backbone)  # the recording wrapper is gone


def test_a_case_brings_its_own_image_size_and_batch(monkeypatch, capsys):
    import argparse
    import io

    case = throughput.CASES["resnet18_225"]  # CPC's patches at Super-Selfish's default size
    assert (case.image_size, case.batch, case.backbone) == (225, 16, "resnet18")
    assert throughput.CASES["tiny"].image_size == throughput.SIZE == 32
    seen = {}

    def fake_run(case, method, warmup, steps, device, **sizes):
        seen.update(sizes, method=method)
        return {"images_per_s": 1.0}

    monkeypatch.setattr(throughput, "run_selfsup", fake_run)
    monkeypatch.setattr(sys, "stdin", io.StringIO("run\nstop\n"))
    args = argparse.Namespace(warmup=0, steps=0, device="cpu")
    throughput.serve("resnet18_225", "cpc", "selfsup", args)
    assert seen == {"batch": 16, "size": 225, "method": "cpc"}
    assert capsys.readouterr().out.count(throughput.RESULT) == 2  # ready, then the run
