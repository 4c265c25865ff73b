"""Mints a co-signed approval record with PyJWT, as a release pipeline would: the model
owner and the security reviewer each sign the same payload bytes with their own key, and the
signatures are put together in the JWS JSON General Serialization (RFC 7515 section 7.2.1),
on one line. Keys provgate never saw.

usage: pyjwt_cosign.py OUT_DIR DIGEST MODEL WORKLOAD CALLER

Writes approvers.jwks.json (kids py-owner, py-security), record-cosigned.jws (both
signatures) and record-owner.jwt (the owner's compact record alone).
"""
import json
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm
from jwt.api_jws import PyJWS


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
        "jti": "py-cosigned",
        "iat": now - 5,
        "nbf": now - 5,
        "exp": now + 3600,
        "version_id": "py-cosigned-v1",
        "artefact": {"digest": digest},
        "evidence": [{"kind": "security-test", "uri": "https://ci/1", "verdict": "pass"}],
        "tier": "internal",
        "workloads": [workload],
        "callers": [caller],
    }
    # One payload, byte for byte, under every signature.
    payload = json.dumps(record, separators=(",", ":")).encode()
    jws = PyJWS()
    signatures = []
    for key, alg, kid in [(owner, "ES256", "py-owner"), (security, "EdDSA", "py-security")]:
        compact = jws.encode(payload, key, algorithm=alg,
                             headers={"typ": "approval+jwt", "kid": kid})
        protected, body, signature = compact.split(".")
        signatures.append({"protected": protected, "signature": signature})
        if kid == "py-owner":
            (out / "record-owner.jwt").write_text(compact)
    assert len({s["protected"] for s in signatures}) == 2
    general = {"payload": body, "signatures": signatures}
    (out / "record-cosigned.jws").write_text(json.dumps(general, separators=(",", ":")))


if __name__ == "__main__":
    main()
