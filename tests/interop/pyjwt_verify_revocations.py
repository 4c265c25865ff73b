"""Verifies a revocation list (`provgate revoke`) with PyJWT, an implementation independent of
provgate's, against a JWKS: the header's `typ` and `kid`, the signature with the key of that
`kid`, and the payload's shape. Prints the payload as JSON; exits non-zero on any failure.

usage: pyjwt_verify_revocations.py LIST.jws JWKS.json
"""
import json
import sys

import jwt


def main() -> None:
    token = open(sys.argv[1]).read().strip()
    jwks = json.load(open(sys.argv[2]))
    header = jwt.get_unverified_header(token)
    if header.get("typ") != "revocations+jwt":
        sys.exit(f"typ is {header.get('typ')!r}")
    if header.get("alg") not in ("ES256", "ES384", "EdDSA"):
        sys.exit(f"alg is {header.get('alg')!r}")
    keys = [k for k in jwks["keys"] if k.get("kid") == header.get("kid")]
    if len(keys) != 1:
        sys.exit(f"no single key with kid {header.get('kid')!r}")
    key = jwt.PyJWK(keys[0], algorithm=header["alg"])
    payload = jwt.decode(
        token,
        key,
        algorithms=[header["alg"]],
        options={"require": ["iss", "iat"], "verify_aud": False},
    )
    if not isinstance(payload.get("revoked"), list) or not all(
        isinstance(j, str) for j in payload["revoked"]
    ):
        sys.exit("revoked is not a list of strings")
    print(json.dumps({"header": header, "payload": payload}))


if __name__ == "__main__":
    main()
