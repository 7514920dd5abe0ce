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


def test_needs_noise_or_target():
    with pytest.raises(SystemExit):
        cli.main(BASE)


def test_bad_value_is_a_clear_error(capsys):
    assert cli.main(["privacy", "--n", "10", "--batch-size", "256", "--epochs", "1", "--delta", "1e-5",
                     "--noise-multiplier", "1"]) == 2
    assert "batch_size must be <= n" in capsys.readouterr().out
