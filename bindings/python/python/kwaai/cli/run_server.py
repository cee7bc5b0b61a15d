"""`python -m kwaai.cli.run_server MODEL`: serve blocks of a model (Petals' run_server flags)."""
from __future__ import annotations

from typing import List, Optional

from ..server import Server
from . import FlagParser, print_visible_maddrs, wait_for_stop


def main(argv: Optional[List[str]] = None) -> None:
    parser = FlagParser(description="Serve a span of a model's blocks to the swarm.")
    parser.add_argument("model", help="a local model directory (config.json and safetensors)")
    parser.add_argument("--initial_peers", nargs="*", default=[], help="multiaddrs of peers in the swarm")
    parser.add_argument("--block_indices", help="the blocks to serve, start:end")
    parser.add_argument("--num_blocks", type=int, help="how many blocks to serve")
    parser.add_argument("--dht_prefix", help="the model's DHT prefix (default: the directory's name)")
    parser.add_argument("--throughput", type=float, default=None, help="requests per second to announce (default: measured)")
    parser.add_argument("--host_maddrs", nargs="*", default=["/ip4/0.0.0.0/tcp/0"], help="multiaddrs to listen on")
    parser.add_argument("--identity_path", help="a private key file (created if missing) for a stable peer ID")
    parser.add_argument("--torch_dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--public_name", help="a name for swarm monitors")
    parser.add_argument("--update_period", type=float, default=60.0, help="seconds between announcements")
    args = parser.parse_args(argv)
    with Server(
        args.model,
        initial_peers=args.initial_peers,
        block_indices=args.block_indices,
        num_blocks=args.num_blocks,
        dht_prefix=args.dht_prefix,
        throughput=args.throughput,
        host_maddrs=args.host_maddrs,
        identity_path=args.identity_path,
        torch_dtype=args.torch_dtype,
        public_name=args.public_name,
        update_period=args.update_period,
    ) as server:
        start, end = server.block_indices
        print(f"Serving blocks {start}:{end} of {args.model} under {server.dht_prefix!r}", flush=True)
        print_visible_maddrs(server.get_visible_maddrs())
        wait_for_stop()


if __name__ == "__main__":
    main()
