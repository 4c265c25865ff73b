"""Signs a model in place (DIR/model.sig, or FILE.sig beside a single-file model) with the
reference model_signing library, key method, using a fresh EC key; writes the public key PEM.

usage: oms_sign_key.py MODEL_DIR PUBLIC_KEY_OUT CURVE(p256|p384) METHOD(files|shards) [SHARD_SIZE]
"""
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from model_signing import hashing, signing


def main() -> None:
    model, pub_out, curve, method = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    key = ec.generate_private_key(ec.SECP256R1() if curve == "p256" else ec.SECP384R1())
    pub_out.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with tempfile.TemporaryDirectory() as tmp:
        priv = Path(tmp, "signer.key")
        priv.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        config = hashing.Config().set_ignored_paths(paths=["model.sig"], ignore_git_paths=True)
        if method == "shards":
            config = config.use_shard_serialization(shard_size=int(sys.argv[5]))
        (signing.Config()
            .use_elliptic_key_signer(private_key=priv)
            .set_hashing_config(config)
            .sign(model, model / "model.sig" if model.is_dir()
                  else model.with_name(model.name + ".sig")))


if __name__ == "__main__":
    main()
