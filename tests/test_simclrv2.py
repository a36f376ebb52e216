"""SimCLR v2 (Chen et al. 2020b): the 3-layer projector sized from the backbone, SimCLR's loss,
and fine-tuning from the projector's first layer (library, ``evaluate`` and ``selfsup eval``)."""

import json
import shutil

import pytest
import torch
from torch import nn

import selfsup
from selfsup.artifacts import export_backbone
from selfsup.cli import main
from selfsup.eval.api import _trained, evaluate
from selfsup.eval.finetune import (
    ProjectorTrunk,
    default_projector_layers,
    finetune,
    finetune_network,
    projector_blocks,
)
from selfsup.heads import DINOHead, mlp
from selfsup.losses import nt_xent_loss
from selfsup.methods import SimCLR, SimCLRV2

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=16)  # 32-d


def linear_widths(module: nn.Module) -> list[int]:
    return [m.out_features for m in module.modules() if isinstance(m, nn.Linear)]


def views(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]


# --- the method ---------------------------------------------------------------------------------


def test_defaults_are_the_papers_and_the_hidden_width_follows_the_backbone():
    defaults = selfsup.list_methods()["simclrv2"]
    assert defaults["num_proj_layers"] == 3 and defaults["proj_dim"] == 128
    assert defaults["temperature"] == 0.1 and defaults["proj_hidden_dim"] is None
    method = selfsup.build("simclrv2", **TINY)
    assert isinstance(method, SimCLRV2) and isinstance(method, SimCLR)
    assert type(method).method_name == "simclrv2"
    assert method.feature_dim == 32 and linear_widths(method.projector) == [32, 32, 128]
    assert [type(m) for m in method.projector[:3]] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    recorded = method.hyperparameters()
    assert recorded["proj_hidden_dim"] == 32 and recorded["temperature"] == 0.1
    again = selfsup.build("simclrv2", **recorded)
    assert again.hyperparameters() == recorded
    assert linear_widths(again.projector) == [32, 32, 128]
    paper = selfsup.build("simclrv2", head_widths="paper", **TINY)
    assert linear_widths(paper.projector) == [32, 32, 128]
    wide = selfsup.build("simclrv2", proj_hidden_dim=48, proj_dim=8, **TINY)
    assert linear_widths(wide.projector) == [48, 48, 8]


def test_loss_is_nt_xent_of_the_projections():
    torch.manual_seed(0)
    method = selfsup.build("simclrv2", proj_dim=8, **TINY)
    v = views()
    out = method.training_loss(v)
    with torch.no_grad():
        z1, z2 = method.projector(method.backbone(torch.cat(v))).chunk(2)
    assert out.loss.item() == pytest.approx(nt_xent_loss(z1, z2, 0.1).item(), abs=1e-5)
    assert 0 < float(out.logs["collapse_std"]) < 2


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="simclrv2: temperature must be > 0, got 0"):
        selfsup.build("simclrv2", temperature=0.0, **TINY)
    with pytest.raises(ValueError, match="simclrv2 needs 2 views, got 3"):
        selfsup.build("simclrv2", **TINY).training_loss(views() + views()[:1])


# --- the network fine-tuning trains -------------------------------------------------------------


def test_projector_layer_1_is_the_backbone_and_linear_bn_relu():
    torch.manual_seed(0)
    method = selfsup.build("simclrv2", proj_dim=8, **TINY).eval()
    assert len(projector_blocks(method.projector)) == 2  # the output Linear is no block
    trunk = finetune_network(method, 1)
    assert isinstance(trunk, ProjectorTrunk) and trunk.feature_dim == 32
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = torch.relu(method.projector[1](method.projector[0](method.backbone(x))))
        torch.testing.assert_close(trunk(x), expected)
    assert finetune_network(method, 2).projector[-1][0] is method.projector[3]
    assert finetune_network(method, 0) is method.backbone
    assert finetune_network(method.backbone, 0) is method.backbone
    assert default_projector_layers("simclrv2") == 1
    plain = mlp(4, 8, 2, num_layers=3, batch_norm=False)  # Linear-ReLU blocks count too
    assert [len(b) for b in projector_blocks(plain)] == [2, 2]
    assert projector_blocks(DINOHead(4, 8, hidden_dim=8, bottleneck_dim=4)) == []
    assert default_projector_layers("simclr") == 0 and default_projector_layers(None) == 0


@pytest.mark.parametrize(
    "name, layers, message",
    [
        ("simclrv2", 3, "needs that many Linear-BN-ReLU layers at the start of simclrv2's "
         r"projector; it has 2 such layer\(s\)"),
        ("simclr", 2, r"simclr's projector; it has 1 such layer\(s\)"),
        ("rotnet", 1, "rotnet's projector; it has no projector"),
        ("simclrv2", -1, "from_projector_layer must be >= 0"),
    ],
)  # fmt: skip
def test_methods_without_those_layers_are_refused(name, layers, message):
    method = selfsup.build(name, **TINY)
    with pytest.raises(ValueError, match=message):
        finetune_network(method, layers)


def test_a_backbone_alone_has_no_projector_layer():
    method = selfsup.build("simclrv2", **TINY)
    with pytest.raises(ValueError, match=r"needs the method \(its projector\), got a Backbone"):
        finetune_network(method.backbone, 1)


def blobs(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 80, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    images[labels == 1, :, :4] += 150  # class 1: bright top half
    return images, labels


def test_finetune_from_projector_layer_trains_a_copy_of_backbone_and_layer():
    torch.manual_seed(0)
    method = selfsup.build(
        "simclrv2", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=8,
        in_channels=1, proj_dim=8,
    )  # fmt: skip
    before = {k: v.clone() for k, v in method.state_dict().items()}
    train_x, train_y = blobs(64, 0)
    val_x, val_y = blobs(32, 1)

    def preprocess(x):
        return x.float() / 255

    result = finetune(
        method, train_x, train_y, val_x, val_y, augment=preprocess, preprocess=preprocess,
        num_classes=2, epochs=6, batch_size=16, lr=0.5, backbone_lr=0.05,
        from_projector_layer=1,
    )  # fmt: skip
    model = result.model
    assert isinstance(model.backbone, ProjectorTrunk) and model.head.in_features == 32
    assert result.val_macro_f1 > 0.9
    tuned = model.backbone.projector[0][0].weight
    assert not torch.equal(tuned, before["projector.0.weight"])  # the layer was fine-tuned
    assert all(torch.equal(v, method.state_dict()[k]) for k, v in before.items()), (
        "the method must not change"
    )


# --- evaluate / selfsup eval finetune on a run ------------------------------------------------


def tiny_run(folder, name: str, **heads):
    """A run folder as ``selfsup pretrain`` leaves it (backbone export + checkpoints/last.ckpt
    holding the build config and the method's weights), without the training."""
    torch.manual_seed(0)
    method = selfsup.build(name, **TINY, **heads)
    with torch.no_grad():
        for p in method.parameters():  # off the init, so a re-initialised head would differ
            p.add_(0.1 * torch.randn_like(p))
    export_backbone(method, folder)
    (folder / "checkpoints").mkdir()
    torch.save(
        {
            "hyper_parameters": {"build_config": {"method": name, **method.hyperparameters()}},
            "state_dict": {f"method.{k}": v for k, v in method.state_dict().items()},
        },
        folder / "checkpoints" / "last.ckpt",
    )
    return method


def fast(run_or_backbone, labelled, **options):
    train, val = labelled
    return evaluate(
        run_or_backbone, data=str(train), test_data=str(val), protocol="finetune",
        epochs=1, min_steps=2, **options,
    )  # fmt: skip


def test_eval_finetune_of_a_simclrv2_run_starts_from_projector_layer_1(labelled_npz, tmp_path):
    method = tiny_run(tmp_path / "v2", "simclrv2", proj_dim=8)
    trained = _trained(tmp_path / "v2", "auto", False, None)  # what evaluate fine-tunes
    assert trained.projector_layers == 1 and trained.network.feature_dim == 32
    torch.testing.assert_close(trained.network.projector[0][0].weight, method.projector[0].weight)
    default = fast(tmp_path / "v2", labelled_npz)
    assert default.record["chosen"]["from_projector_layer"] == 1
    alone = fast(tmp_path / "v2", labelled_npz, from_projector_layer=0)
    assert alone.record["chosen"]["from_projector_layer"] == 0
    # the same backbone (the checkpoint's = the export's) whichever network is fine-tuned
    assert default.record["backbone"] == alone.record["backbone"]
    with pytest.raises(ValueError, match=r"it has 2 such layer\(s\)"):
        fast(tmp_path / "v2", labelled_npz, from_projector_layer=3)
    tiny_run(tmp_path / "v1", "simclr", proj_hidden_dim=16, proj_dim=8)
    assert fast(tmp_path / "v1", labelled_npz).record["chosen"]["from_projector_layer"] == 0


def test_cli_option_and_an_export_without_checkpoint(labelled_npz, tmp_path, capsys):
    train, val = labelled_npz
    tiny_run(tmp_path / "v2", "simclrv2", proj_dim=8)
    argv = ["eval", "finetune", str(tmp_path / "v2"), "--data", str(train), "--test-data",
            str(val), "--epochs", "1", "--min-steps", "2"]  # fmt: skip
    argv += ["--from-projector-layer", "2"]
    assert main(argv) == 0
    written = json.loads((tmp_path / "v2" / "eval_finetune_train.npz_val.npz.json").read_text())
    assert written["chosen"]["from_projector_layer"] == 2
    capsys.readouterr()

    export = tmp_path / "export"  # the backbone files alone, away from the run
    export.mkdir()
    for name in ("backbone.safetensors", "backbone.json"):
        shutil.copy(tmp_path / "v2" / name, export / name)
    with pytest.raises(FileNotFoundError, match="simclrv2 fine-tunes from projector layer 1 by "
                       "default .* holds no checkpoints/best.ckpt or last.ckpt.*"
                       r"--from-projector-layer 0"):  # fmt: skip
        fast(export, labelled_npz)
    chosen = fast(export, labelled_npz, from_projector_layer=0).record["chosen"]
    assert chosen["from_projector_layer"] == 0
    with pytest.raises(ValueError, match="a loaded backbone has no projector"):
        fast(selfsup.load_backbone(export), labelled_npz)
