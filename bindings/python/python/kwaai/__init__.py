"""kwaai: a node of the Petals / hivemind swarm, in Rust."""

from ._kwaai import (
    ERROR_KINDS,
    ClosedError,
    IdentityError,
    InternalError,
    InvalidArgumentError,
    IoError,
    KwaaiError,
    NetworkError,
    Node,
    ProtocolError,
    TimeoutError,
    ValueWithExpiration,
    __version__,
)

__all__ = [
    "ERROR_KINDS",
    "ClosedError",
    "IdentityError",
    "InternalError",
    "InvalidArgumentError",
    "IoError",
    "KwaaiError",
    "NetworkError",
    "Node",
    "ProtocolError",
    "TimeoutError",
    "ValueWithExpiration",
    "__version__",
]
