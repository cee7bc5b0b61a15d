"""Tensors pushed between nodes from Python: lists and numpy arrays in, arrays out, per-call
compression, and the errors a sender sees."""
import json
import queue

import pytest
from conftest import run_reference

import kwaai

TIMEOUT = 30


def pair(kind="list"):
    """Two connected nodes; the second collects (peer, name, array) into the returned queue."""
    receiver = kwaai.Node.start(listen_addrs=["/ip4/127.0.0.1/tcp/0"])
    sender = kwaai.Node.start(listen_addrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=receiver.listen_addrs)
    inbox: "queue.Queue[tuple]" = queue.Queue()
    receiver.set_tensor_handler(lambda peer, name, array: inbox.put((peer, name, array)), kind=kind)
    return sender, receiver, inbox


def test_a_nested_list_arrives_named_and_whole():
    sender, receiver, inbox = pair("list")
    with sender, receiver:
        sender.push_tensor(receiver.peer_id, "layer.0", [[1.0, -2.5, 3.0], [0.0, 0.5, 8.0]])
        assert inbox.get(timeout=TIMEOUT) == (sender.peer_id, "layer.0", [[1.0, -2.5, 3.0], [0.0, 0.5, 8.0]])


def test_numpy_in_and_out_with_per_call_compression():
    numpy = pytest.importorskip("numpy")
    sender, receiver, inbox = pair("numpy")
    with sender, receiver:
        x = numpy.linspace(-4, 4, 600, dtype=numpy.float32).reshape(20, 30)
        sender.push_tensor(receiver.peer_id, "w", x)
        _, _, got = inbox.get(timeout=TIMEOUT)
        assert isinstance(got, numpy.ndarray) and got.dtype == numpy.float32
        numpy.testing.assert_array_equal(got, x)
        sender.push_tensor(receiver.peer_id, "w16", x, compression="float16")
        numpy.testing.assert_allclose(inbox.get(timeout=TIMEOUT)[2], x, atol=5e-3)
        sender.push_tensor(receiver.peer_id, "g", x, compression="topk", k=10)
        _, _, sparse = inbox.get(timeout=TIMEOUT)
        assert numpy.count_nonzero(sparse) == 10
        assert numpy.abs(sparse).max() == numpy.abs(x).max()
        sender.push_tensor(receiver.peer_id, "q", x, compression="blockwise_8bit_feedback")
        numpy.testing.assert_allclose(inbox.get(timeout=TIMEOUT)[2], x, atol=0.05)


def test_a_large_array_is_streamed_intact():
    numpy = pytest.importorskip("numpy")
    sender, receiver, inbox = pair("numpy")
    with sender, receiver:
        x = numpy.arange(3 << 20, dtype=numpy.float32).reshape(3, -1)  # 12 MiB: streamed
        sender.push_tensor(receiver.peer_id, "big", x)
        numpy.testing.assert_array_equal(inbox.get(timeout=TIMEOUT)[2], x)


def test_errors_reach_the_sender():
    sender, receiver, _ = pair()
    with sender, receiver:
        def refuse(peer, name, array):
            raise ValueError(f"no thanks, {name}")

        receiver.set_tensor_handler(refuse)
        with pytest.raises(kwaai.ProtocolError, match="no thanks, x"):
            sender.push_tensor(receiver.peer_id, "x", [1.0])
        with pytest.raises(kwaai.InvalidArgumentError):
            sender.push_tensor(receiver.peer_id, "x", [1.0], compression="zip")
        with pytest.raises(kwaai.InvalidArgumentError):
            sender.push_tensor(receiver.peer_id, "x", [1.0], compression="topk")
        with pytest.raises(kwaai.InvalidArgumentError):
            sender.push_tensor("not-a-peer", "x", [1.0])
        assert receiver.clear_tensor_handler()
        with pytest.raises(kwaai.ProtocolError):
            sender.push_tensor(receiver.peer_id, "x", [1.0])


TORCH_SCRIPT = """
import json, queue, torch
import kwaai
inbox = queue.Queue()
receiver = kwaai.Node.start(listen_addrs=["/ip4/127.0.0.1/tcp/0"])
sender = kwaai.Node.start(listen_addrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=receiver.listen_addrs)
receiver.set_tensor_handler(lambda peer, name, t: inbox.put((name, t)), kind="torch")
x = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4)
sender.push_tensor(receiver.peer_id, "t", x)
name, got = inbox.get(timeout=30)
print(json.dumps(dict(name=name, type=type(got).__name__, dtype=str(got.dtype), shape=list(got.shape),
                      equal=bool(torch.equal(got, x.float())))))
sender.shutdown()
receiver.shutdown()
"""


def test_torch_tensors_in_and_out():
    """Run by the reference venv's python, which has torch."""
    result = json.loads(run_reference(["-c", TORCH_SCRIPT]).splitlines()[-1])
    assert result == {"name": "t", "type": "Tensor", "dtype": "torch.float32", "shape": [3, 4], "equal": True}
