"""AutoDistributedModelForCausalLM through a loopback swarm of two kwaai servers: every route to the
same greedy tokens, in the input's kind, and transformers' tokens for the same model."""
import asyncio
import json

import numpy
import pytest

import kwaai
from conftest import run_reference

PROMPT = "A small swarm on loopback says:"


def greedy(model, n):
    ids = model.encode(PROMPT)
    return ids, model.generate(ids, max_new_tokens=n, min_new_tokens=n)[len(ids):]


def test_generate_matches_transformers(model, tiny_model):
    ids, new = greedy(model, 16)
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = tok(sys.argv[2], return_tensors='pt').input_ids\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()\n"
        "out = m.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)\n"
        "print(json.dumps(dict(prompt=ids[0].tolist(), new=out[0, ids.shape[1]:].tolist())))\n"
    )
    reference = json.loads(run_reference(["-c", script, str(tiny_model), PROMPT]).splitlines()[-1])
    assert ids == reference["prompt"]
    assert new == reference["new"]
    assert len(set(new)) > 3, "the tiny model should not just repeat one token"


def test_every_route_generates_the_same_tokens(model):
    ids, expected = greedy(model, 10)
    streamed = [t.id for t in model.stream(ids, max_new_tokens=10, min_new_tokens=10)]

    async def collect():
        return [t.id async for t in model.astream(ids, max_new_tokens=10, min_new_tokens=10)]

    assert streamed == expected
    assert asyncio.run(collect()) == expected

    # One token per generate() call inside a session, as Petals' chat loops do.
    with model.inference_session(max_length=len(ids) + 10) as session:
        stepped = []
        inputs = [ids]
        for _ in range(10):
            out = model.generate(inputs, max_new_tokens=1, min_new_tokens=1, session=session)
            stepped.append(out[0][-1])
            inputs = None
        assert session.position == len(ids) + 9
    assert stepped == expected

    # A session entered with `with` is used without passing it, as in Petals.
    with model.inference_session(max_length=len(ids) + 10) as session:
        assert model.active_session is session
        first = model.generate(ids, max_new_tokens=4, min_new_tokens=4)
        rest = model.generate(None, max_new_tokens=6, min_new_tokens=6)
        assert first == ids + expected[:4] and rest == [expected[4:]]
        assert session.output_ids == ids + expected
    assert model.active_session is None

    # The session's own loop: embeddings and LM head here, blocks on the servers.
    with model.inference_session(max_length=len(ids) + 10) as session:
        hidden = model.embed(numpy.array([ids]))
        manual = []
        for _ in range(10):
            out = session.step(hidden)
            assert isinstance(out, numpy.ndarray) and out.shape == (1, hidden.shape[1], 64)
            token = int(model.logits(out[:, -1:])[0, -1].argmax())
            manual.append(token)
            hidden = model.embed(numpy.array([[token]]))
    assert manual == expected


def test_inputs_come_back_in_their_own_kind(model):
    ids = model.encode(PROMPT)
    as_list = model.generate(ids, max_new_tokens=3)
    assert isinstance(as_list, list) and as_list[: len(ids)] == ids and len(as_list) == len(ids) + 3
    two_d = model.generate([ids], max_new_tokens=3)
    assert two_d == [as_list]
    array = model.generate(numpy.array([ids]), max_new_tokens=3)
    assert isinstance(array, numpy.ndarray) and array.dtype == numpy.int64 and array.tolist() == [as_list]
    flat = model.generate(numpy.array(ids), max_new_tokens=3)
    assert flat.shape == (len(ids) + 3,)
    hidden = model.embed([ids])
    assert isinstance(hidden, list) and len(hidden[0]) == len(ids) and len(hidden[0][0]) == 64
    with model.inference_session(max_length=len(ids)) as session:
        out = session.step(hidden)
    assert isinstance(out, list) and numpy.allclose(numpy.array(out), model_step(model, ids), atol=1e-5)


def model_step(model, ids):
    with model.inference_session(max_length=len(ids)) as session:
        return session.step(model.embed(numpy.array([ids])))


def test_text_helpers_and_streamed_text(model):
    ids = model.encode(PROMPT)
    assert model.tokenizer(PROMPT)["input_ids"] == ids
    assert model.tokenizer(PROMPT, return_tensors="np")["input_ids"].tolist() == [ids]
    assert model.decode(ids) == PROMPT
    tokens = list(model.stream(PROMPT, max_new_tokens=8, min_new_tokens=8))
    new_ids = [t.id for t in tokens]
    decoded = model.decode(new_ids)
    text = "".join(t.text for t in tokens)
    assert decoded.startswith(text) and set(decoded[len(text):]) <= {"\ufffd"}


def test_decode_keeps_special_tokens_when_asked_as_transformers_does(model, tiny_model):
    ids = model.encode(PROMPT)
    script = (
        "import json, sys\n"
        "from transformers import AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = json.loads(sys.argv[2])\n"
        "print(json.dumps([tok.decode(ids, skip_special_tokens=s) for s in (True, False)]))\n"
    )
    skipped, kept = json.loads(run_reference(["-c", script, str(tiny_model), json.dumps(ids)]).splitlines()[-1])
    assert skipped != kept, "the prompt should start with a special token"
    assert model.decode(ids) == skipped
    assert model.decode(ids, skip_special_tokens=False) == kept
    assert model.tokenizer.decode([ids], skip_special_tokens=False) == kept


def test_stop_strings_end_the_generation_after_their_tokens(model):
    ids, full = greedy(model, 16)
    stopped_early = 0
    for k in range(2, 12):
        text = model.decode(full[k : k + 2])
        sequence = model._native.stop_sequence(text)
        # Where the stop sequence first ends in the full greedy output, if anywhere.
        ends = [i + 1 for i in range(len(full)) if full[: i + 1][-len(sequence) :] == sequence]
        expected = full[: ends[0]] if ends else full
        # min_new_tokens holds back the end-of-sequence token only, as in transformers.
        out = model.generate(ids, max_new_tokens=16, min_new_tokens=16, stop_strings=[text], tokenizer=None)
        assert out[len(ids) :] == expected, (k, text, sequence)
        streamed = [t.id for t in model.stream(ids, max_new_tokens=16, min_new_tokens=16, stop_strings=text)]
        assert streamed == expected
        stopped_early += len(expected) < len(full)
    assert stopped_early > 0, "no stop string ended a generation early"
    with pytest.raises(kwaai.InvalidArgumentError, match="has no tokens"):
        model.generate(ids, max_new_tokens=4, stop_strings=[""])


def test_a_replayed_stream_yields_its_tokens_and_can_be_cancelled():
    tokens = [(i, f" t{i}") for i in range(300)]
    assert list(kwaai.TokenStream.replay(tokens)) == tokens
    stream = kwaai.TokenStream.replay(tokens)
    assert next(stream) == tokens[0]
    stream.cancel()
    assert stream.closed and list(stream) == []


def test_leaving_a_stream_early_cancels_it(model):
    ids = model.encode(PROMPT)
    stream = model.stream(ids, max_new_tokens=50)
    first = next(stream)
    assert isinstance(first, kwaai.Token)
    stream.close()
    # The servers still answer a full generation afterwards.
    assert len(model.generate(ids, max_new_tokens=4, min_new_tokens=4)) == len(ids) + 4


def test_errors_map_to_kwaai_exceptions(model, swarm, tmp_path):
    with pytest.raises(kwaai.InvalidArgumentError, match="batch of one"):
        model.generate([[1, 2], [3, 4]], max_new_tokens=2)
    with pytest.raises(kwaai.InvalidArgumentError, match="outside the vocabulary"):
        model.generate([1, 99999], max_new_tokens=2)
    with pytest.raises(kwaai.InvalidArgumentError, match="top_p"):
        list(model.stream([1, 2], max_new_tokens=2, do_sample=True, top_p=0.0))
    with pytest.raises(kwaai.InvalidArgumentError, match="not a model directory"):
        kwaai.AutoDistributedModelForCausalLM.from_pretrained(tmp_path / "absent", initial_peers=swarm)
    with pytest.raises(kwaai.InvalidArgumentError, match="initial_peers"):
        kwaai.AutoDistributedModelForCausalLM.from_pretrained(tmp_path)
    session = model.inference_session(max_length=4)
    session.close()
    with pytest.raises(kwaai.ClosedError):
        session.step([[[0.0] * 64]])
    with pytest.raises(kwaai.InvalidArgumentError, match="shape"):
        model.inference_session(max_length=4).step([[[0.0] * 3]])


def test_sampling_is_seeded(model):
    ids = model.encode(PROMPT)
    options = dict(max_new_tokens=12, min_new_tokens=12, do_sample=True, temperature=1.5, top_k=0)
    a = model.generate(ids, seed=7, **options)
    assert a == model.generate(ids, seed=7, **options)
    assert a != model.generate(ids, seed=8, **options)
