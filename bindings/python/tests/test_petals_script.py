"""examples/python/petals_session.py, a Petals script, runs under kwaai with only its import line
changed, and prints what Petals itself prints for it against the same kwaai swarm."""
from conftest import REPO, run_reference

SCRIPT = REPO / "examples/python/petals_session.py"


def run_script(text, tiny_model, peers, tmp_path, name):
    path = tmp_path / name
    path.write_text(text)
    return run_reference([str(path), str(tiny_model), "tiny-llama", *peers])


def test_the_petals_script_runs_with_only_its_import_changed(tiny_model, swarm_servers, tmp_path):
    # Petals' client finds servers through its daemon's own routing, which kwaai nodes do not
    # serve: it is given the servers' addresses as well as the bootstrap's.
    bootstrap, servers = swarm_servers
    peers = bootstrap + [maddr for server in servers for maddr in server.get_visible_maddrs()]
    petals_text = SCRIPT.read_text()
    kwaai_text = petals_text.replace("from petals import", "from kwaai import")
    changed = [(a, b) for a, b in zip(petals_text.splitlines(), kwaai_text.splitlines()) if a != b]
    assert changed == [("from petals import AutoDistributedModelForCausalLM",
                        "from kwaai import AutoDistributedModelForCausalLM")]

    with_kwaai = run_script(kwaai_text, tiny_model, peers, tmp_path, "with_kwaai.py")
    with_petals = run_script(petals_text, tiny_model, peers, tmp_path, "with_petals.py")
    lines = with_kwaai.splitlines()
    assert len(lines) == 4 and lines[0].startswith("<s>A cat sat"), with_kwaai
    assert with_kwaai == with_petals
