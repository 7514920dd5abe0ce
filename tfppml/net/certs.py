"""Certificates for a cluster: one CA and a key + certificate per identity (party, model owner, client, ...).

Every connection in a tfppml cluster is mutual TLS: both ends present a certificate signed by the cluster's CA,
and the certificate's common name is the identity a server sees (`caller` in a service's `handle`). A party's
certificate also carries its name as a DNS subject alternative name, so a client can insist that the process it
reached really is `server1` and not another member of the cluster (see `tfppml.net.transport`).

Files written to the output directory:

    ca.crt            the CA certificate (share it with everyone)
    ca.key            the CA key (mode 0600; keep it to add identities later, or delete it)
    NAME.crt          the identity's certificate (CN = NAME; SANs NAME, localhost, 127.0.0.1)
    NAME.key          the identity's private key (mode 0600; give it to that identity only)

Example:
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> written = generate_certificates(out, ["server0", "server1", "server2", "client"])
    >>> Identity.load(out, "server1").name
    'server1'
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA_CERT", "CA_KEY", "Identity", "check_identity_name", "generate_certificates", "party_names"]

CA_CERT = "ca.crt"
CA_KEY = "ca.key"

# Identity names become file names, certificate CNs and DNS SANs: keep them to what all three accept.
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
_DEFAULT_VALID_DAYS = 825


def check_identity_name(name: object, *, arg: str = "name") -> str:
    """Returns `name` if it is a valid identity name, else raises.

    Args:
      name: Candidate name: a letter followed by up to 62 letters, digits, '_' or '-'.
      arg: The argument name to use in the error message.

    Returns:
      The name.

    Raises:
      TypeError: `name` is not a str.
      ValueError: `name` does not match the pattern.
    """
    if not isinstance(name, str):
        raise TypeError(f"`{arg}` must be a str, got {type(name).__name__}")
    if not _NAME_RE.match(name):
        raise ValueError(
            f"`{arg}` must start with a letter and hold only letters, digits, '_' or '-' (at most 63 "
            f"characters), got {name!r}"
        )
    return name


def party_names(count: int) -> list[str]:
    """The default party names: server0 ... server{count-1}.

    Raises:
      ValueError: `count` is negative.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"`count` must be a non-negative int, got {count!r}")
    return [f"server{index}" for index in range(count)]


@dataclass(frozen=True)
class Identity:
    """One identity's TLS material, in PEM form.

    Attributes:
      name: The identity (the certificate's common name).
      key_pem: Its private key.
      cert_pem: Its certificate.
      ca_pem: The cluster CA certificate that peers must be signed by.
    """

    name: str
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes

    def __repr__(self) -> str:  # never print the key
        return f"Identity(name={self.name!r})"

    @classmethod
    def load(cls, cert_dir: str | os.PathLike[str], name: str) -> Identity:
        """Reads `NAME.key`, `NAME.crt` and `ca.crt` from `cert_dir`.

        Raises:
          ValueError: A file is missing (the message names it and the command that writes it), or the
            certificate's common name is not `name`.
        """
        check_identity_name(name)
        directory = Path(cert_dir)
        paths = {
            "key": directory / f"{name}.key",
            "cert": directory / f"{name}.crt",
            "ca": directory / CA_CERT,
        }
        missing = [str(path) for path in paths.values() if not path.is_file()]
        if missing:
            raise ValueError(
                f"no TLS material for identity {name!r}: missing {', '.join(missing)} (create it with "
                f"`tfppml cluster keys --out {directory} --parties 0 --names {name}`)"
            )
        data = {kind: path.read_bytes() for kind, path in paths.items()}
        try:
            cert = x509.load_pem_x509_certificate(data["cert"])
        except ValueError as err:
            raise ValueError(f"{paths['cert']} is not a PEM certificate: {err}") from None
        common_names = [attr.value for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if common_names != [name]:
            raise ValueError(f"{paths['cert']} is for common name {common_names}, not {name!r}")
        return cls(name=name, key_pem=data["key"], cert_pem=data["cert"], ca_pem=data["ca"])


def generate_certificates(
    out_dir: str | os.PathLike[str],
    names: Sequence[str],
    *,
    overwrite: bool = False,
    valid_days: int = _DEFAULT_VALID_DAYS,
) -> list[Path]:
    """Writes a CA (or reuses the one in `out_dir`) and a key + certificate for each name.

    Keys are ECDSA P-256. Key files are created with mode 0600 (never readable by others, not even briefly).

    Args:
      out_dir: Directory to write to (created if missing).
      names: Identity names (see `check_identity_name`), e.g. `party_names(3) + ["model_owner", "client"]`.
      overwrite: Replace existing identity files instead of refusing.
      valid_days: Certificate lifetime in days.

    Returns:
      The paths written, CA files first when a CA was created.

    Raises:
      ValueError: A name is invalid or repeated, `names` is empty, an identity already has files and
        `overwrite` is False, or `out_dir` holds a CA certificate without its key.
    """
    names = list(names)
    if not names:
        raise ValueError("`names` must list at least one identity")
    for index, name in enumerate(names):
        check_identity_name(name, arg=f"names[{index}]")
    if len(set(names)) != len(names):
        raise ValueError(f"`names` repeats an identity: {names}")
    if isinstance(valid_days, bool) or not isinstance(valid_days, int) or valid_days < 1:
        raise ValueError(f"`valid_days` must be a positive int, got {valid_days!r}")
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    existing = [
        name for name in names if (directory / f"{name}.key").exists() or (directory / f"{name}.crt").exists()
    ]
    if existing and not overwrite:
        raise ValueError(
            f"{directory} already holds keys for {existing}; pass overwrite=True (--force) to replace them"
        )

    written: list[Path] = []
    ca_cert_path, ca_key_path = directory / CA_CERT, directory / CA_KEY
    if ca_cert_path.exists() or ca_key_path.exists():
        if not (ca_cert_path.exists() and ca_key_path.exists()):
            raise ValueError(
                f"{directory} holds only one of {CA_CERT} and {CA_KEY}; both are needed to add identities"
            )
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _make_ca(ca_key, valid_days)
        _write(ca_key_path, _key_pem(ca_key), private=True)
        _write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
        written += [ca_cert_path, ca_key_path]

    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _make_leaf(name, key, ca_key, ca_cert, valid_days)
        _write(directory / f"{name}.key", _key_pem(key), private=True)
        _write(directory / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM), private=False)
        written += [directory / f"{name}.crt", directory / f"{name}.key"]
    return written


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, *, private: bool) -> None:
    mode = 0o600 if private else 0o644
    if path.exists():
        path.unlink()
    # os.open with the mode: a key file is never, even for a moment, readable by anyone else.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # the umask may have cleared bits of a 0644 certificate; set exactly


def _validity(valid_days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.timezone.utc)
    # Back-date a little so that peers whose clocks lag slightly still accept a fresh certificate.
    return now - datetime.timedelta(hours=1), now + datetime.timedelta(days=valid_days)


def _make_ca(key: ec.EllipticCurvePrivateKey, valid_days: int) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tfppml cluster CA")])
    not_before, not_after = _validity(valid_days)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _make_leaf(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    valid_days: int,
) -> x509.Certificate:
    not_before, not_after = _validity(valid_days)
    sans = [x509.DNSName(name), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        # Every identity both serves (workers) and dials (peers, drivers): allow both uses.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
