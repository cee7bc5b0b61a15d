"""Per streamed token through the Python binding: a replayed stream of 100,000 tokens (no model, no
network) iterated as `model.stream()` iterates a generation. `make bench-bindings` runs it beside the
same stream iterated in Rust. Prints one line: median and best microseconds per token."""
import statistics
import time

import kwaai

TOKENS = 100_000
RUNS = 5

tokens = [(i, f" w{i % 1000}") for i in range(TOKENS)]
times = []
for run in range(RUNS + 1):
    stream = kwaai.TokenStream.replay(tokens)
    start = time.perf_counter()
    n = 0
    for token_id, text in stream:
        kwaai.Token(token_id, text)
        n += 1
    elapsed = time.perf_counter() - start
    assert n == TOKENS, n
    if run:  # the first run warms up
        times.append(elapsed * 1e6 / TOKENS)
print(f"Python TokenStream iteration : median {statistics.median(times):8.3f} µs, best {min(times):8.3f} µs")
