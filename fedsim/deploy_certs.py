"""TLS certificates for a test deployment: a self-signed CA and a SuperLink certificate it signs
(`fedsim-deploy certificates <dir> --host <name or ip> ...`). For production use your own CA.

The certificate always names 127.0.0.1 and localhost besides the given hosts: the SuperLink's own
helpers (its SuperExec, which starts each run's ServerApp) reach its APIs over the loopback
address with TLS, so a certificate for the machine's network address alone leaves every run
pending (the SuperExec dies on `certificate is not valid for '127.0.0.1'`). A certificate from
your own CA needs those names too."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

__all__ = ["LOOPBACK", "make_certificates"]

LOOPBACK = ("127.0.0.1", "localhost")  # the SuperLink's own helpers connect to it here


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _ca_usage():
    from cryptography import x509

    flags = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement"), False
    )
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
        **flags,
    )


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_certificates(
    directory: str | Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"), days: int = 365
) -> dict[str, Path]:
    """Write `ca.pem`, `server.pem` and `server.key` to `directory` (the CA's key is not kept):
    the server certificate is valid for each of `hosts` (IP addresses or DNS names) and for
    `LOOPBACK` (see the module docstring). Returns the three paths by name ("ca", "certfile",
    "keyfile")."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not hosts:
        raise ValueError("make_certificates needs at least one host name or IP address")
    hosts = list(dict.fromkeys([*hosts, *LOOPBACK]))  # in order, each once
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("fedsim test CA"))
        .issuer_name(_name("fedsim test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": out / "ca.pem", "certfile": out / "server.pem", "keyfile": out / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["certfile"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["keyfile"].write_bytes(_pem_key(key))
    paths["keyfile"].chmod(0o600)
    return paths
