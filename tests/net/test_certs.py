"""Certificates: CA and identities, file modes, names, reuse of the CA, and `tfppml cluster keys`."""

import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tfppml.cli import main
from tfppml.net.certs import Identity, check_identity_name, generate_certificates, party_names


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_generates_ca_and_identities_with_private_keys(tmp_path):
    written = generate_certificates(tmp_path, ["server0", "client"])
    assert {p.name for p in written} == {
        "ca.crt",
        "ca.key",
        "server0.crt",
        "server0.key",
        "client.crt",
        "client.key",
    }
    for key in tmp_path.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ca = _cert(tmp_path / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf = _cert(tmp_path / "server0.crt")
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "server0"
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"server0", "localhost"}
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_reuses_existing_ca_and_refuses_to_overwrite(tmp_path):
    generate_certificates(tmp_path, ["server0"])
    ca_before = (tmp_path / "ca.crt").read_bytes()
    written = generate_certificates(tmp_path, ["client"])
    assert [p.name for p in written] == ["client.crt", "client.key"]
    assert (tmp_path / "ca.crt").read_bytes() == ca_before
    _cert(tmp_path / "client.crt").verify_directly_issued_by(_cert(tmp_path / "ca.crt"))
    with pytest.raises(ValueError, match=r"already holds keys for \['client'\]"):
        generate_certificates(tmp_path, ["client"])
    old = (tmp_path / "client.key").read_bytes()
    generate_certificates(tmp_path, ["client"], overwrite=True)
    assert (tmp_path / "client.key").read_bytes() != old


def test_identity_load_and_errors(tmp_path):
    generate_certificates(tmp_path, ["server1"])
    identity = Identity.load(tmp_path, "server1")
    assert identity.name == "server1" and b"PRIVATE KEY" in identity.key_pem
    assert "PRIVATE" not in repr(identity)
    with pytest.raises(ValueError, match="no TLS material for identity 'nobody'.*tfppml cluster keys"):
        Identity.load(tmp_path, "nobody")
    (tmp_path / "other.key").write_bytes(identity.key_pem)
    (tmp_path / "other.crt").write_bytes(identity.cert_pem)
    with pytest.raises(ValueError, match=r"common name \['server1'\], not 'other'"):
        Identity.load(tmp_path, "other")


@pytest.mark.parametrize("name", ["", "0server", "a b", "a/b", "x" * 64, "é"])
def test_bad_identity_names(name, tmp_path):
    with pytest.raises(ValueError, match="names\\[0\\]"):
        generate_certificates(tmp_path, [name])
    with pytest.raises(ValueError):
        check_identity_name(name)


def test_duplicate_and_empty_names(tmp_path):
    with pytest.raises(ValueError, match="repeats"):
        generate_certificates(tmp_path, ["a", "a"])
    with pytest.raises(ValueError, match="at least one"):
        generate_certificates(tmp_path, [])
    assert party_names(3) == ["server0", "server1", "server2"]


def test_cli_cluster_keys(tmp_path, capsys):
    out = tmp_path / "certs"
    assert (
        main(["cluster", "keys", "--parties", "3", "--names", "model_owner,client", "--out", str(out)]) == 0
    )
    names = {p.name for p in out.iterdir()}
    for identity in ["server0", "server1", "server2", "model_owner", "client"]:
        assert {f"{identity}.key", f"{identity}.crt"} <= names
        assert isinstance(_cert(out / f"{identity}.crt").public_key(), ec.EllipticCurvePublicKey)
    assert stat.S_IMODE((out / "ca.key").stat().st_mode) == 0o600
    assert "server0.key" in capsys.readouterr().out
    # Adding an identity later reuses the CA; repeating one is refused without --force.
    assert main(["cluster", "keys", "--parties", "0", "--names", "client2", "--out", str(out)]) == 0
    assert main(["cluster", "keys", "--parties", "1", "--out", str(out)]) == 2
    assert "already holds keys" in capsys.readouterr().err
    assert main(["cluster", "keys", "--parties", "1", "--out", str(out), "--force"]) == 0
