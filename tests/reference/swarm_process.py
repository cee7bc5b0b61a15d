"""Runs the swarm script argv[1] (../shared/reference/swarm.py) with the arguments argv[2:], prints
its ready JSON line, and stops the swarm (SIGTERM, so its Petals servers shut down cleanly) when
stdin closes. Lets a Rust test hold a Python Petals swarm as a ReferenceProcess."""
import signal
import subprocess
import sys


def main():
    swarm = subprocess.Popen([sys.executable, *sys.argv[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    try:
        line = swarm.stdout.readline()
        if not line:
            sys.exit(f"swarm.py exited with code {swarm.wait()} before it was ready")
        print(line.strip(), flush=True)
        sys.stdin.read()
    finally:
        swarm.send_signal(signal.SIGTERM)
        try:
            swarm.wait(60)
        except subprocess.TimeoutExpired:
            swarm.kill()
            swarm.wait()


if __name__ == "__main__":
    main()
