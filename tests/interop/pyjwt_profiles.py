"""Mints a SPIFFE trust bundle and JWT-SVIDs, and a Kubernetes issuer's JWKS and projected
service-account tokens, with PyJWT and `cryptography` (not provgate's JOSE code).

usage: pyjwt_profiles.py OUT_DIR SPIFFE_ISSUER K8S_ISSUER
"""
import json
import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


def main() -> None:
    out, spiffe_iss, k8s_iss = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    now = int(time.time())

    # SPIFFE: a trust bundle in the SPIFFE format (keys with use "jwt-svid").
    es = ec.generate_private_key(ec.SECP256R1())
    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = []
    for alg_cls, key, kid in [(ECAlgorithm, es, "svid-ec"), (RSAAlgorithm, rs, "svid-rsa")]:
        jwk = json.loads(alg_cls.to_jwk(key.public_key()))
        jwk.update({"kid": kid, "use": "jwt-svid"})
        keys.append(jwk)
    (out / "spiffe-bundle.json").write_text(json.dumps(
        {"spiffe_sequence": 7, "spiffe_refresh_hint": 300, "keys": keys}))
    svid = {"iss": spiffe_iss, "aud": ["provgate"], "exp": now + 600, "iat": now}
    for name, key, alg, kid, sub in [
        ("svid-es256", es, "ES256", "svid-ec", "spiffe://example.org/ns/app/sa/client"),
        ("svid-rs256", rs, "RS256", "svid-rsa", "spiffe://example.org/ns/app/sa/client"),
        ("svid-other-domain", es, "ES256", "svid-ec", "spiffe://evil.org/ns/app/sa/client"),
    ]:
        token = jwt.encode(dict(svid, sub=sub), key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})
        (out / f"{name}.txt").write_text(token)

    # Kubernetes: an API server's service-account issuer (RS256).
    k8s = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(k8s.public_key()))
    jwk.update({"kid": "sa-key-1", "use": "sig", "alg": "RS256"})
    (out / "k8s.jwks.json").write_text(json.dumps({"keys": [jwk]}))
    for name, ns in [("k8s-rs256", "ml"), ("k8s-mismatch", "prod")]:
        claims = {
            "iss": k8s_iss, "sub": "system:serviceaccount:ml:batch", "aud": ["provgate"],
            "exp": now + 600, "iat": now, "nbf": now, "jti": f"{name}-jti",
            "kubernetes.io": {
                "namespace": ns,
                "serviceaccount": {"name": "batch", "uid": "3c2f1a0e-0000-4000-8000-000000000001"},
                "pod": {"name": "batch-5f7c9", "uid": "3c2f1a0e-0000-4000-8000-000000000002"},
                "node": {"name": "node-a", "uid": "3c2f1a0e-0000-4000-8000-000000000003"},
            },
        }
        token = jwt.encode(claims, k8s, algorithm="RS256", headers={"kid": "sa-key-1"})
        (out / f"{name}.txt").write_text(token)


if __name__ == "__main__":
    main()
