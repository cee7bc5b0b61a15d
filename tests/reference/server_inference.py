"""Drives rpc_inference on one server with hand-made requests, as Petals' _ServerInferenceSession
sends them, and reports what came back (reply shapes, or the error text the client sees).

Usage: server_inference.py INITIAL_PEER SERVER_PEER_ID PREFIX NUM_BLOCKS HIDDEN MODEL_DIR

Prints one JSON line with a result per scenario, then opens two more sessions, steps each once and
prints {"holding": 2}; on a stdin line it closes the first one's stream without ending the session
and prints {"dropped": true}; it exits when stdin closes (the caller shuts the server down first,
which ends the second session on the server's side).
Used by kwaai-core/tests/server_inference_python.rs."""
import asyncio
import json
import sys
import uuid
from functools import partial

import hivemind
import torch
from hivemind import MSGPackSerializer, PeerID, serialize_torch_tensor
from hivemind.proto import runtime_pb2
from hivemind.utils.asyncio import anext
from petals.server.handler import TransformerConnectionHandler
from petals.utils.misc import DUMMY, DUMMY_INT64
from petals.utils.packaging import pack_args_kwargs
from transformers import AutoModelForCausalLM


class Session:
    """One rpc_inference stream fed from a queue, as the Petals client feeds it."""

    def __init__(self, stub):
        self.stub, self.queue, self.outputs = stub, asyncio.Queue(), None

    async def open(self):
        async def inputs():
            while True:
                request = await self.queue.get()
                if request is None:
                    return
                yield request

        self.outputs = await self.stub.rpc_inference(inputs())
        return self

    async def send(self, request):
        await self.queue.put(request)

    async def recv(self, timeout=30):
        return list((await self.recv_tensor(timeout)).shape)

    async def recv_tensor(self, timeout=30):
        response = await asyncio.wait_for(anext(self.outputs), timeout)
        return hivemind.deserialize_torch_tensor(response.tensors[0])

    async def close(self):
        await self.queue.put(runtime_pb2.ExpertRequest())
        await self.queue.put(None)
        try:
            await asyncio.wait_for(anext(self.outputs), 30)
            return "unexpected reply"
        except StopAsyncIteration:
            return "closed"


def step(uids, hidden, first=None, hypo_ids=DUMMY_INT64, step_id=None, prompts=DUMMY, **metadata):
    tensors, args_structure = pack_args_kwargs(hidden, prompts, hypo_ids)
    metadata.update(session_id=metadata.get("session_id", str(uuid.uuid4())), step_id=step_id or str(uuid.uuid4()))
    metadata.update(first or {})
    metadata["args_structure"] = args_structure
    return runtime_pb2.ExpertRequest(
        uid=uids, tensors=[serialize_torch_tensor(t) for t in tensors], metadata=MSGPackSerializer.dumps(metadata)
    )


async def expect_error(stub, request):
    session = await Session(stub).open()
    await session.send(request)
    try:
        return {"unexpected_reply": await session.recv()}
    except Exception as e:
        return {"error": str(e)}


def blocks_with_prompts(model, hidden, prompts):
    """transformers' blocks over `hidden` with deep prompts added to its first positions before each
    block, as Petals servers add them."""
    batch, length, _ = hidden.shape
    mask = model.model._prepare_decoder_attention_mask(torch.ones(batch, length, dtype=torch.bool), (batch, length),
                                                       hidden, 0)
    positions = torch.arange(length)[None]
    h = hidden.clone()
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            h[:, : prompts.shape[2]] += prompts[i]
            h = layer(h, attention_mask=mask, position_ids=positions)[0]
    return h


async def deep_prompts(stub, uids, model, hidden_size):
    """A prefill with deep prompts and a step without, against transformers."""
    hidden = torch.randn(1, 4, hidden_size)
    prompts = torch.randn(len(model.model.layers), 1, 2, hidden_size)
    expected = blocks_with_prompts(model, hidden, prompts)
    session = await Session(stub).open()
    sid = str(uuid.uuid4())
    await session.send(step(uids, hidden[:, :3], {"max_length": 8}, session_id=sid, prompts=prompts))
    first = await session.recv_tensor()
    await session.send(step(uids, hidden[:, 3:], session_id=sid))
    second = await session.recv_tensor()
    await session.close()
    got = torch.cat([first, second], dim=1)
    return {"max_abs_err": float((got - expected).abs().max()), "ref_scale": float(expected.abs().max())}


async def scenarios(stub, prefix, num_blocks, hidden_size, model):
    uids = " ".join(f"{prefix}.{i}" for i in range(num_blocks))
    h = lambda batch, n: torch.randn(batch, n, hidden_size)  # noqa: E731
    out = {}
    out["deep_prompts"] = await deep_prompts(stub, uids, model, hidden_size)
    out["too_long"] = await expect_error(stub, step(uids, h(1, 1), {"max_length": 10**6}))
    out["float_max_length"] = await expect_error(stub, step(uids, h(1, 1), {"max_length": 2.5}))
    out["unserved"] = await expect_error(stub, step(f"{prefix}.{num_blocks + 3}", h(1, 1), {"max_length": 8}))
    out["int32_hypo_ids"] = await expect_error(
        stub, step(uids, h(1, 1), {"max_length": 8}, hypo_ids=torch.zeros(1, dtype=torch.int32)))

    # Steps, a repeated step id, an empty step, and a step past max_length.
    session = await Session(stub).open()
    sid = str(uuid.uuid4())
    shapes = []
    await session.send(step(uids, h(1, 3), {"max_length": 5}, session_id=sid, step_id="s1"))
    shapes.append(await session.recv())
    await session.send(step(uids, h(1, 2), session_id=sid, step_id="s1"))  # already done: no reply
    await session.send(step(uids, h(1, 0), session_id=sid, step_id="s2"))
    shapes.append(await session.recv())
    await session.send(step(uids, h(1, 2), session_id=sid, step_id="s3"))
    shapes.append(await session.recv())
    await session.send(step(uids, h(1, 1), session_id=sid, step_id="s4"))
    try:
        shapes.append(await session.recv())
    except Exception as e:
        out["past_max_length"] = str(e)
    out["step_shapes"] = shapes

    # Beam reordering: batch 2, then keep beam 1 twice.
    session = await Session(stub).open()
    sid = str(uuid.uuid4())
    await session.send(step(uids, h(2, 2), {"max_length": 4}, session_id=sid))
    beams = [await session.recv()]
    await session.send(step(uids, h(2, 1), session_id=sid, hypo_ids=torch.tensor([1, 1])))
    beams.append(await session.recv())
    out["beam_shapes"] = beams
    out["beam_close"] = await session.close()

    # The cache budget: all of it for one session, so another cannot get memory at once or within
    # 0.5 s, and a third that waits gets it once the first closes.
    out["batch3_at_once"] = await expect_error(stub, step(uids, h(3, 1), {"max_length": 8192}))
    holder = await Session(stub).open()
    await holder.send(step(uids, h(2, 0), {"max_length": 8192}))
    out["holder"] = await holder.recv()
    out["waited_half_a_second"] = await expect_error(stub, step(uids, h(1, 1), {"max_length": 16, "alloc_timeout": 0.5}))
    waiter = await Session(stub).open()
    await waiter.send(step(uids, h(1, 1), {"max_length": 16, "alloc_timeout": 30}))
    waiting = asyncio.create_task(waiter.recv())
    await asyncio.sleep(0.5)
    out["waiter_done_while_holder_open"] = waiting.done()
    out["holder_close"] = await holder.close()
    out["waiter"] = await waiting
    out["waiter_close"] = await waiter.close()

    # At most 3 sessions at once.
    open_sessions = []
    for _ in range(3):
        s = await Session(stub).open()
        await s.send(step(uids, h(1, 1), {"max_length": 4}))
        await s.recv()
        open_sessions.append(s)
    out["fourth_session"] = await expect_error(stub, step(uids, h(1, 1), {"max_length": 4}))
    for s in open_sessions:
        await s.close()

    # A step larger than the server's message limit.
    out["too_big"] = await expect_error(stub, step(uids, h(1, 2000), {"max_length": 4096}))
    return out


async def main_async(dht, peer_id, prefix, num_blocks, hidden_size, model):
    p2p = await dht.replicate_p2p()
    stub = TransformerConnectionHandler.get_stub(p2p, peer_id)
    print(json.dumps(await scenarios(stub, prefix, num_blocks, hidden_size, model)), flush=True)
    uids = " ".join(f"{prefix}.{i}" for i in range(num_blocks))
    dropped, kept = await Session(stub).open(), await Session(stub).open()
    for session in (dropped, kept):
        await session.send(step(uids, torch.randn(1, 4, hidden_size), {"max_length": 64}))
        await session.recv()
    print(json.dumps({"holding": 2}), flush=True)
    read_line = partial(asyncio.get_running_loop().run_in_executor, None, sys.stdin.readline)
    await read_line()
    await dropped.outputs.aclose()  # the stream goes without the end-of-session message
    print(json.dumps({"dropped": True}), flush=True)
    await read_line()


def main():
    initial_peer, peer_id, prefix = sys.argv[1], PeerID.from_base58(sys.argv[2]), sys.argv[3]
    num_blocks, hidden_size = int(sys.argv[4]), int(sys.argv[5])
    model = AutoModelForCausalLM.from_pretrained(sys.argv[6], torch_dtype=torch.float32).eval()
    torch.manual_seed(0)
    dht = hivemind.DHT(initial_peers=[initial_peer], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    try:
        asyncio.run(main_async(dht, peer_id, prefix, num_blocks, hidden_size, model))
    finally:
        dht.shutdown()
    sys.stdin.read()


if __name__ == "__main__":
    main()
