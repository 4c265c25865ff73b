"""Mints approval records and caller tokens with PyJWT and `cryptography`, an implementation
independent of provgate's, with keys provgate never saw.

usage: pyjwt_mint.py OUT_DIR DIGEST MODEL WORKLOAD CALLER ISSUER

Writes approvers.jwks.json (ES256 + EdDSA keys), issuer.jwks.json (RS256, PS256, ES256
keys), record-es256.jwt, record-eddsa.jwt and token-{rs256,ps256,es256}.txt.
"""
import json
import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, RSAPSSAlgorithm


def jwk(algorithm_cls, public_key, kid, alg):
    key = json.loads(algorithm_cls.to_jwk(public_key))
    key.update({"kid": kid, "alg": alg, "use": "sig"})
    return key


def main() -> None:
    out, digest, model, workload, caller, issuer = sys.argv[1:7]
    out = Path(out)
    now = int(time.time())

    es = ec.generate_private_key(ec.SECP256R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    (out / "approvers.jwks.json").write_text(json.dumps({"keys": [
        jwk(ECAlgorithm, es.public_key(), "py-es256", "ES256"),
        jwk(OKPAlgorithm, ed.public_key(), "py-ed25519", "EdDSA"),
    ]}))

    record = {
        "iss": "release-bot@example.org",
        "sub": model,
        "jti": "py-record",
        "iat": now - 5,
        "nbf": now - 5,
        "exp": now + 3600,
        "version_id": "py-v1",
        "artefact": {"digest": digest},
        "lineage": {"training_data": "sha256:" + "1" * 64, "code_revision": "deadbeef",
                    "parent_version": "py-v0"},
        "evidence": [{"kind": "security-test", "uri": "https://ci/1", "digest": "sha256:" + "2" * 64,
                      "verdict": "pass"}],
        "approvals": [{"who": "alice@example.org", "role": "ml-lead", "at": now - 5}],
        "tier": "internal",
        "workloads": [workload],
        "callers": [caller],
    }
    for name, key, alg, kid in [("es256", es, "ES256", "py-es256"),
                                ("eddsa", ed, "EdDSA", "py-ed25519")]:
        body = dict(record, version_id=f"py-{name}")
        token = jwt.encode(body, key, algorithm=alg, headers={"typ": "approval+jwt", "kid": kid})
        (out / f"record-{name}.jwt").write_text(token)

    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ps = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ct = ec.generate_private_key(ec.SECP256R1())
    (out / "issuer.jwks.json").write_text(json.dumps({"keys": [
        jwk(RSAAlgorithm, rs.public_key(), "py-rs256", "RS256"),
        jwk(RSAPSSAlgorithm, ps.public_key(), "py-ps256", "PS256"),
        jwk(ECAlgorithm, ct.public_key(), "py-caller-es256", "ES256"),
    ]}))
    claims = {"iss": issuer, "sub": caller, "aud": ["provgate"], "iat": now, "nbf": now,
              "exp": now + 600, "jti": "t-1"}
    for name, key, alg, kid in [("rs256", rs, "RS256", "py-rs256"),
                                ("ps256", ps, "PS256", "py-ps256"),
                                ("es256", ct, "ES256", "py-caller-es256")]:
        token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})
        (out / f"token-{name}.txt").write_text(token)


if __name__ == "__main__":
    main()
