"""Mints an approval record and an exception with PyJWT, as a release pipeline would when
the security review is late: the model owner signs the record, the security approver signs
a time-boxed exception (JWS compact, typ exception+jwt) waiving the `security` quorum role
for that version and digest. Keys provgate never saw.

usage: pyjwt_exception.py OUT_DIR DIGEST MODEL WORKLOAD CALLER

Writes approvers.jwks.json (kids py-owner, py-security), record-owner.jwt and
exception-security.jwt (ID py-exception-1, valid one hour).
"""
import json
import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm


def jwk(algorithm_cls, public_key, kid, alg):
    key = json.loads(algorithm_cls.to_jwk(public_key))
    key.update({"kid": kid, "alg": alg, "use": "sig"})
    return key


def main() -> None:
    out, digest, model, workload, caller = sys.argv[1:6]
    out = Path(out)
    now = int(time.time())
    owner = ec.generate_private_key(ec.SECP256R1())
    security = ed25519.Ed25519PrivateKey.generate()
    (out / "approvers.jwks.json").write_text(json.dumps({"keys": [
        jwk(ECAlgorithm, owner.public_key(), "py-owner", "ES256"),
        jwk(OKPAlgorithm, security.public_key(), "py-security", "EdDSA"),
    ]}))
    record = {
        "iss": "release-pipeline@example.org",
        "sub": model,
        "jti": "py-record",
        "iat": now - 5,
        "nbf": now - 5,
        "exp": now + 3600,
        "version_id": "py-x-v1",
        "artefact": {"digest": digest},
        "evidence": [{"kind": "security-test", "uri": "https://ci/1", "verdict": "pass"}],
        "tier": "internal",
        "workloads": [workload],
        "callers": [caller],
    }
    (out / "record-owner.jwt").write_text(jwt.encode(
        record, owner, algorithm="ES256", headers={"typ": "approval+jwt", "kid": "py-owner"}))
    exception = {
        "iss": "security-review@example.org",
        "sub": model,
        "jti": "py-exception-1",
        "iat": now - 5,
        "nbf": now - 5,
        "exp": now + 3600,
        "version_id": "py-x-v1",
        "artefact": {"digest": digest},
        "waives": {"role": "security"},
        "reason": "pen test scheduled; ship behind the flag until then",
        "ticket": "https://tickets.example.org/SEC-7",
    }
    (out / "exception-security.jwt").write_text(jwt.encode(
        exception, security, algorithm="EdDSA",
        headers={"typ": "exception+jwt", "kid": "py-security"}))


if __name__ == "__main__":
    main()
