"""The node lifecycle from Python, and errors raised as kwaai exceptions."""
import os

import pytest

import kwaai


def test_node_lifecycle():
    node = kwaai.Node.start(listen_addrs=["/ip4/127.0.0.1/tcp/0"])
    assert node.is_running
    assert node.peer_id.startswith("12D3KooW")
    (addr,) = node.listen_addrs
    assert addr.startswith("/ip4/127.0.0.1/tcp/")
    assert addr.endswith("/p2p/" + node.peer_id)
    assert "/tcp/0/" not in addr
    node.shutdown()
    assert not node.is_running
    assert node.listen_addrs == []
    node.shutdown()


def test_context_manager_shuts_down():
    with kwaai.Node.start() as node:
        assert node.listen_addrs[0].startswith("/ip4/127.0.0.1/tcp/")
    assert not node.is_running


def test_identity_file_keeps_the_peer_id(tmp_path):
    path = tmp_path / "id.key"
    with kwaai.Node.start(identity_path=path) as first:
        peer = first.peer_id
    assert oct(os.stat(path).st_mode & 0o777) == "0o400"
    with kwaai.Node.start(identity_path=str(path)) as second:
        assert second.peer_id == peer


def test_bad_multiaddr_raises_invalid_argument():
    with pytest.raises(kwaai.InvalidArgumentError) as info:
        kwaai.Node.start(listen_addrs=["not a multiaddr"])
    assert isinstance(info.value, kwaai.KwaaiError)
    assert info.value.kind == "invalid_argument"
    assert "not a multiaddr" in str(info.value)


def test_garbage_identity_file_raises_identity_error(tmp_path):
    path = tmp_path / "bad.key"
    path.write_bytes(b"garbage")
    with pytest.raises(kwaai.IdentityError, match="bad.key"):
        kwaai.Node.start(identity_path=path)


def test_every_core_error_kind_has_its_own_exception_class():
    classes = {cls.kind: cls for cls in vars(kwaai).values() if isinstance(cls, type) and issubclass(cls, kwaai.KwaaiError) and cls is not kwaai.KwaaiError}
    assert sorted(classes) == sorted(name for _, name in kwaai.ERROR_KINDS)
    for code, name in kwaai.ERROR_KINDS:
        assert classes[name].code == code
