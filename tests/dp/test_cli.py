"""`tfppml privacy` prints the statement or the calibrated noise."""

import pytest

from tfppml import cli

BASE = ["privacy", "--n", "60000", "--batch-size", "256", "--epochs", "60", "--delta", "1e-5"]


def test_statement(capsys):
    assert cli.main(BASE + ["--noise-multiplier", "1.1"]) == 0
    out = capsys.readouterr().out
    assert "2.597" in out and "56.950" in out and "add-or-remove-one" in out


@pytest.mark.parametrize("sampling, expected", [("poisson", "1.014"), ("shuffle", None)])
def test_calibration(capsys, sampling, expected):
    assert cli.main(BASE + ["--target-epsilon", "3", "--sampling", sampling]) == 0
    out = capsys.readouterr().out
    assert out.startswith("noise multiplier ") and "<= 3" in out
    if expected:
        assert expected in out


def test_default_sampling_is_poisson_and_shuffled_is_said(capsys):
    # Issue #19: for epsilon 3.01 the CLI calibrated 11.53 (shuffled) by default but 1.01 with --sampling poisson.
    assert cli.main(BASE + ["--target-epsilon", "3.01"]) == 0
    default = capsys.readouterr().out
    assert cli.main(BASE + ["--target-epsilon", "3.01", "--sampling", "poisson"]) == 0
    assert capsys.readouterr().out == default
    assert default.startswith("noise multiplier 1.012") and "Poisson sampling (tfppml.dp.poisson_sample)" in default
    assert cli.main(BASE + ["--target-epsilon", "3.01", "--sampling", "shuffle"]) == 0
    shuffled = capsys.readouterr().out
    assert shuffled.startswith("noise multiplier 11.53") and "shuffled batches (no amplification)" in shuffled


@pytest.mark.parametrize("flag, value", [("--noise-multiplier", "inf"), ("--epochs", "inf"), ("--delta", "nan"),
                                         ("--target-epsilon", "inf")])
def test_non_finite_values_are_clear_errors(capsys, flag, value):
    args = {"--n": "60000", "--batch-size": "256", "--epochs": "60", "--delta": "1e-5"} | {flag: value}
    if flag != "--target-epsilon":
        args.setdefault("--noise-multiplier", "1.1")
    argv = ["privacy"] + [item for pair in args.items() for item in pair]
    assert cli.main(argv) == 2
    assert "must be a finite real number" in capsys.readouterr().out


def test_needs_noise_or_target():
    with pytest.raises(SystemExit):
        cli.main(BASE)


def test_bad_value_is_a_clear_error(capsys):
    assert cli.main(["privacy", "--n", "10", "--batch-size", "256", "--epochs", "1", "--delta", "1e-5",
                     "--noise-multiplier", "1"]) == 2
    assert "batch_size must be <= n" in capsys.readouterr().out
