"""The generation engine: a pre-allocated KV cache, decode steps replayed as CUDA graphs.

Every answer the project generates goes through ``Decoder.run`` (the chat pane, ``chat
--prompt``, the suites, the probes, lm-eval's generation tasks). One call takes a batch of
token rows (left-padded here), prefills them in one eager forward, then decodes:

- the KV cache is transformers' ``StaticCache``, kept per (batch, length bucket) and reset
  between calls, so every decode step has the same shapes and addresses;
- the attention mask is ours: a [batch, 1, q, cache] additive mask (so transformers builds
  none per step and never asks the device whether padding exists); the decode mask is
  updated in place, one column a step;
- on CUDA a decode step (forward, greedy pick, the in-place updates of the next step's
  inputs) is captured once as a CUDA graph and replayed: one launch a token instead of a
  thousand (``mode="graph"``); ``mode="compile-graph"`` captures the same step with the
  model under ``torch.compile`` (Inductor fuses the small ops; its graph breaks cost nothing
  inside one captured graph); ``mode="compile"`` is plain ``torch.compile(mode="reduce-overhead")``
  of the forward (measured in benchmarks/generate.py); on CPU steps run eagerly;
- tokens come back through a pinned buffer a few steps behind the device, so the host
  reads them (for streaming, end of answer, stop requests) without stalling the GPU.

Sibling layers (q/k/v, gate/up) whose weights lie back to back compute one product a step
(``engine.chat.sibling_products``). Adapters are routed per row by ``engine.chat.routing.Route`` (no PEFT mixed-batch path). A
4-bit base decodes on a bf16 copy of its weights where memory allows (``engine.chat.base_copy``),
made before any graph is captured and kept with the graphs until ``release()``; each
``Result.notes`` says which path the 4-bit base ran on.
"""

from __future__ import annotations

import inspect
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.chat import base_copy
from engine.chat.liger_compile import keep_liger_out_of_compile
from engine.chat.sibling_products import SiblingProducts
from engine.model.memory import kv_cache_bytes

MODES = ("auto", "eager", "graph", "compile-graph", "compile")
MODE_ENV = "LEVIATHAN_DECODE_MODE"  # overrides "auto" (benchmarks, or a model that needs eager)
BUCKET = 256  # cache lengths are rounded up to this: fewer distinct graphs
LAG = 2  # decode steps the host may trail the device by
MASKS_OK = ("sdpa", "eager", "leviathan_varlen")


@dataclass
class Result:
    tokens: list[list[int]]  # each row's answer, without its stop token
    hit_stop: list[bool]
    first_token_s: float | None  # from the call to the first token on the host
    seconds: float
    t_last: list[float | None]  # per row: when its last token reached the host (perf_counter)
    t_first: float | None
    mode: str
    notes: list[str] = field(default_factory=list)
    # Host seconds of a call's one-off parts: "copy" (planning a 4-bit base's copy, merging an
    # adapter in) and "capture" (the first decode step run eagerly, then captured as a graph).
    phases: dict[str, float] = field(default_factory=dict)


def core_model(model):
    """The transformers model under PEFT's wrappers (its forward takes cache and masks)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) and hasattr(model, "peft_config") else model


class Decoder:
    """Generation for one model. Keeps caches and captured graphs until ``release()``."""

    def __init__(
        self, model, mode: str = "auto", base: str = "auto", free_bytes: Callable[[], int] | None = None
    ) -> None:
        """``base``: the bf16 copy of a 4-bit base (``engine.chat.base_copy``: auto, on, off);
        ``free_bytes()``: the free-memory query its guard asks (the device's by default)."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: one of {MODES}")
        if base not in base_copy.CHOICES:
            raise ValueError(f"base {base!r}: one of {base_copy.CHOICES}")
        from engine.model import decode_attention, rope_rows

        decode_attention.install()  # a step's attention reads the K/V cache once (not repeated per head)
        rope_rows.install()  # Liger's RoPE compiled once for every batch size (not once per size)
        self.model = model
        self.core = core_model(model)
        first = next(p for p in self.core.parameters() if p.device.type != "meta")
        self.device, self.dtype = first.device, self._compute_dtype()
        if mode == "auto":
            import os

            mode = os.environ.get(MODE_ENV) or ("graph" if self.device.type == "cuda" else "eager")
            if mode not in MODES[1:]:
                raise ValueError(f"{MODE_ENV}={mode!r}: one of {MODES[1:]}")
        self.mode = mode
        if self.device.type != "cuda":
            self.mode = "eager"
        params = inspect.signature(self.core.forward).parameters
        self._new_cache_api = "cache" in params  # transformers >= 5.2x: `cache`, no cache_position
        self._caches: dict[tuple[int, int], object] = {}
        self._graphs: dict[tuple, object] = {}
        self._compiled = None
        self._inductor = None  # compile-graph: the model compiled without cudagraphs
        self.notes: list[str] = []
        self._base_choice, self._free = base, free_bytes
        self._base: tuple[base_copy.BaseCopy | None, str | None] | None = None  # (copy, note) once planned
        self._siblings: SiblingProducts | None = None
        self._base_route = None  # the base-only route a merged copy decodes with
        self.capture_note: str | None = None  # why this engine's decode steps run eagerly
        self.phases: dict[str, float] = {}  # this call's one-off parts (Result.phases)
        self.one_off: dict[str, float] = {}  # the same, summed over the calls since release()
        self.spent = {"prompt": 0.0, "steps": 0, "step_s": 0.0}  # the calls' prompts and steps, since too

    def _compute_dtype(self):
        emb = self.core.get_input_embeddings()
        return emb.weight.dtype if emb is not None else torch.float32

    @property
    def usable(self) -> str | None:
        """Why this engine cannot run the model (None: it can)."""
        attn = getattr(self.core.config, "_attn_implementation", None) or "sdpa"
        if attn not in MASKS_OK:
            return f"attention {attn!r} takes no custom mask"
        return None

    def release(self) -> None:
        """Give back the caches and graphs (a training run wants its memory)."""
        self._caches.clear()
        self._graphs.clear()
        self._compiled = None
        self._base = None  # the bf16 copy of a 4-bit base: only ever dropped with the graphs that read it
        self._siblings = None
        self._base_route = None
        self.one_off = {}  # what path_note reports counts from here
        self.spent = {"prompt": 0.0, "steps": 0, "step_s": 0.0}
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def base_note(self) -> str | None:
        """Which path a 4-bit base decodes on (None: no 4-bit base, or not planned yet)."""
        return self._base[1] if self._base is not None else None

    @property
    def path_note(self) -> str | None:
        """What a probe record says of its decode: the base's path, a failed graph capture, the
        one-off seconds since release (a copy made, steps captured), and prompt and step times."""
        notes = [n for n in (self.base_note, self.capture_note) if n]
        if self.one_off:
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in self.one_off.items())
            notes.append(f"one-off: {parts}")
        sp = self.spent
        if sp["steps"]:
            notes.append(
                f"prompts {sp['prompt']:.2f} s, {sp['steps']} steps in {sp['step_s']:.2f} s"
                f" ({1e3 * sp['step_s'] / sp['steps']:.1f} ms a step)"
            )
        return "; ".join(notes) or None

    def _base_copy(self, rows: int, length: int, route):
        """The bf16 copy of a 4-bit base, planned once (before any graph reads it) until release;
        the first call's KV cache (transformers allocates it at the first forward) is counted.
        A bf16 base's copy is planned at the first route to one adapter (to merge it in)."""
        if self._base is None:
            four_bit = bool(base_copy.four_bit_layers(self.core))
            merge = (
                not four_bit
                and self._one_adapter(route)
                and base_copy.covers(self.model, base_copy.plain_layers(self.core), route.names[0])
            )
            if not (four_bit or merge):
                return None
            cache = kv_cache_bytes(self.core.config, rows, length, torch.finfo(self.dtype).bits // 8)
            self._base = base_copy.plan(self.core, self.device, self._base_choice, self._free, cache, merge)
        copy, note = self._base
        if note:
            self.notes.append(note)
        return copy

    def _one_adapter(self, route) -> bool:
        names = set(route.names) if route is not None and route.supported else {None}
        return len(names) == 1 and None not in names and base_copy.merge_wanted(self.device)

    def _merged(self, copy, route, rows: int):
        """A route to one adapter over the base's copy (a 4-bit base's, or a bf16 base's made to
        merge into): the adapter merged into the copy and the layers run base only (what a merged
        model decodes); otherwise, or where the copy lacks a layer of the adapter, the route as given."""
        if copy is None:
            return route
        if not self._one_adapter(route) or not base_copy.covers(self.model, copy.layers, route.names[0]):
            copy.merge(self.model, None, None)  # the base as it is (no adapter left merged in)
            return route
        copy.merge(self.model, route.names[0], route.key)
        base_only = self._base_route
        if base_only is None or len(base_only.names) != rows:
            from engine.chat.routing import Route

            base_only = self._base_route = Route(self.model, [None] * rows)
        self.notes.append(f"the adapter merged into the bf16 copy ({route.names[0]})")
        return base_only

    # -- one forward ---------------------------------------------------------------------

    def _shape(self, batch: int, length: int):
        """The cache and step buffers of one shape; at most two shapes stay allocated (a graph
        of an evicted shape goes with it: it recorded those addresses)."""
        from transformers import StaticCache

        key = (batch, length)
        if key not in self._caches:
            for old in list(self._caches)[:-1]:
                del self._caches[old]
                for g in [g for g in self._graphs if g[1:3] == old]:
                    del self._graphs[g]
            cache = StaticCache(config=self.core.config, max_cache_len=length)
            self._caches[key] = (cache, _State.buffers(batch, length, self.device, self.dtype))
        return self._caches[key]

    def _forward(self, ids, mask, pos, cpos, cache, forward=None):
        kw = {"cache": cache} if self._new_cache_api else {"past_key_values": cache, "cache_position": cpos}
        out = (forward if forward is not None else self.core)(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **kw
        )
        return out.logits[:, -1, :]

    # -- a whole call --------------------------------------------------------------------

    @torch.no_grad()
    def run(
        self,
        rows: list[list[int]],
        *,
        max_new_tokens: int,
        stop_ids: set[int],
        pad_id: int = 0,
        route=None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        on_token: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Result:
        """Answer every row; ``on_token(row, token)`` sees each token as it reaches the host
        (stop tokens included), ``should_stop()`` is asked between tokens."""
        t0 = time.perf_counter()
        if route is not None and not route.supported:
            raise ValueError(f"route not supported: {route.reason}")
        greedy = temperature <= 0
        n, width = len(rows), max(len(r) for r in rows)
        length = -(-(width + max_new_tokens) // BUCKET) * BUCKET
        dev = self.device
        cache, buffers = self._shape(n, length)
        st = _State(n, width, length, rows, pad_id, dev, self.dtype, buffers)
        cache.reset()
        out = _Tokens(n, max_new_tokens, stop_ids, on_token, dev)
        t_copy = time.perf_counter()
        copy = self._base_copy(n, length, route)
        route = self._merged(copy, route, n)
        self.phases = {"copy": time.perf_counter() - t_copy} if copy is not None else {}
        route_ctx = route if route is not None else _nothing()
        if self._siblings is None:
            self._siblings = SiblingProducts(self.core, self.device)
        # The copy's forwards go in last: on a bf16 base they replace the siblings' own.
        with route_ctx, self._siblings, copy if copy is not None else _nothing():
            logits = self._forward(st.prompt, st.prefill_mask(), st.prompt_pos, st.prompt_cpos, cache)
            st.begin_decode(_pick(logits, greedy, temperature, top_p))
            out.push(st.ids)
            out.drain(0)
            t_first = time.perf_counter()
            step = self._stepper(st, cache, route, greedy, temperature, top_p, copy)
            for _ in range(max_new_tokens - 1):
                if out.all_done or (should_stop and should_stop()):
                    break
                step()
                out.push(st.ids)
                out.drain(LAG if dev.type == "cuda" else 0)
            out.drain(0)
        t_end = time.perf_counter()
        notes, self.notes = self.notes, []
        for k, v in self.phases.items():
            self.one_off[k] = self.one_off.get(k, 0.0) + v
        # What the calls since release() spent where: prompts to their first token, then steps
        # (capture included): a probe record says whether its time went to setup or to decoding.
        self.spent["prompt"] += t_first - t0
        self.spent["steps"] += out.step - 1
        self.spent["step_s"] += t_end - t_first - self.phases.get("capture", 0.0)
        return Result(
            tokens=out.answers(),
            hit_stop=out.hit,
            first_token_s=t_first - t0,
            seconds=time.perf_counter() - t0,
            t_last=out.t_last,
            t_first=t_first,
            mode=self._mode_used,
            notes=notes,
            phases=self.phases,
        )

    def _stepper(self, st, cache, route, greedy, temperature, top_p, copy=None) -> Callable[[], None]:
        fused = None
        if self.mode == "compile-graph":
            # Inductor fuses the small ops (norms, rope, activations); graph breaks cost nothing
            # because the whole step, compiled parts and eager parts, is captured as one graph.
            if self._inductor is None:
                keep_liger_out_of_compile()
                self._inductor = torch.compile(self.core, dynamic=False, fullgraph=False)
            fused = self._inductor

        def eager_step():
            logits = self._forward(st.ids, st.mask, st.pos, st.cpos, cache, fused)
            st.advance(_pick(logits, greedy, temperature, top_p))

        self._mode_used = "eager"
        if self.mode == "eager":
            return eager_step
        if self.mode == "compile":
            return self._compiled_step(st, cache, greedy, temperature, top_p)
        # A bf16 base's copy comes after graphs may have been captured on its own weights.
        key = (route.key if route is not None else None, st.rows, st.length, greedy, id(copy) if copy else 0)
        self._mode_used = self.mode
        graph = self._graphs.get(key, (None,))[0]

        def graph_step():
            nonlocal graph
            if graph is None:
                # This step runs eagerly on a side stream (kernels load, cuBLAS sets up), then
                # the same step is captured for the next ones.
                t0 = time.perf_counter()
                stream = torch.cuda.Stream(self.device)
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):
                    eager_step()
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = self._capture(st, cache, greedy, stream, fused)
                if graph is None:
                    self._mode_used = "eager"
                    graph = eager_step
                else:
                    # The route holds the adapter matrices the graph reads: they live together.
                    self._graphs[key] = (graph, route)
                self.phases["capture"] = time.perf_counter() - t0
                return
            if graph is eager_step:
                eager_step()
            elif greedy:
                graph.replay()
            else:
                graph.replay()
                st.advance(_pick(graph.logits, False, temperature, top_p))

        return graph_step

    def _capture(self, st, cache, greedy, stream, fused=None):
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, stream=stream, capture_error_mode="thread_local"):
                logits = self._forward(st.ids, st.mask, st.pos, st.cpos, cache, fused)
                if greedy:
                    st.advance(logits.argmax(-1))
            g.logits = logits
            return g
        except Exception as e:  # a model that syncs inside its forward: eager steps still work
            note = f"decode steps ran eagerly: CUDA graph capture failed ({type(e).__name__}: {e})"
            self.notes.append(note[:300])
            self.capture_note = note[:300]
            self.mode = "eager"
            torch.cuda.synchronize(self.device)
            return None

    def _compiled_step(self, st, cache, greedy, temperature, top_p):
        if self._compiled is None:
            keep_liger_out_of_compile()
            self._compiled = torch.compile(
                lambda ids, mask, pos, cpos, c: self._forward(ids, mask, pos, cpos, c),
                mode="reduce-overhead",
                dynamic=False,
                fullgraph=False,
            )
        fn = self._compiled
        self._mode_used = "compile"

        def step():
            logits = fn(st.ids, st.mask, st.pos, st.cpos, cache)
            st.advance(_pick(logits, greedy, temperature, top_p))

        return step


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


class _State:
    """The decode step's inputs, in fixed buffers updated in place (what a graph replays on).

    ``buffers`` (ids, mask, pos, cpos) are the decoder's for this shape, the same on every
    call of that shape, so a captured graph finds them at the addresses it recorded.
    """

    def __init__(self, rows: int, width: int, length: int, prompts, pad_id: int, dev, dtype, buffers) -> None:
        self.rows, self.width, self.length, self.dtype = rows, width, length, dtype
        prompt = torch.full((rows, width), pad_id, dtype=torch.long)
        valid = torch.zeros((rows, length), dtype=torch.bool)
        for i, r in enumerate(prompts):
            prompt[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            valid[i, width - len(r) : width] = True
        self.prompt = prompt.to(dev)
        self.valid = valid.to(dev)
        self.prompt_pos = (self.valid[:, :width].long().cumsum(-1) - 1).clamp(min=0)
        self.prompt_cpos = torch.arange(width, device=dev)
        self.ids, self.mask, self.pos, self.cpos = buffers
        self.min = torch.finfo(dtype).min

    @staticmethod
    def buffers(rows: int, length: int, dev, dtype) -> tuple:
        return (
            torch.zeros((rows, 1), dtype=torch.long, device=dev),
            torch.zeros((rows, 1, 1, length), dtype=dtype, device=dev),
            torch.zeros((rows, 1), dtype=torch.long, device=dev),
            torch.zeros((1,), dtype=torch.long, device=dev),
        )

    def prefill_mask(self):
        # Causal and not padding; a padding query sees itself (no empty softmax rows, no NaN).
        w, L, dev = self.width, self.length, self.valid.device
        q = torch.arange(w, device=dev)[:, None]
        causal = torch.arange(L, device=dev)[None, :] <= q
        allowed = (causal[None] & self.valid[:, None, :]) | (torch.arange(L, device=dev)[None, :] == q)[None]
        mask = torch.zeros((self.rows, 1, w, L), dtype=self.dtype, device=dev)
        return mask.masked_fill_(~allowed[:, None], self.min)

    def begin_decode(self, first) -> None:
        self.ids.copy_(first.view(-1, 1))
        self.pos.copy_(self.prompt_pos[:, -1:] + 1)
        self.cpos.fill_(self.width)
        self.mask.copy_(torch.where(self.valid, 0.0, self.min).to(self.dtype).view_as(self.mask))
        self.mask.index_fill_(-1, self.cpos, 0.0)

    def advance(self, token) -> None:
        """The next step's inputs from this step's token (all in place, graph-safe)."""
        self.ids.copy_(token.view(-1, 1))
        self.pos.add_(1)
        self.cpos.add_(1)
        self.mask.index_fill_(-1, self.cpos.clamp(max=self.length - 1), 0.0)


def _pick(logits, greedy: bool, temperature: float, top_p: float):
    if greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_p, 1)
        return order.gather(-1, choice).view(-1)
    return torch.multinomial(probs, 1).view(-1)


class _Tokens:
    """Tokens on their way to the host: pinned copies read a few steps behind the device."""

    def __init__(self, rows: int, steps: int, stop_ids: set[int], on_token, dev) -> None:
        self.cuda = dev.type == "cuda"
        self.host = torch.empty((steps, rows), dtype=torch.long, pin_memory=self.cuda)
        self.pending: deque = deque()
        self.step = 0
        self.stop_ids = stop_ids
        self.on_token = on_token
        self.rows: list[list[int]] = [[] for _ in range(rows)]
        self.hit = [False] * rows
        self.t_last: list[float | None] = [None] * rows
        self.all_done = False

    def push(self, ids) -> None:
        slot = self.host[self.step]
        slot.copy_(ids.view(-1), non_blocking=self.cuda)
        event = None
        if self.cuda:
            event = torch.cuda.Event()
            event.record()
        self.pending.append((self.step, event))
        self.step += 1

    def drain(self, keep: int) -> None:
        while len(self.pending) > keep:
            s, event = self.pending.popleft()
            if event is not None:
                event.synchronize()
            now = time.perf_counter()
            for i, tok in enumerate(self.host[s].tolist()):
                if self.hit[i]:
                    continue
                if tok in self.stop_ids:
                    self.hit[i] = True
                else:
                    self.rows[i].append(tok)
                self.t_last[i] = now
                if self.on_token:
                    self.on_token(i, tok)
            self.all_done = all(self.hit)

    def answers(self) -> list[list[int]]:
        return self.rows
