"""`python -m kwaai.cli.run_dht`: a DHT peer others can bootstrap from (hivemind's run_dht flags)."""
from __future__ import annotations

from typing import List, Optional

from ..dht import DHT
from . import FlagParser, print_visible_maddrs, wait_for_stop


def main(argv: Optional[List[str]] = None) -> None:
    parser = FlagParser(description="Run a DHT peer of the swarm.")
    parser.add_argument("--initial_peers", nargs="*", default=[], help="multiaddrs of peers already in the DHT")
    parser.add_argument("--host_maddrs", nargs="*", default=["/ip4/0.0.0.0/tcp/0"], help="multiaddrs to listen on")
    parser.add_argument("--identity_path", help="a private key file (created if missing) for a stable peer ID")
    parser.add_argument("--client_mode", action="store_true", help="ask other peers, never store for them")
    args = parser.parse_args(argv)
    with DHT(
        initial_peers=args.initial_peers,
        host_maddrs=args.host_maddrs,
        identity_path=args.identity_path,
        client_mode=args.client_mode,
        start=True,
    ) as dht:
        print_visible_maddrs(dht.get_visible_maddrs())
        wait_for_stop()


if __name__ == "__main__":
    main()
