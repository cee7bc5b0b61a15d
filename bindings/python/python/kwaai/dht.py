"""`kwaai.DHT`: a DHT peer shaped like `hivemind.DHT`."""
from __future__ import annotations

import os
from types import TracebackType
from typing import Any, List, Optional, Sequence, Type, Union

from ._kwaai import ClosedError, Node, ValueWithExpiration

DEFAULT_HOST_MADDRS = ["/ip4/127.0.0.1/tcp/0"]


class DHT:
    """A hivemind DHT peer: `store` and `get` values with expiration times across the swarm.

    Takes hivemind's arguments: `initial_peers` (multiaddrs ending in `/p2p/<peer id>`),
    `host_maddrs` (where to listen; default 127.0.0.1 on a free port), `client_mode` (ask others,
    never store for them), `identity_path` (a key file, created if missing), and `start`
    (False: call `run_in_background()` later). Use it as a context manager or call `shutdown()`.
    """

    def __init__(
        self,
        initial_peers: Optional[Sequence[str]] = None,
        *,
        start: bool = True,
        host_maddrs: Optional[Sequence[str]] = None,
        client_mode: bool = False,
        identity_path: Optional[Union[str, "os.PathLike[str]"]] = None,
        **kwargs: Any,
    ) -> None:
        self.initial_peers = [str(p) for p in initial_peers or []]
        self.host_maddrs = [str(m) for m in host_maddrs or DEFAULT_HOST_MADDRS]
        self.client_mode = client_mode
        self.identity_path = identity_path
        self.kwargs = kwargs
        self._node: Optional[Node] = None
        if start:
            self.run_in_background()

    def run_in_background(self, await_ready: bool = True, timeout: Optional[float] = None) -> None:
        """Starts the peer (the node runs on its own threads; the call returns once it listens)."""
        if self._node is None:
            self._node = Node.start(
                listen_addrs=self.host_maddrs,
                identity_path=self.identity_path,
                initial_peers=self.initial_peers,
                client_mode=self.client_mode,
            )

    @property
    def node(self) -> Node:
        """The running node."""
        if self._node is None or not self._node.is_running:
            raise ClosedError("the DHT is not running (start it, or it was shut down)")
        return self._node

    @property
    def peer_id(self) -> str:
        """This peer's ID in base58."""
        return self.node.peer_id

    def is_alive(self) -> bool:
        """Whether the peer is running."""
        return self._node is not None and self._node.is_running

    def get_visible_maddrs(self, latest: bool = False) -> List[str]:
        """The multiaddrs others can reach this peer at, each ending in `/p2p/<peer id>`."""
        return self.node.listen_addrs

    def store(
        self, key: Any, value: Any, expiration_time: float, subkey: Optional[Any] = None, **kwargs: Any
    ) -> bool:
        """Stores `value` under `key` (and `subkey`) until `expiration_time` (Unix seconds)."""
        return self.node.store(key, value, expiration_time, subkey=subkey)

    def get(self, key: Any, latest: bool = False, **kwargs: Any) -> Optional[ValueWithExpiration]:
        """The value under `key` as `ValueWithExpiration`, or None; a dictionary comes as
        `{subkey: ValueWithExpiration}`. With `latest`, searches for the newest value."""
        return self.node.get(key, latest=latest)

    def shutdown(self) -> None:
        """Stops the peer; calling it again does nothing."""
        if self._node is not None:
            self._node.shutdown()

    def __enter__(self) -> "DHT":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = f"peer_id={self._node.peer_id}" if self._node is not None else "not started"
        return f"<kwaai.DHT {state} alive={self.is_alive()}>"
