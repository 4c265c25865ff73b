"""Mints an approval record with PyJWT whose header carries the signing key's certificate
chain as `x5c` (RFC 7515 4.1.6: base64 DER, leaf first), as a pipeline holding a key and a
certificate from its organisation's CA would. provgate never saw the key.

usage: pyjwt_x5c.py OUT_FILE DIGEST MODEL WORKLOAD CALLER LEAF_KEY CHAIN_PEM
"""
import base64
import sys
import time
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization


def main() -> None:
    out, digest, model, workload, caller, key_path, chain_path = sys.argv[1:8]
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
    chain = x509.load_pem_x509_certificates(Path(chain_path).read_bytes())
    x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain]
    now = int(time.time())
    record = {
        "iss": "release-pipeline@example.org",
        "sub": model,
        "jti": "py-x5c",
        "iat": now - 5,
        "nbf": now - 5,
        "exp": now + 3600,
        "version_id": "py-x5c-v1",
        "artefact": {"digest": digest},
        "tier": "internal",
        "workloads": [workload],
        "callers": [caller],
    }
    Path(out).write_text(jwt.encode(record, key, algorithm="ES256",
                                    headers={"typ": "approval+jwt", "x5c": x5c}))


if __name__ == "__main__":
    main()
