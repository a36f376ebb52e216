"""The MAE speed script: every row timed, the table printed, bad options refused."""

import pytest
from conftest import load_benchmark


def test_every_row_is_timed_in_every_round(capsys):
    pytest.importorskip("lightly")
    bench = load_benchmark("mae_speed")
    seconds = bench.main([
        "--depth", "1", "--batch", "4", "--image-size", "16", "--channels", "2",
        "--rounds", "2", "--steps", "1", "--warmup", "0",
    ])  # fmt: skip
    assert list(seconds) == list(bench.ROWS)
    assert all(len(values) == 2 and min(values) > 0 for values in seconds.values())
    printed = capsys.readouterr().out
    assert "patch 2: 1 + 64 tokens, 1 + 16 visible at mask ratio 0.75" in printed
    for row in bench.ROWS:
        assert f"| {row} | " in printed
    assert "| encoder, all tokens |" in printed and "1.00x |" in printed


def test_bad_options_are_named(capsys):
    bench = load_benchmark("mae_speed")
    for argv, message in [
        (["--mask-ratio", "1"], "--mask-ratio must be in (0, 1)"),
        (["--batch", "0"], "--batch must be >= 1"),
    ]:
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert message in capsys.readouterr().err
