"""kwaai.Server's arguments, and `python -m kwaai.cli.run_dht` / `run_server` with Petals' and
hivemind's flag spellings serving a model a client generates with."""
import signal
import subprocess


import pytest

import kwaai
from conftest import python_with_kwaai


def start(module, *args):
    python, env = python_with_kwaai()
    return subprocess.Popen([python, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def read_until(process, prefix):
    for line in process.stdout:
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"{prefix!r} never printed:\n{process.stderr.read()}")


def stop(process):
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err


def test_run_dht_and_run_server_serve_a_model(tiny_model, model, tmp_path):
    dht = start("kwaai.cli.run_dht", "--host-maddrs", "/ip4/127.0.0.1/tcp/0")
    server = None
    try:
        line = read_until(dht, "Running a DHT instance.")
        (maddr,) = line.split("--initial_peers ")[1].split()
        assert maddr.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/12D3KooW" in maddr
        server = start("kwaai.cli.run_server", str(tiny_model), "--initial_peers", maddr, "--block_indices", "0:4",
                       "--dht_prefix", "cli-llama", "--throughput", "2.5", "--host_maddrs", "/ip4/127.0.0.1/tcp/0",
                       "--identity-path", str(tmp_path / "server.key"), "--torch_dtype", "float32")
        assert read_until(server, "Serving blocks") == f"Serving blocks 0:4 of {tiny_model} under 'cli-llama'"
        server_maddr = read_until(server, "Full list of visible multiaddresses: ").split(": ")[1]
        server_peer = server_maddr.split("/p2p/")[1]
        assert (tmp_path / "server.key").exists()

        with kwaai.DHT(initial_peers=[maddr]) as client_dht:
            record = client_dht.get("cli-llama.0", latest=True)
            assert record is not None and server_peer in record.value
            with kwaai.AutoDistributedModelForCausalLM.from_pretrained(
                tiny_model, dht=client_dht, dht_prefix="cli-llama", max_retries=3
            ) as cli_model:
                ids = cli_model.encode("One server, four blocks")
                expected = model.generate(ids, max_new_tokens=8, min_new_tokens=8)
                with cli_model.inference_session(max_length=64) as session:
                    assert session.route() == []
                    assert cli_model.generate(ids, max_new_tokens=8, min_new_tokens=8) == expected
                    assert session.route() == [(server_peer, 0, 4)]
    finally:
        for process in (server, dht):
            if process is not None:
                stop(process)


def test_server_arguments_are_checked(tiny_model):
    with pytest.raises(kwaai.InvalidArgumentError, match="start:end"):
        kwaai.Server(tiny_model, block_indices="3")
    with pytest.raises(kwaai.InvalidArgumentError, match="past the model"):
        kwaai.Server(tiny_model, block_indices="0:9")
    with pytest.raises(kwaai.InvalidArgumentError, match="throughput"):
        kwaai.Server(tiny_model, block_indices=(0, 1), throughput=0)
    with pytest.raises(kwaai.InvalidArgumentError, match="float16"):
        kwaai.Server(tiny_model, block_indices="0:1", torch_dtype="float16")


def test_a_server_leaves_the_swarm_on_shutdown(tiny_model, swarm):
    with kwaai.DHT(initial_peers=swarm) as dht:
        with kwaai.Server(tiny_model, initial_peers=swarm, block_indices="1:3", dht_prefix="leaving",
                          update_period=1.0) as server:
            assert server.is_running and server.block_indices == (1, 3) and server.dht_prefix == "leaving"
            online = dht.get("leaving.1", latest=True)
            assert online is not None and server.peer_id in online.value
        assert not server.is_running
        offline = dht.get("leaving.1", latest=True).value[server.peer_id].value
        # The record Petals servers write: (state, throughput, ...) with OFFLINE = 0.
        assert offline[0] == 0



def test_num_blocks_serves_the_blocks_the_swarm_lacks(tiny_model, swarm):
    with kwaai.Server(tiny_model, initial_peers=swarm, block_indices="0:2", dht_prefix="partly") as first:
        with kwaai.Server(tiny_model, initial_peers=swarm, num_blocks=2, dht_prefix="partly") as second:
            assert first.block_indices == (0, 2)
            assert second.block_indices == (2, 4)
    with pytest.raises(kwaai.InvalidArgumentError, match="not both"):
        kwaai.Server(tiny_model, initial_peers=swarm, block_indices="0:1", num_blocks=1)
