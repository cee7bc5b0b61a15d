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


def test_numpy_arrays_keep_their_dtype():
    numpy = pytest.importorskip("numpy")
    sender, receiver, inbox = pair("numpy")
    with sender, receiver:
        for x in [
            numpy.array([[1.5, -2.25], [1e4, 0.0]], dtype=numpy.float16),
            numpy.array([1.0 / 3.0, -7.25], dtype=numpy.float64),
            numpy.array([[-(2**40), 7]], dtype=numpy.int64),
            numpy.arange(256, dtype=numpy.uint8).reshape(16, 16),
            numpy.array([True, False, True]),
        ]:
            sender.push_tensor(receiver.peer_id, str(x.dtype), x)
            _, name, got = inbox.get(timeout=TIMEOUT)
            assert name == str(x.dtype) and got.dtype == x.dtype and got.shape == x.shape
            numpy.testing.assert_array_equal(got, x)
        with pytest.raises(kwaai.InvalidArgumentError, match="complex"):
            sender.push_tensor(receiver.peer_id, "c", numpy.zeros(2, dtype=numpy.complex64))
        # Integers cannot be quantized: the sender gets the codec's error.
        with pytest.raises(kwaai.KwaaiError):
            sender.push_tensor(receiver.peer_id, "q", numpy.arange(4), compression="uniform_8bit")


def test_lists_read_every_dtype():
    numpy = pytest.importorskip("numpy")
    sender, receiver, inbox = pair("list")
    with sender, receiver:
        sender.push_tensor(receiver.peer_id, "i", numpy.array([[1, -2], [3, 4]], dtype=numpy.int32))
        assert inbox.get(timeout=TIMEOUT)[2] == [[1, -2], [3, 4]]
        sender.push_tensor(receiver.peer_id, "h", numpy.array([0.5, -8.0], dtype=numpy.float16))
        assert inbox.get(timeout=TIMEOUT)[2] == [0.5, -8.0]
        sender.push_tensor(receiver.peer_id, "b", numpy.array([True, False]))
        assert inbox.get(timeout=TIMEOUT)[2] == [True, False]


TORCH_SCRIPT = """
import json, queue, torch
import kwaai
inbox = queue.Queue()
receiver = kwaai.Node.start(listen_addrs=["/ip4/127.0.0.1/tcp/0"])
sender = kwaai.Node.start(listen_addrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=receiver.listen_addrs)
results = {}
for kind in ["torch", "numpy", "list"]:
    receiver.set_tensor_handler(lambda peer, name, t: inbox.put((name, t)), kind=kind)
    for x in [torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4),
              torch.tensor([[1.5, -0.375], [3e38, 1e-3]], dtype=torch.bfloat16),
              torch.tensor([-(2**40), 5], dtype=torch.int64)]:
        sender.push_tensor(receiver.peer_id, str(x.dtype), x)
        name, got = inbox.get(timeout=30)
        if kind == "list":
            equal = got == x.float().tolist() if x.dtype == torch.bfloat16 else got == x.tolist()
            results[f"{kind} {name}"] = dict(type=type(got).__name__, equal=equal)
            continue
        got = torch.as_tensor(got)
        results[f"{kind} {name}"] = dict(type=type(got).__name__, dtype=str(got.dtype), shape=list(got.shape),
                                         equal=bool(torch.equal(got, x.float() if str(got.dtype) == "torch.float32" else x)))
print(json.dumps(results))
sender.shutdown()
receiver.shutdown()
"""


def test_torch_tensors_in_and_out_in_their_own_dtype():
    """Run by the reference venv's python, which has torch: bfloat16 stays bfloat16 in torch and
    arrives as float32 in numpy and lists."""
    result = json.loads(run_reference(["-c", TORCH_SCRIPT]).splitlines()[-1])
    tensor = lambda dtype, shape: {"type": "Tensor", "dtype": dtype, "shape": shape, "equal": True}  # noqa: E731
    assert result == {
        "torch torch.float64": tensor("torch.float64", [3, 4]),
        "torch torch.bfloat16": tensor("torch.bfloat16", [2, 2]),
        "torch torch.int64": tensor("torch.int64", [2]),
        "numpy torch.float64": tensor("torch.float64", [3, 4]),
        "numpy torch.bfloat16": tensor("torch.float32", [2, 2]),
        "numpy torch.int64": tensor("torch.int64", [2]),
        "list torch.float64": {"type": "list", "equal": True},
        "list torch.bfloat16": {"type": "list", "equal": True},
        "list torch.int64": {"type": "list", "equal": True},
    }
