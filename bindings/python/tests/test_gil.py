"""Other Python threads run while kwaai waits on the network: the GIL is released inside a single
native call (a session's whole generation, one inference step)."""
import threading
import time

import kwaai


class Counter(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.count = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.count += 1


STEPS = 10


def test_other_threads_run_during_network_waits(model):
    ids = model.encode("Meanwhile")
    counter = Counter()
    counter.start()
    # Measure only once the counter runs, so that its start-up is not taken for a held GIL.
    deadline = time.monotonic() + 10
    while counter.count == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    try:
        with model.inference_session(max_length=len(ids) + 20 + STEPS) as session:
            before = counter.count
            new = session._native.generate(model._native, ids, kwaai.GenerationConfig(max_new_tokens=20,
                                                                                        min_new_tokens=20))
            during_generate = counter.count - before
            # One step is short: on a loaded machine the counter may get no time slice within one,
            # so count over several. A step that held the GIL would let it count nothing in any.
            during_steps = 0
            for _ in range(STEPS):
                hidden = model.embed([[new[-1]]])
                before = counter.count
                session.step(hidden)
                during_steps += counter.count - before
    finally:
        counter.stop.set()
        counter.join()
    assert len(new) == 20
    assert during_generate > 0
    assert during_steps > 0
