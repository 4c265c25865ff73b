"""Writes the seed inputs of every fuzz target into fuzz/seeds/<target>/ from real inputs:
the demo keys, records and config in config/, tokens minted with the demo issuer key, an
OMS bundle written by the reference model_signing tool, and an audit log written by
`provgate audit generate`. Run from the repository root with the interop python
(scripts/setup.sh --python) and a built provgate:

    $PROVGATE_PYTHON fuzz/seed_corpus.py target/debug/provgate

The committed corpora (fuzz/corpus/<target>/) are these seeds after `cargo fuzz cmin`
and fuzzing; this script is kept so they can be rebuilt.
"""
import base64, glob, json, os, pathlib, shutil, subprocess, sys, tempfile

from cryptography.hazmat.primitives import serialization
from model_signing import hashing, signing

provgate = sys.argv[1]
out = pathlib.Path("fuzz/seeds")
n = 0


def seed(target, data, mode=None):
    global n
    if isinstance(data, str):
        data = data.encode()
    if mode is not None:
        data = bytes([mode]) + data
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    n += 1
    (d / f"seed-{n:03}").write_bytes(data)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


if out.exists():
    shutil.rmtree(out)

# --- tokens: minted by `provgate token` with the demo issuer key, each profile's subject.
issuer_jwks = json.load(open("config/keys/issuer.jwks.json"))
kid = issuer_jwks["keys"][0]["kid"]
for sub in ["spiffe://example.org/ns/app/sa/client", "system:serviceaccount:app:client", "client"]:
    tok = run(provgate, "token", "--key", "config/keys/issuer.demo.key",
              "--iss", "https://issuer.example.org", "--sub", sub, "--aud", "provgate", "--ttl", "87600h")
    for mode in (0, 2, 4):
        seed("token", "Bearer " + tok, mode)
    h, p, _ = tok.split(".")
    claims = json.loads(unb64(p))
    if sub.startswith("system:"):
        claims["kubernetes.io"] = {"namespace": "app", "serviceaccount": {"name": "client"}}
    for mode in (1, 3, 5):
        seed("token", unb64(h) + b"\0" + json.dumps(claims).encode(), mode)
seed("token", "Bearer " + b64(b'{"alg":"none"}') + "." + b64(b'{"iss":"x"}') + ".", 0)
seed("token", "Bearer " + b64(b'{"alg":"HS256","jku":"http://x"}') + "." + b64(b'{"iss":"https://issuer.example.org"}') + ".c2ln", 0)
seed("token", b'{"alg":"ES256","typ":"JWT","crit":["exp"]}\0{"iss":"https://issuer.example.org","sub":"a","aud":"provgate","exp":18446744073709551615}', 1)

# --- JWKS documents.
for f in glob.glob("config/keys/*.jwks.json"):
    seed("jwks", open(f).read())
seed("jwks", json.dumps({"keys": [
    {"kty": "RSA", "n": b64(b"\xc1" * 256), "e": "AQAB", "alg": "RS256", "kid": "r"},
    {"kty": "OKP", "crv": "Ed25519", "x": b64(b"\x01" * 32), "kid": "e"},
    {"kty": "EC", "crv": "P-384", "x": b64(b"\x02" * 48), "y": b64(b"\x03" * 48), "use": "enc"},
    {"kty": "oct", "k": "c2VjcmV0"},
    {"kty": "EC", "crv": "P-256", "d": "x", "x": "y", "y": "z"},
]}))
seed("jwks", "max-age=300, must-revalidate")

# --- approval records: the demo records, a co-signed one, and their claims to sign.
approver_kid = json.load(open("config/keys/approvers.jwks.json"))["keys"][0]["kid"]
for f in glob.glob("config/approvals/*.jwt"):
    rec = open(f).read().strip()
    seed("approval", rec, 0)
    seed("approval", rec, 2)
    h, p, s = rec.split(".")
    seed("approval", unb64(h) + b"\0" + unb64(p), 1)
    seed("approval", unb64(p), 3)
    general = {"payload": p, "signatures": [{"protected": h, "signature": s},
                                            {"protected": b64(b'{"alg":"ES256","typ":"approval+jwt","kid":"other"}'), "signature": s}]}
    seed("approval", json.dumps(general), 0)
    # A payload changed in the middle: the signature no longer covers it.
    mid = len(p) // 2
    seed("approval", f"{h}.{p[:mid]}{'A' if p[mid] != 'A' else 'B'}{p[mid + 1:]}.{s}", 0)
    # The same record for the registries: an MLflow search page and an HTTP answer.
    page = {"model_versions": [{"name": "m", "version": "3", "tags": [
        {"key": "provgate.artefact_digest", "value": json.loads(unb64(p))["artefact"]["digest"]},
        {"key": "provgate.approval", "value": rec}, {"key": "provgate.revoked", "value": "false"}]},
        {"name": "m", "version": "4", "tags": [{"key": "provgate.revoked", "value": "maybe"}]}],
        "next_page_token": "abc"}
    seed("registry", json.dumps(page), 0)
    seed("registry", rec + "\n\n  " + rec + "\n", 1)
    seed("registry", rec + "\n", 3)
seed("registry", "{}", 0)

# --- request targets (TARGET [NUL HOST]).
for t in ["/v1/chat/completions", "/v2/models/m/infer", "/v2/models/m/versions/1/infer",
          "/v1/models/m:predict", "/api/generate", "/v2/repository/models/m/load",
          "/v1/models?x=1", "/v2/models/%6d/infer", "/a/./b/../v1/models//", "/%2e%2e/x",
          "/v2/models/m%2Fx/infer", "/a%5cb", "/caf%C3%A9"]:
    seed("target", t)
seed("target", b"http://127.0.0.1:8080/v1/models?a=b\0127.0.0.1:8080")
seed("target", b"https://other.example/v1/models\0127.0.0.1")
seed("target", b"*")

# --- JSON request bodies.
for b in ['{"model":"m","messages":[{"role":"user","content":"hi"}]}',
          '{"model":null}', '{"model":"tgi","parameters":{"adapter_id":"lora-a"}}',
          '{"source":"a","destination":"b"}', '{"name":"m:latest","stream":false}',
          '{"lora_name":"x","lora_path":"/p"}', '{"model":"a","model":"b"}', '[{"model":"m"}]',
          ' {"model":"\\u006d"} ']:
    seed("body_model", b)

# --- model lists, one per shape (mode = shape).
seed("model_list", '{"object":"list","data":[{"id":"ab","object":"model"},{"id":"abc"}]}', 0)
seed("model_list", '{"models":["ab","abc","x"]}', 1)
seed("model_list", '{"models":[{"name":"ab:latest","model":"ab:latest","digest":"00"},{"name":"abc"}]}', 2)
seed("model_list", '[{"name":"ab","version":"1","state":"READY"},{"name":"abc"}]', 3)

# --- OMS bundles: signed by the reference tool with the demo approver key (the fuzz
# fixture's pinned signer) over a copy of the fuzz fixture's model directory.
with tempfile.TemporaryDirectory() as tmp:
    model = pathlib.Path(tmp, "model")
    model.mkdir()
    (model / "config.json").write_bytes(b'{"layers": 2}\n')
    (model / "weights.bin").write_bytes(bytes([7]) * 100)
    for method, shard in (("files", None), ("shards", 64)):
        sig = pathlib.Path(tmp, f"{method}.sig")
        config = hashing.Config().set_ignored_paths(paths=["model.sig"], ignore_git_paths=True)
        if shard:
            config = config.use_shard_serialization(shard_size=shard)
        (signing.Config().use_elliptic_key_signer(private_key=pathlib.Path("config/keys/approver.demo.key"))
            .set_hashing_config(config).sign(model, sig))
        bundle = sig.read_bytes()
        seed("oms_bundle", bundle, 0)
        seed("oms_bundle", bundle, 2)
        payload = base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"])
        seed("oms_bundle", payload, 1)
        seed("oms_bundle", payload, 3)
        # Signed, but a resource's digest is not what is on disk.
        statement = json.loads(payload)
        statement["predicate"]["resources"][0]["digest"] = "00" * 32
        seed("oms_bundle", json.dumps(statement), 1)

# --- configuration files.
for f in ["config/provgate.toml"] + glob.glob("examples/*.toml") + glob.glob("deploy/**/*.toml", recursive=True):
    seed("config", open(f).read())

# --- audit logs: `provgate audit generate` with the demo approver key signing checkpoints,
# small segments: LOG NUL CHECKPOINT NUL SEGMENT-1 ...
with tempfile.TemporaryDirectory() as tmp:
    text = open("config/provgate.toml").read()
    text = text.replace('path = "provgate-audit.jsonl"',
                        f'path = "{tmp}/audit.jsonl"\ncheckpoint_key = "config/keys/approver.demo.key"')
    text = text.replace("max_segment_bytes = 67108864", "max_segment_bytes = 4096")
    pathlib.Path(tmp, "c.toml").write_text(text)
    run(provgate, "audit", "generate", "-c", f"{tmp}/c.toml", "--count", "14")
    log = pathlib.Path(tmp, "audit.jsonl").read_bytes()
    cp = pathlib.Path(tmp, "audit.jsonl.checkpoint").read_bytes()
    segs = [p.read_bytes() for p in sorted(pathlib.Path(tmp).glob("audit.jsonl.0*"))]
    seed("audit_verify", b"\0".join([log, cp] + segs))
    seed("audit_verify", segs[0])
    seed("audit_verify", b"\n".join(log.split(b"\n")[:3]) + b"\n")
print(f"{n} seeds in {out}")
