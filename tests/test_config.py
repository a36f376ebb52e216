import pytest

from selfsup.config import PretrainConfig, apply_overrides, resolve_config


def test_defaults_file_explicit_overrides_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("method: simclr\nepochs: 3\nlr: 0.5\n")
    cfg = resolve_config(f, ["epochs=7", "method_kwargs.temperature=0.2"], lr=0.1, method=None)
    assert cfg.method == "simclr"  # explicit None does not override the file
    assert cfg.lr == 0.1 and cfg.epochs == 7
    assert cfg.method_kwargs == {"temperature": 0.2}
    assert cfg.backbone == PretrainConfig().backbone


def test_unknown_key_and_bad_override_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epohcs: 3\n")
    with pytest.raises(ValueError, match="unknown key.*epohcs"):
        resolve_config(f)
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["epochs"])
    with pytest.raises(ValueError, match="does not exist"):
        resolve_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="mapping"):
        resolve_config(tmp_path / "list.yaml")


def test_round_trip():
    cfg = PretrainConfig(epochs=2, knn_k=[5])
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg
