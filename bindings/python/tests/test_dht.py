"""The DHT from Python: hivemind-shaped store/get across a small kwaai swarm."""
import time

import pytest

import kwaai


@pytest.fixture(scope="module")
def swarm():
    first = kwaai.Node.start()
    peers = [first.listen_addrs[0]]
    nodes = [first] + [kwaai.Node.start(initial_peers=peers) for _ in range(2)]
    yield nodes
    for node in nodes:
        node.shutdown()


def test_values_stored_anywhere_are_read_everywhere(swarm):
    expiration = time.time() + 60
    value = {"layers": [0, 1, 2], "name": "llama", "weights": b"\x00\x01", "shape": (2, 3), "ok": True, "x": 1.5}
    assert swarm[0].store("model-info", value, expiration)
    for node in swarm:
        found = node.get("model-info", latest=True)
        assert isinstance(found, kwaai.ValueWithExpiration)
        assert found.value == value
        assert found.expiration_time == expiration
        got_value, got_expiration = found
        assert (got_value, got_expiration) == (value, expiration)
    assert swarm[1].get("nothing here") is None


def test_subkeys_merge_into_a_dictionary(swarm):
    expiration = time.time() + 60
    for i, node in enumerate(swarm):
        assert node.store("block.0", ("online", i), expiration + i, subkey=node.peer_id)
    found = swarm[2].get("block.0", latest=True)
    assert found.expiration_time == expiration + 2
    assert {k: v.value for k, v in found.value.items()} == {n.peer_id: ("online", i) for i, n in enumerate(swarm)}


def test_store_many_and_get_many(swarm):
    expiration = time.time() + 60
    keys = [f"k{i}" for i in range(5)]
    assert swarm[1].store_many(keys, list(range(5)), expiration) == [True] * 5
    found = swarm[2].get_many(keys + ["absent"])
    assert {k: (v.value if v else None) for k, v in found.items()} == {**dict(zip(keys, range(5))), "absent": None}


def test_bad_values_raise(swarm):
    with pytest.raises(TypeError, match="cannot store a set"):
        swarm[0].store("k", {1, 2}, time.time() + 60)
    with pytest.raises(kwaai.InvalidArgumentError):
        swarm[0].store("k", b"x" * (2 << 20), time.time() + 60)
    with pytest.raises(kwaai.InvalidArgumentError, match="differ in length"):
        swarm[0].store_many(["a", "b"], [1], time.time() + 60)


def test_hivemind_shaped_dht():
    with kwaai.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True) as first:
        (maddr,) = first.get_visible_maddrs()
        assert maddr.startswith("/ip4/127.0.0.1/tcp/") and maddr.endswith("/p2p/" + first.peer_id)
        second = kwaai.DHT(initial_peers=[maddr], start=False)
        assert not second.is_alive()
        with pytest.raises(kwaai.ClosedError):
            second.peer_id
        second.run_in_background(await_ready=True)
        assert second.is_alive()
        expiration = time.time() + 60
        assert second.store("experts", {"a": 1}, expiration)
        assert first.store("servers", "up", expiration, subkey="peer-a")
        assert second.store("servers", "down", expiration + 1, subkey="peer-b")
        found = first.get("experts", latest=True)
        assert isinstance(found, kwaai.ValueWithExpiration) and tuple(found) == ({"a": 1}, expiration)
        reader = kwaai.DHT(initial_peers=[maddr])
        servers = reader.get("servers", latest=True)
        reader.shutdown()
        assert servers.expiration_time == expiration + 1
        assert servers.value == {"peer-a": kwaai.ValueWithExpiration("up", expiration),
                                 "peer-b": kwaai.ValueWithExpiration("down", expiration + 1)}
        assert first.get("nothing") is None
        second.shutdown()
        assert not second.is_alive()
        with pytest.raises(kwaai.ClosedError):
            second.get("experts")
    assert not first.is_alive()
