"""Shared fixtures: a tiny random Llama written by the reference venv, and a loopback swarm of two
kwaai servers serving it, with a client model."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kwaai

REPO = Path(__file__).resolve().parents[3]
SHARED = Path(os.environ.get("KWAAI_SHARED", REPO.parent / "shared"))
REFERENCE_PYTHON = os.environ.get(
    "KWAAI_REFERENCE_PYTHON", str(Path.home() / ".cache/kwaai/reference-venv/bin/python")
)
PACKAGE_DIR = REPO / "bindings/python/python"


def reference_env():
    """The environment the reference venv's python runs with: this checkout's kwaai importable."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_DIR), env.get("PYTHONPATH")]))
    return env


def run_reference(args, **kwargs):
    """Runs the reference venv's python with `args`; fails the test when it fails."""
    done = subprocess.run([REFERENCE_PYTHON, *args], capture_output=True, text=True, env=reference_env(),
                          timeout=300, **kwargs)
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 4-block Llama (hidden 64) with a byte-level tokenizer, in a directory named tiny-llama."""
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    run_reference([str(SHARED / "reference/make_tiny_model.py"), str(path),
                   "--family", "llama", "--layers", "4", "--hidden", "64"])
    return path


@pytest.fixture(scope="session")
def swarm_servers(tiny_model):
    """A bootstrap DHT and two servers (blocks 0:2 and 2:4) in float32, on 127.0.0.1: the
    bootstrap's multiaddrs and the servers."""
    bootstrap = kwaai.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    peers = bootstrap.get_visible_maddrs()
    servers = [
        kwaai.Server(tiny_model, initial_peers=peers, block_indices=span, torch_dtype="float32",
                     host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        for span in ("0:2", "2:4")
    ]
    yield peers, servers
    for server in servers:
        server.shutdown()
    bootstrap.shutdown()


@pytest.fixture(scope="session")
def swarm(swarm_servers):
    """The multiaddrs of the swarm's bootstrap peer."""
    return swarm_servers[0]


@pytest.fixture(scope="session")
def model(swarm, tiny_model):
    """The client model for the swarm (bounded retries, so a broken swarm fails fast)."""
    with kwaai.AutoDistributedModelForCausalLM.from_pretrained(tiny_model, initial_peers=swarm,
                                                               max_retries=3) as model:
        yield model


def python_with_kwaai():
    """This interpreter with the checkout's kwaai importable, for subprocess tests."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_DIR), env.get("PYTHONPATH")]))
    return sys.executable, env
