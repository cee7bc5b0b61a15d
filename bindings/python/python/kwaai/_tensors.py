"""Token ids and float tensors as lists, numpy arrays or torch tensors (numpy and torch optional)."""
from __future__ import annotations

import array
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
