"""Other Python threads run while kwaai waits on the network: the GIL is released inside a single
native call (a session's whole generation, one inference step)."""
import threading

import kwaai


class Counter(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.count = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.count += 1


def test_other_threads_run_during_network_waits(model):
    ids = model.encode("Meanwhile")
    counter = Counter()
    counter.start()
    try:
        with model.inference_session(max_length=len(ids) + 20) as session:
            before = counter.count
            new = session._native.generate(model._native, ids, kwaai.GenerationConfig(max_new_tokens=20,
                                                                                        min_new_tokens=20))
            during_generate = counter.count - before
            hidden = model.embed([[new[-1]]])
            before = counter.count
            session.step(hidden)
            during_step = counter.count - before
    finally:
        counter.stop.set()
        counter.join()
    assert len(new) == 20
    assert during_generate > 0
    assert during_step > 0
