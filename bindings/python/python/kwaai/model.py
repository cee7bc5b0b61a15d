"""`AutoDistributedModelForCausalLM`: Petals' client model, with its blocks on the swarm."""
from __future__ import annotations

import asyncio
import os
import random
import warnings
from types import SimpleNamespace, TracebackType
from typing import Any, AsyncIterator, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Type, Union

from . import _tensors
from ._kwaai import (
    DistributedModel,
    GenerationConfig,
    InferenceSession as NativeInferenceSession,
    InvalidArgumentError,
    Node,
    TokenStream,
)
from .dht import DHT, DEFAULT_HOST_MADDRS

# transformers' default top_k (applied when sampling).
DEFAULT_TOP_K = 50


class Token(NamedTuple):
    """One generated token: its id and the text it adds."""

    id: int
    text: str


class Tokenizer:
    """The model directory's tokenizer.json, called as a transformers tokenizer is."""

    def __init__(self, model: DistributedModel) -> None:
        self._model = model

    def encode(self, text: str) -> List[int]:
        """Token ids of `text`, special tokens added."""
        return self._model.encode(text)

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        """Text of token ids; special tokens (`<s>`, `</s>`, ...) are left out unless
        `skip_special_tokens` is False."""
        rows, two_d = _tensors.token_rows(ids)
        if two_d and len(rows) != 1:
            raise InvalidArgumentError("decode takes one row of token ids")
        return self._model.decode(rows[0], skip_special_tokens)

    def __call__(self, text: str, return_tensors: Optional[str] = None) -> Dict[str, Any]:
        """`{"input_ids": ...}`: a list, or `[1, tokens]` as "pt" (torch) or "np" (numpy)."""
        ids = self.encode(text)
        kinds = {None: "list", "pt": "torch", "np": "numpy"}
        if return_tensors not in kinds:
            raise InvalidArgumentError(f"return_tensors must be None, 'pt' or 'np', not {return_tensors!r}")
        if return_tensors is None:
            return {"input_ids": ids}
        return {"input_ids": _tensors.ids_like([ids], True, kinds[return_tensors])}


class InferenceSession:
    """A session through every block: `step()` hidden states, or pass it to `generate(session=)`.

    A context manager: leaving it closes every server stream.
    """

    def __init__(self, model: "DistributedModelForCausalLM", native: NativeInferenceSession) -> None:
        self._model = model
        self._native = native
        self._previous: Optional[InferenceSession] = None
        # Every token the session's generate() calls saw and produced, as Petals keeps them.
        self.output_ids: List[int] = []

    @property
    def position(self) -> int:
        """Tokens processed so far."""
        return self._native.position

    @property
    def max_length(self) -> int:
        """The most tokens the session may hold."""
        return self._native.max_length

    def step(self, inputs: Any) -> Any:
        """Runs hidden states `[batch, tokens, hidden]` (list, numpy or torch) through every block;
        returns the last block's output in the same kind."""
        data, shape = _tensors.to_bytes(inputs)
        out, out_shape = self._native.step(data, shape)
        return _tensors.from_bytes(out, out_shape, _tensors.kind_of(inputs))

    def route(self) -> List[Tuple[str, int, int]]:
        """The chain of servers now: `(peer id, first block, end block)` per hop."""
        return self._native.route()

    def close(self) -> None:
        """Closes every server stream; calling it again does nothing."""
        self._native.close()

    def __enter__(self) -> "InferenceSession":
        self._previous = self._model._active_session
        self._model._active_session = self
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self._model._active_session = self._previous
        self.close()


class DistributedModelForCausalLM:
    """A causal LM whose embeddings and LM head run here and whose blocks run on the swarm."""

    def __init__(self, native: DistributedModel, node: Node, owns_node: bool) -> None:
        self._native = native
        self._node = node
        self._owns_node = owns_node
        self._active_session: Optional[InferenceSession] = None
        self.tokenizer = Tokenizer(native)
        self.config = SimpleNamespace(
            num_hidden_layers=native.num_blocks,
            hidden_size=native.hidden_size,
            vocab_size=native.vocab_size,
            eos_token_id=native.eos_token_id,
            bos_token_id=native.bos_token_id,
            dht_prefix=native.dht_prefix,
        )

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: Union[str, "os.PathLike[str]"],
        *,
        initial_peers: Optional[Sequence[str]] = None,
        dht_prefix: Optional[str] = None,
        dht: Optional[DHT] = None,
        host_maddrs: Optional[Sequence[str]] = None,
        identity_path: Optional[Union[str, "os.PathLike[str]"]] = None,
        max_retries: Optional[int] = None,
        request_timeout: Optional[float] = None,
        **kwargs: Any,
    ) -> "DistributedModelForCausalLM":
        """Loads the model in a local directory and joins the swarm of `initial_peers` (or uses
        `dht`'s node) as a DHT client. Petals options kwaai does not use (`torch_dtype`, ...) are
        accepted and ignored."""
        if kwargs:
            warnings.warn(f"kwaai ignores these from_pretrained options: {sorted(kwargs)}", stacklevel=2)
        if dht is not None:
            node, owns = dht.node, False
        else:
            if not initial_peers:
                raise InvalidArgumentError("give initial_peers (multiaddrs of peers in the swarm) or dht")
            node = Node.start(
                listen_addrs=list(host_maddrs or DEFAULT_HOST_MADDRS),
                identity_path=identity_path,
                initial_peers=[str(p) for p in initial_peers],
                client_mode=True,
            )
            owns = True
        try:
            native = DistributedModel.load(
                node, model_name_or_path, dht_prefix=dht_prefix, max_retries=max_retries,
                request_timeout=request_timeout,
            )
        except BaseException:
            if owns:
                node.shutdown()
            raise
        return cls(native, node, owns)

    @property
    def dht_prefix(self) -> str:
        """The DHT prefix the blocks are announced under."""
        return self._native.dht_prefix

    @property
    def active_session(self) -> Optional[InferenceSession]:
        """The session entered with `with model.inference_session(...)`, if any."""
        return self._active_session

    def encode(self, text: str) -> List[int]:
        """Token ids of `text`, special tokens added."""
        return self._native.encode(text)

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        """Text of token ids, special tokens skipped unless `skip_special_tokens` is False."""
        return self.tokenizer.decode(ids, skip_special_tokens)

    def inference_session(self, max_length: int) -> InferenceSession:
        """A session for up to `max_length` tokens; servers reserve attention caches for them."""
        return InferenceSession(self, self._native.inference_session(max_length))

    def use_session(self, session: Optional[InferenceSession]) -> InferenceSession:
        """Makes `session` the active one inside a `with` block (as Petals' `use_session`)."""
        if session is None:
            raise InvalidArgumentError("use_session needs a session")
        return session

    def embed(self, input_ids: Any) -> Any:
        """Hidden states `[batch, tokens, hidden]` of token ids, in the input's kind."""
        rows, _ = _tensors.token_rows(input_ids)
        data, shape = self._native.embed(rows)
        return _tensors.from_bytes(data, shape, _tensors.kind_of(input_ids))

    def logits(self, hidden_states: Any) -> Any:
        """Logits `[batch, tokens, vocab]` of hidden states after the last block."""
        data, shape = _tensors.to_bytes(hidden_states)
        out, out_shape = self._native.logits(data, shape)
        return _tensors.from_bytes(out, out_shape, _tensors.kind_of(hidden_states))

    def _config(
        self,
        max_new_tokens: Optional[int],
        max_length: Optional[int],
        prompt_length: int,
        min_new_tokens: Optional[int],
        do_sample: bool,
        temperature: float,
        top_k: Optional[int],
        top_p: float,
        repetition_penalty: float,
        seed: Optional[int],
        eos_token_id: Optional[Union[int, Sequence[int]]],
        stop_strings: Optional[Union[str, Sequence[str]]],
    ) -> GenerationConfig:
        if max_new_tokens is None:
            if max_length is None:
                raise InvalidArgumentError("give max_new_tokens or max_length")
            max_new_tokens = max(0, max_length - prompt_length)
        if eos_token_id is None:
            eos_token_id = self._native.eos_token_id
        stop = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        stop_sequences = [self._native.stop_sequence(text) for text in stop_strings or []]
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens or 0,
            do_sample=do_sample,
            temperature=temperature,
            top_k=DEFAULT_TOP_K if top_k is None else top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            seed=random.getrandbits(64) if seed is None else seed,
            stop_tokens=stop,
            stop_sequences=stop_sequences,
        )

    def generate(
        self,
        inputs: Any = None,
        *,
        max_new_tokens: Optional[int] = None,
        max_length: Optional[int] = None,
        min_new_tokens: Optional[int] = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: Optional[int] = None,
        eos_token_id: Optional[Union[int, Sequence[int]]] = None,
        stop_strings: Optional[Union[str, Sequence[str]]] = None,
        session: Optional[InferenceSession] = None,
        input_ids: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Generates as transformers' `generate` does for one row: returns the prompt followed by
        the new tokens, in the input's kind (torch tensor, numpy array or list) and rank. Inside a
        session (given, or entered with `with model.inference_session(...)`), continues it as
        Petals does: the result holds this call's inputs and new tokens, and `inputs` may be None.
        `stop_strings` end the generation once its tokens end with one of them, each encoded alone
        by the model's tokenizer (transformers' `tokenizer=` argument is accepted and not needed).
        Ctrl-C stops the generation (KeyboardInterrupt)."""
        for name in ("num_beams", "num_return_sequences"):
            if kwargs.pop(name, 1) != 1:
                raise InvalidArgumentError(f"{name} > 1 is not supported")
        kwargs.pop("pad_token_id", None)
        kwargs.pop("tokenizer", None)
        if kwargs:
            warnings.warn(f"kwaai ignores these generate options: {sorted(kwargs)}", stacklevel=2)
        if inputs is None:
            inputs = input_ids
        session = session if session is not None else self._active_session
        rows: List[List[int]]
        if inputs is None:
            if session is None or not session.output_ids:
                raise InvalidArgumentError("give input_ids (or continue a session that generated before)")
            rows, two_d, kind = [[]], True, "torch" if _torch_available() else "list"
        else:
            rows, two_d = _tensors.token_rows(inputs)
            kind = _tensors.kind_of(inputs)
        if len(rows) != 1:
            raise InvalidArgumentError(f"generate takes a batch of one row, not {len(rows)}")
        prompt = rows[0]
        previous = session.output_ids if session is not None else []
        config = self._config(
            max_new_tokens, max_length, len(previous) + len(prompt), min_new_tokens, do_sample, temperature,
            top_k, top_p, repetition_penalty, seed, eos_token_id, stop_strings,
        )
        if session is None:
            new = [token for token, _ in self._native.generate(prompt, config)]
        else:
            # The last token of the previous call was chosen but never run through the blocks.
            new = session._native.generate(self._native, previous[-1:] + prompt, config)
            session.output_ids = previous + prompt + new
        return _tensors.ids_like([prompt + new], two_d, kind)

    def _stream(self, inputs: Any, **options: Any) -> TokenStream:
        rows, _ = _tensors.token_rows(self.encode(inputs) if isinstance(inputs, str) else inputs)
        if len(rows) != 1:
            raise InvalidArgumentError(f"stream takes a batch of one row, not {len(rows)}")
        max_new_tokens = options.pop("max_new_tokens", None)
        config = self._config(
            max_new_tokens, options.pop("max_length", None), len(rows[0]), options.pop("min_new_tokens", None),
            options.pop("do_sample", False), options.pop("temperature", 1.0), options.pop("top_k", None),
            options.pop("top_p", 1.0), options.pop("repetition_penalty", 1.0), options.pop("seed", None),
            options.pop("eos_token_id", None), options.pop("stop_strings", None),
        )
        if options:
            raise InvalidArgumentError(f"unknown stream options: {sorted(options)}")
        return self._native.generate(rows[0], config)

    def stream(self, inputs: Any, **options: Any) -> Iterator[Token]:
        """Yields `Token(id, text)` as each is chosen, after a prompt of ids or text (generate's
        options). Leaving the loop early, or Ctrl-C, cancels the generation."""
        tokens = self._stream(inputs, **options)
        try:
            for token_id, text in tokens:
                yield Token(token_id, text)
        finally:
            tokens.cancel()

    async def astream(self, inputs: Any, **options: Any) -> AsyncIterator[Token]:
        """`stream` for asyncio: `async for token in model.astream(...)`; tokens are awaited on
        a worker thread, so the event loop keeps running. Cancelling the task cancels the
        generation."""
        tokens = self._stream(inputs, **options)
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await loop.run_in_executor(None, next, tokens, None)
                if item is None:
                    return
                yield Token(*item)
        finally:
            tokens.cancel()

    def shutdown(self) -> None:
        """Closes an active session and stops the node the model started (not a DHT it was given)."""
        if self._active_session is not None:
            self._active_session.close()
        if self._owns_node:
            self._node.shutdown()

    def __enter__(self) -> "DistributedModelForCausalLM":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.shutdown()


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class AutoDistributedModelForCausalLM(DistributedModelForCausalLM):
    """Petals' entry point: `AutoDistributedModelForCausalLM.from_pretrained(path, initial_peers=...)`."""


class DistributedLlamaForCausalLM(DistributedModelForCausalLM):
    """Petals' Llama class; any supported family loads through it too."""
