"""`kwaai.Server`: serve a span of a model's blocks to the swarm, as a Petals server does."""
from __future__ import annotations

import os
from types import TracebackType
from typing import List, Optional, Sequence, Tuple, Type, Union

from ._kwaai import InvalidArgumentError, NativeServer, Node
from .dht import DEFAULT_HOST_MADDRS


def parse_block_indices(block_indices: Union[str, Tuple[int, int], None]) -> Optional[Tuple[int, int]]:
    """`"a:b"` (Petals' `--block_indices`) or `(a, b)` as `(a, b)`."""
    if block_indices is None:
        return None
    if isinstance(block_indices, str):
        parts = block_indices.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise InvalidArgumentError(f"block_indices must look like 'start:end', not {block_indices!r}")
        return int(parts[0]), int(parts[1])
    start, end = block_indices
    return int(start), int(end)


class Server:
    """Serves blocks `block_indices` ("a:b") of the model in `model_path` under `dht_prefix`
    (default: the directory's name with `.` and ` ` as `-`, what clients derive too), joined
    to the swarm through `initial_peers`. A context manager; `shutdown()` announces it OFFLINE.
    """

    def __init__(
        self,
        model_path: Union[str, "os.PathLike[str]"],
        *,
        initial_peers: Optional[Sequence[str]] = None,
        block_indices: Union[str, Tuple[int, int], None] = None,
        num_blocks: Optional[int] = None,
        dht_prefix: Optional[str] = None,
        throughput: Optional[float] = None,
        host_maddrs: Optional[Sequence[str]] = None,
        identity_path: Optional[Union[str, "os.PathLike[str]"]] = None,
        torch_dtype: Optional[str] = None,
        public_name: Optional[str] = None,
        update_period: float = 60.0,
    ) -> None:
        if dht_prefix is None:
            dht_prefix = default_dht_prefix(model_path)
        self.node = Node.start(
            listen_addrs=list(host_maddrs or DEFAULT_HOST_MADDRS),
            identity_path=identity_path,
            initial_peers=[str(p) for p in initial_peers or []],
        )
        try:
            self._native = NativeServer.start(
                self.node,
                model_path,
                block_indices=parse_block_indices(block_indices),
                num_blocks=num_blocks,
                dht_prefix=dht_prefix,
                throughput=throughput,
                torch_dtype=torch_dtype,
                public_name=public_name,
                update_period=update_period,
            )
        except BaseException:
            self.node.shutdown()
            raise

    @property
    def block_indices(self) -> Tuple[int, int]:
        """The blocks served, `(start, end)`."""
        return self._native.block_indices

    @property
    def dht_prefix(self) -> str:
        """The DHT prefix the blocks are announced under."""
        return self._native.dht_prefix

    @property
    def peer_id(self) -> str:
        """The server's peer ID."""
        return self.node.peer_id

    def get_visible_maddrs(self) -> List[str]:
        """The multiaddrs the server listens on (others may use them as initial peers)."""
        return self.node.listen_addrs

    @property
    def is_running(self) -> bool:
        """Whether the server is still serving."""
        return self._native.is_running

    def shutdown(self) -> None:
        """Announces OFFLINE, ends the sessions and stops the node; calling it again does nothing."""
        self._native.shutdown()
        self.node.shutdown()

    def __enter__(self) -> "Server":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.shutdown()


def default_dht_prefix(model_path: Union[str, "os.PathLike[str]"]) -> str:
    """A local directory's DHT prefix: its name with `.` and ` ` replaced by `-`."""
    name = os.path.basename(os.path.realpath(os.fspath(model_path)))
    if not name:
        raise InvalidArgumentError(f"{model_path} has no directory name to derive a DHT prefix")
    return name.replace(".", "-").replace(" ", "-")
