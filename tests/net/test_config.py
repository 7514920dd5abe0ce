"""cluster.json: loading, defaults, and validation errors that name the field."""

import json

import pytest

from tfppml.cli import main
from tfppml.net.config import ClusterConfig, load_config, parse_address


@pytest.fixture
def config_dir(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.crt").write_text("")
    return tmp_path


def _write(directory, **fields):
    base = {"parties": {"server0": "localhost:4000", "server1": "localhost:4001"}, "cert_dir": "certs"}
    base.update(fields)
    base = {k: v for k, v in base.items() if v is not ...}
    path = directory / "cluster.json"
    path.write_text(json.dumps(base))
    return path


def test_load_with_defaults_and_relative_cert_dir(config_dir):
    config = load_config(_write(config_dir))
    assert config.party_names == ("server0", "server1")
    assert config.address("server1") == "localhost:4001"
    assert config.cert_dir == (config_dir / "certs").resolve()
    assert config.timeout == 30.0
    assert config.max_message_bytes == 256 * 1024 * 1024


def test_save_and_load_round_trip(config_dir):
    config = ClusterConfig(
        {"server0": "127.0.0.1:5000"}, config_dir / "certs", timeout=2, max_message_bytes=4096
    )
    assert load_config(config.save(config_dir / "c.json")) == config


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"parties": {}}, "field 'parties'"),
        ({"parties": ["localhost:1"]}, "field 'parties'"),
        ({"parties": {"server0": "localhost"}}, r"field 'parties.server0'"),
        ({"parties": {"server0": "localhost:70000"}}, r"field 'parties.server0'"),
        ({"parties": {"server0": "localhost:0"}}, r"field 'parties.server0'"),
        ({"parties": {"server0": 4000}}, r"field 'parties.server0'"),
        ({"parties": {"bad name": "localhost:1"}}, "party name"),
        ({"parties": {"a": "localhost:1", "b": "localhost:1"}}, "share the address"),
        ({"timeout": 0}, "field 'timeout'"),
        ({"timeout": "30"}, "field 'timeout'"),
        ({"timeout": True}, "field 'timeout'"),
        ({"max_message_bytes": 10}, "field 'max_message_bytes'"),
        ({"max_message_bytes": 2**40}, "field 'max_message_bytes'"),
        ({"max_message_bytes": 1.5e6}, "field 'max_message_bytes'"),
        ({"cert_dir": "nowhere"}, "field 'cert_dir'.*no ca.crt"),
        ({"cert_dir": 3}, "field 'cert_dir'"),
        ({"cert_dir": ...}, "missing required field 'cert_dir'"),
        ({"parties": ...}, "missing required field 'parties'"),
        ({"timout": 3}, r"unknown field\(s\) \['timout'\]"),
    ],
)
def test_bad_fields_are_named(config_dir, fields, match):
    path = _write(config_dir, **fields)
    with pytest.raises(ValueError, match=match) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_unreadable_and_non_json(tmp_path):
    with pytest.raises(ValueError, match="cannot read cluster config"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="JSON object"):
        load_config(tmp_path / "list.json")


def test_address_and_party_checks():
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_address("localhost:0", allow_port_zero=True) == ("localhost", 0)
    config = ClusterConfig({"server0": "localhost:1"}, ".")
    with pytest.raises(
        ValueError, match=r"`name` must be one of the cluster's parties \['server0'\], got 'x'"
    ):
        config.address("x")
    assert config.replace(timeout=5).timeout == 5.0


def test_cli_cluster_config_writes_loadable_file(config_dir, capsys):
    out = config_dir / "cluster.json"
    assert main(["cluster", "config", "--parties", "3", "--base-port", "4100", "--cert-dir", str(config_dir / "certs"),
                 "--timeout", "5", "--out", str(out)]) == 0  # fmt: skip
    config = load_config(out)
    assert config.parties == {
        "server0": "localhost:4100",
        "server1": "localhost:4101",
        "server2": "localhost:4102",
    }
    assert config.timeout == 5.0
    assert json.loads(out.read_text())["cert_dir"] == "certs"
