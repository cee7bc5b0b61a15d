"""hivemind's side of kwaai-core/tests/tensor_interop.rs: encodes and decodes tensors with
hivemind 1.1.10.post2's own codecs.

Prints {"ready": true}, then answers each stdin line {"in": path, "out": path} with one JSON line.
The input file is a runtime.proto ExpertRequest: tensors[0] is the test's raw input (NONE),
tensors[1] is kwaai's encoding of it; metadata is JSON {"codec": name, "legacy_bf16": bool}.
The output file is an ExpertResponse with hivemind's encoding of the input, then hivemind's
decodings of kwaai's bytes and of its own bytes, both re-sent as NONE (2-byte bfloat16).

BLOCKWISE_8BIT cannot run through hivemind here (hivemind 1.1.10 unpacks the bitsandbytes 0.37
result; the venv has 0.41.1), so it runs bitsandbytes' own CPU kernels through the 0.41 API with
hivemind's buffer layout.
A line {"op": "stream", "in": path, "out": path, "chunk_size": n} instead gives an
ExpertRequest whose tensors are the parts of a stream: hivemind joins them
(deserialize_tensor_stream), re-encodes each tensor with the codec it came with, and splits the
results again with split_for_streaming(chunk_size) into the ExpertResponse.
Exits when stdin closes.
"""
import contextlib
import asyncio
import json
import os
import sys
import warnings

os.environ["USE_LEGACY_BFLOAT16"] = "0"  # the form Petals peers send
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import hivemind.compression.base as base  # noqa: E402
from hivemind.compression import deserialize_tensor_stream, deserialize_torch_tensor, serialize_torch_tensor  # noqa: E402,E501
from hivemind.proto import runtime_pb2  # noqa: E402
from hivemind.proto.runtime_pb2 import CompressionType  # noqa: E402
from hivemind.utils.streaming import split_for_streaming  # noqa: E402

NONE = CompressionType.NONE

with contextlib.redirect_stdout(sys.stderr):  # bitsandbytes prints warnings to stdout on import
    import bitsandbytes.functional  # noqa: E402,F401


def blockwise_encode(x):
    from bitsandbytes.functional import quantize_blockwise

    dtype = str(x.dtype).replace("torch.", "")
    q, state = quantize_blockwise(x.float())
    absmax, code = state[0].numpy(), state[1].numpy()
    buf = b"".join((np.int64(len(absmax)).tobytes(), np.int64(len(code)).tobytes(),
                    absmax.tobytes(), code.tobytes(), q.numpy().tobytes()))
    return runtime_pb2.Tensor(buffer=buf, size=x.shape, dtype=dtype, compression=CompressionType.BLOCKWISE_8BIT)


def blockwise_decode(msg):
    from bitsandbytes.functional import dequantize_blockwise

    n_abs, n_code = (int(v) for v in np.frombuffer(msg.buffer, count=2, dtype=np.int64))
    absmax = torch.as_tensor(np.frombuffer(msg.buffer, offset=16, count=n_abs, dtype=np.float32).copy())
    code = torch.as_tensor(np.frombuffer(msg.buffer, offset=16 + 4 * n_abs, count=n_code, dtype=np.float32).copy())
    q = torch.as_tensor(np.frombuffer(msg.buffer, offset=16 + 4 * (n_abs + n_code), dtype=np.uint8).copy())
    out = dequantize_blockwise(q.reshape(tuple(msg.size)), absmax=absmax, code=code)
    return out.to(getattr(torch, msg.dtype))


def handle(request):
    req = runtime_pb2.ExpertRequest()
    with open(request["in"], "rb") as f:
        req.ParseFromString(f.read())
    meta = json.loads(req.metadata)
    codec = meta["codec"]
    x = deserialize_torch_tensor(req.tensors[0])
    ours = req.tensors[1]
    if codec == "BLOCKWISE_8BIT":
        encode, decode = blockwise_encode, blockwise_decode
    else:
        encode = lambda t: serialize_torch_tensor(t, CompressionType.Value(codec))  # noqa: E731
        decode = deserialize_torch_tensor
    base.USE_LEGACY_BFLOAT16 = bool(meta.get("legacy_bf16"))
    try:
        theirs = encode(x)
    finally:
        base.USE_LEGACY_BFLOAT16 = False
    out = runtime_pb2.ExpertResponse()
    out.tensors.append(theirs)
    out.tensors.append(serialize_torch_tensor(decode(ours), NONE))
    out.tensors.append(serialize_torch_tensor(decode(theirs), NONE))
    with open(request["out"], "wb") as f:
        f.write(out.SerializeToString())


def handle_stream(request):
    req = runtime_pb2.ExpertRequest()
    with open(request["in"], "rb") as f:
        req.ParseFromString(f.read())
    codecs = [part.compression for part in req.tensors if part.dtype]

    async def parts():
        for part in req.tensors:
            yield [part]

    tensors = asyncio.run(deserialize_tensor_stream(parts()))
    out = runtime_pb2.ExpertResponse()
    for tensor, codec in zip(tensors, codecs):
        out.tensors.extend(split_for_streaming(serialize_torch_tensor(tensor, codec), request["chunk_size"]))
    with open(request["out"], "wb") as f:
        f.write(out.SerializeToString())


def main():
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            request = json.loads(line)
            (handle_stream if request.get("op") == "stream" else handle)(request)
            print(json.dumps({"ok": True}), flush=True)
        except Exception as e:  # reported to the test, which fails with this text
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)


if __name__ == "__main__":
    main()
