"""Command lines shaped like Petals' and hivemind's: `python -m kwaai.cli.run_server` and
`python -m kwaai.cli.run_dht`."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any, List, Optional


class FlagParser(argparse.ArgumentParser):
    """An argument parser that takes each `--snake_case` flag as `--kebab-case` too."""

    def add_argument(self, *names: Any, **kwargs: Any) -> Any:
        spelled = list(names)
        for name in names:
            if isinstance(name, str) and name.startswith("--") and "_" in name:
                spelled.append(name.replace("_", "-"))
        return super().add_argument(*spelled, **kwargs)


def wait_for_stop() -> None:
    """Blocks until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


def print_visible_maddrs(maddrs: List[str], file: Optional[Any] = None) -> None:
    """Prints the multiaddrs to give other peers, as hivemind's run_dht logs them."""
    out = file or sys.stdout
    print(f"Running a DHT instance. To connect other peers to this one, use --initial_peers {' '.join(maddrs)}",
          file=out)
    print(f"Full list of visible multiaddresses: {' '.join(maddrs)}", file=out, flush=True)
