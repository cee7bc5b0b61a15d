"""Ctrl-C (SIGINT) stops a generation between tokens with KeyboardInterrupt, in a stream, in
generate() and in a session's generate(); the servers keep serving afterwards."""
import signal
import subprocess
import sys
import time

import pytest

from conftest import python_with_kwaai

# The script installs Python's default SIGINT handler itself: a process started in the background by a
# shell without job control inherits SIGINT as ignored, and Python then never raises KeyboardInterrupt.
SCRIPT = """
import signal
import sys
import kwaai
signal.signal(signal.SIGINT, signal.default_int_handler)
model = kwaai.AutoDistributedModelForCausalLM.from_pretrained(sys.argv[1], initial_peers=sys.argv[3:],
                                                              max_retries=3)
ids = model.encode("Interrupt me")
options = dict(max_new_tokens=6000, min_new_tokens=6000)
produced = []
try:
    if sys.argv[2] == "stream":
        for token in model.stream(ids, **options):
            produced.append(token.id)
            print("token", flush=True)
    elif sys.argv[2] == "generate":
        print("token", flush=True)
        model.generate(ids, **options)
    else:
        with model.inference_session(max_length=7000) as session:
            print("token", flush=True)
            model.generate(ids, session=session, **options)
    print("finished", flush=True)
except KeyboardInterrupt:
    print("interrupted", len(produced), flush=True)
model.shutdown()
"""


@pytest.mark.parametrize("route", ["stream", "generate", "session"])
def test_ctrl_c_interrupts_a_generation(route, tiny_model, swarm, model):
    python, env = python_with_kwaai()
    process = subprocess.Popen([python, "-c", SCRIPT, str(tiny_model), route, *swarm], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(3 if route == "stream" else 1):
            assert process.stdout.readline().strip() == "token"
        if route != "stream":
            time.sleep(1.0)  # let the generation get going
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("interrupted"), out + err
    if route == "stream":
        assert 3 <= int(last.split()[1]) < 6000
    ids = model.encode("after")
    assert len(model.generate(ids, max_new_tokens=3, min_new_tokens=3)) == len(ids) + 3
