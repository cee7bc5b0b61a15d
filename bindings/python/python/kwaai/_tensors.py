"""Token ids and float tensors as lists, numpy arrays or torch tensors (numpy and torch optional)."""
from __future__ import annotations

import array
import struct
import sys
from typing import Any, List, Sequence, Tuple

from ._kwaai import InvalidArgumentError


def kind_of(value: Any) -> str:
    """'torch', 'numpy' or 'list': the kind a result is returned as."""
    module = type(value).__module__
    if module.startswith("torch"):
        return "torch"
    if module.startswith("numpy"):
        return "numpy"
    return "list"


def token_rows(input_ids: Any) -> Tuple[List[List[int]], bool]:
    """Token ids as rows of ints, and whether the input was 2-D ([batch, tokens])."""
    kind = kind_of(input_ids)
    if kind in ("torch", "numpy"):
        data = input_ids.tolist()
    else:
        data = list(input_ids)
    if data and isinstance(data[0], (list, tuple)):
        return [[int(t) for t in row] for row in data], True
    return [[int(t) for t in data]], False


def ids_like(rows: List[List[int]], two_d: bool, kind: str) -> Any:
    """Token ids in the kind (and rank) of the input they answer."""
    data: Any = rows if two_d else rows[0]
    if kind == "torch":
        import torch

        return torch.tensor(data, dtype=torch.long)
    if kind == "numpy":
        import numpy

        return numpy.array(data, dtype=numpy.int64)
    return data


def _flatten(value: Any, shape: List[int], depth: int, out: "array.array[float]") -> None:
    if isinstance(value, (list, tuple)):
        if len(shape) <= depth:
            shape.append(len(value))
        elif shape[depth] != len(value):
            raise InvalidArgumentError("a ragged nested list is not a tensor")
        for item in value:
            _flatten(item, shape, depth + 1, out)
    else:
        if depth != len(shape):
            raise InvalidArgumentError("a ragged nested list is not a tensor")
        out.append(float(value))


def to_bytes(tensor: Any) -> Tuple[bytes, List[int]]:
    """Little-endian float32 bytes and the shape of a list, numpy array or torch tensor."""
    kind = kind_of(tensor)
    if kind == "torch":
        tensor = tensor.detach().to("cpu").float().numpy()
        kind = "numpy"
    if kind == "numpy":
        import numpy

        contiguous = numpy.ascontiguousarray(tensor, dtype="<f4")
        return contiguous.tobytes(), list(contiguous.shape)
    values: "array.array[float]" = array.array("f")
    shape: List[int] = []
    _flatten(tensor, shape, 0, values)
    if sys.byteorder != "little":
        values.byteswap()
    return values.tobytes(), shape


def from_bytes(data: bytes, shape: Sequence[int], kind: str) -> Any:
    """A float32 tensor of `shape` from bytes, as a nested list, numpy array or torch tensor."""
    if kind in ("numpy", "torch"):
        import numpy

        result = numpy.frombuffer(data, dtype="<f4").reshape(shape).copy()
        if kind == "torch":
            import torch

            return torch.from_numpy(result)
        return result
    values = array.array("f")
    values.frombytes(data)
    if sys.byteorder != "little":
        values.byteswap()
    flat: List[Any] = values.tolist()
    for size in reversed(list(shape)[1:]):
        flat = [flat[i : i + size] for i in range(0, len(flat), size)]
    return flat


# Wire dtype names (as hivemind names them) and their little-endian numpy codes; numpy has no
# bfloat16, so bfloat16 arrives in numpy and list form as float32.
NUMPY_CODES = {
    "float32": "<f4",
    "float16": "<f2",
    "float64": "<f8",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "i1",
    "uint8": "u1",
    "bool": "?",
}


def _wire_name(dtype: Any) -> str:
    """The wire name of a numpy or torch dtype, or InvalidArgumentError."""
    name = str(dtype).replace("torch.", "")
    if name in NUMPY_CODES or name == "bfloat16":
        return name
    raise InvalidArgumentError(f"tensors of dtype {name} cannot be sent: use one of {sorted(NUMPY_CODES)} or bfloat16")


def to_wire(tensor: Any) -> Tuple[bytes, List[int], str]:
    """Little-endian bytes, shape and dtype name of a list (sent as float32), numpy array or torch
    tensor (sent in its own dtype)."""
    kind = kind_of(tensor)
    if kind == "torch":
        import torch

        tensor = tensor.detach().to("cpu").contiguous()
        dtype = _wire_name(tensor.dtype)
        if dtype == "bfloat16":
            return tensor.view(torch.int16).numpy().astype("<i2").tobytes(), list(tensor.shape), dtype
        tensor = tensor.numpy()
        kind = "numpy"
    if kind == "numpy":
        import numpy

        dtype = _wire_name(tensor.dtype)
        contiguous = numpy.ascontiguousarray(tensor, dtype=NUMPY_CODES[dtype])
        return contiguous.tobytes(), list(contiguous.shape), dtype
    values: "array.array[float]" = array.array("f")
    shape: List[int] = []
    _flatten(tensor, shape, 0, values)
    if sys.byteorder != "little":
        values.byteswap()
    return values.tobytes(), shape, "float32"


# struct codes of the wire dtypes, for nested lists without numpy.
STRUCT_CODES = {
    "float32": "f",
    "float16": "e",
    "float64": "d",
    "int64": "q",
    "int32": "i",
    "int16": "h",
    "int8": "b",
    "uint8": "B",
    "bool": "?",
}


def _nest(flat: List[Any], shape: Sequence[int]) -> Any:
    for size in reversed(list(shape)[1:]):
        flat = [flat[i : i + size] for i in range(0, len(flat), size)]
    return flat if shape else flat[0]


def from_wire(data: bytes, shape: Sequence[int], dtype: str, kind: str) -> Any:
    """A tensor of `shape` and wire `dtype` from its bytes, as a nested list, numpy array or torch
    tensor (bfloat16 stays bfloat16 in torch only; numpy and lists get float32 values)."""
    if kind == "list":
        if dtype == "bfloat16":
            # bfloat16 is the upper half of a float32.
            halves = struct.unpack(f"<{len(data) // 2}H", data)
            flat: List[Any] = [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in halves]
        else:
            code = STRUCT_CODES[dtype]
            flat = list(struct.unpack(f"<{len(data) // struct.calcsize(code)}{code}", data))
        return _nest(flat, shape)
    if dtype == "bfloat16" and kind == "torch":
        import torch

        return torch.frombuffer(bytearray(data), dtype=torch.bfloat16).reshape(list(shape))
    import numpy

    if dtype == "bfloat16":
        widened = numpy.frombuffer(data, dtype="<u2").astype("<u4") << 16
        array_ = widened.view("<f4").reshape(shape)
    else:
        array_ = numpy.frombuffer(data, dtype=NUMPY_CODES[dtype]).reshape(shape).copy()
    array_ = array_.astype(array_.dtype.newbyteorder("="), copy=False)
    if kind == "torch":
        import torch

        return torch.from_numpy(array_)
    return array_
