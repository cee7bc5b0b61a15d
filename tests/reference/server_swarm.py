"""Runs ../shared/reference/swarm.py (Python Petals servers on 127.0.0.1) for a test: passes every
argument on, prints swarm.py's ready line (one JSON line), and when stdin closes stops the swarm
with SIGINT (its servers announce OFFLINE) and waits for it. Used by
kwaai-core/tests/server_inference_python.rs."""
import os
import signal
import subprocess
import sys


def main():
    shared = os.environ.get("KWAAI_SHARED") or os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared")
    script = os.path.join(shared, "reference", "swarm.py")
    swarm = subprocess.Popen([sys.executable, script, *sys.argv[1:]], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        line = swarm.stdout.readline()
        if not line:
            sys.exit(f"swarm.py exited ({swarm.wait()}) before it was ready")
        sys.stdout.write(line.decode())
        sys.stdout.flush()
        sys.stdin.read()  # until the test closes our stdin
    finally:
        if swarm.poll() is None:
            swarm.send_signal(signal.SIGINT)
            try:
                swarm.wait(60)
            except subprocess.TimeoutExpired:
                swarm.kill()
                swarm.wait()


if __name__ == "__main__":
    main()
