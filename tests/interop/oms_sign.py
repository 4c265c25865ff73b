"""Signs a model directory with the reference OpenSSF Model Signing tool (key method,
a fresh local EC P-256 key, no network) and prints the root digest it recorded.

usage: oms_sign.py MODEL_DIR SIGNATURE_PATH [shards SHARD_SIZE]

Without `shards`, through the command line (`model_signing sign key`, "files"
serialization). With it, through the library's `use_shard_serialization`, which the 1.1.1
command line does not expose; a signature path inside MODEL_DIR is left out of the manifest
as the command line would.
"""
import base64
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def main() -> None:
    model, sig = Path(sys.argv[1]), Path(sys.argv[2])
    shards = sys.argv[3:5]
    with tempfile.TemporaryDirectory() as tmp:
        key = ec.generate_private_key(ec.SECP256R1())
        priv = Path(tmp, "ec.key")
        priv.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        if shards:
            from model_signing import hashing, signing

            method, size = shards
            assert method == "shards", f"unknown serialization {method}"
            ignored = []
            if sig.resolve().is_relative_to(model.resolve()):
                ignored.append(sig.resolve().relative_to(model.resolve()))
            config = (hashing.Config()
                      .set_ignored_paths(paths=ignored, ignore_git_paths=True)
                      .use_shard_serialization(shard_size=int(size)))
            (signing.Config()
                .use_elliptic_key_signer(private_key=priv)
                .set_hashing_config(config)
                .sign(model, sig))
        else:
            subprocess.run(
                [sys.executable, "-m", "model_signing", "sign", "key", str(model),
                 "--private_key", str(priv), "--signature", str(sig)],
                check=True, stdout=subprocess.DEVNULL,
            )
    bundle = json.loads(sig.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    print("sha256:" + statement["subject"][0]["digest"]["sha256"])


if __name__ == "__main__":
    main()
