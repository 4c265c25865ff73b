"""A small test PKI made with the `cryptography` package (never with provgate's code).

usage:
  x509_pki.py ca OUT_DIR NAME
      NAME.pem/.key: a root CA; NAME-int.pem/.key: an intermediate CA under it.
  x509_pki.py leaf OUT_DIR CA_NAME LEAF_NAME IDENTITY [expired]
      LEAF_NAME.pem/.key: an EC P-256 leaf issued by CA_NAME's intermediate, with IDENTITY as
      its SAN (spiffe://... or any URI, email:ADDR, dns:NAME), key usage digitalSignature and
      extended key usage codeSigning; `expired`: valid from 10 days ago to yesterday.
      LEAF_NAME-chain.pem: the leaf then the intermediate.
"""
import datetime
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)


def write_key(path: Path, key) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def ca_cert(subject, issuer, key, issuer_key, path_length):
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=30))
            .not_valid_after(NOW + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(issuer_key, hashes.SHA256()))


def make_ca(out: Path, ca: str) -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = ca_cert(name(f"{ca} root"), name(f"{ca} root"), root_key, root_key, 1)
    int_key = ec.generate_private_key(ec.SECP256R1())
    inter = ca_cert(name(f"{ca} intermediate"), root.subject, int_key, root_key, 0)
    (out / f"{ca}.pem").write_bytes(pem(root))
    write_key(out / f"{ca}.key", root_key)
    (out / f"{ca}-int.pem").write_bytes(pem(inter))
    write_key(out / f"{ca}-int.key", int_key)


def san(identity: str) -> x509.GeneralName:
    if identity.startswith("email:"):
        return x509.RFC822Name(identity[len("email:"):])
    if identity.startswith("dns:"):
        return x509.DNSName(identity[len("dns:"):])
    return x509.UniformResourceIdentifier(identity)


def make_leaf(out: Path, ca: str, leaf: str, identity: str, expired: bool) -> None:
    inter = x509.load_pem_x509_certificate((out / f"{ca}-int.pem").read_bytes())
    int_key = serialization.load_pem_private_key((out / f"{ca}-int.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    if expired:
        before, after = NOW - datetime.timedelta(days=10), NOW - datetime.timedelta(days=1)
    else:
        before, after = NOW - datetime.timedelta(days=1), NOW + datetime.timedelta(days=365)
    cert = (x509.CertificateBuilder()
            .subject_name(name(leaf)).issuer_name(inter.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(before).not_valid_after(after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([san(identity)]), critical=False)
            .sign(int_key, hashes.SHA256()))
    (out / f"{leaf}.pem").write_bytes(pem(cert))
    write_key(out / f"{leaf}.key", key)
    (out / f"{leaf}-chain.pem").write_bytes(pem(cert) + pem(inter))


def main() -> None:
    cmd, out = sys.argv[1], Path(sys.argv[2])
    if cmd == "ca":
        make_ca(out, sys.argv[3])
    elif cmd == "leaf":
        make_leaf(out, sys.argv[3], sys.argv[4], sys.argv[5],
                  len(sys.argv) > 6 and sys.argv[6] == "expired")
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
