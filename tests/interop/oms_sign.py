"""Signs a model directory with the reference OpenSSF Model Signing tool (key method,
a fresh local EC P-256 key, no network) and prints the root digest it recorded.

usage: oms_sign.py MODEL_DIR SIGNATURE_PATH
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
