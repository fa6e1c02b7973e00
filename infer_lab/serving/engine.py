"""The serving engine: submit requests, call ``step()`` until they are done.

Continuous batching (Orca, Yu et al. 2022) over a paged KV cache (vLLM, Kwon et al.
2023). Each ``step()`` is one iteration:

    schedule  (Scheduler: who runs, how many tokens each, who is preempted)
    execute   (ModelRunner: <= 2 forwards over the PagedKVCache)
    update    (Scheduler: append tokens, free finished requests' blocks)

and returns the tokens produced, so an asyncio server can call it in a loop and stream
each token to its client, and a benchmark can replay arrivals between steps. State
(Sequence), policy (Scheduler), memory (BlockManager, PagedKVCache) and execution
(ModelRunner) stay apart, as in nano-vllm.

Faults are isolated per request. A request whose sampling raises (or whose logits are
NaN) is aborted alone: finish_reason "error", its blocks freed, the error in its
TokenOutput. A batched forward that raises is retried one request at a time (twice
at most each), which
is safe because nothing of a step is committed before its forward returns (the
scheduler's update and the prefix index run after it): the retry recomputes the same
slots. A transient fault costs one slower step; a request that always makes the
forward raise is found and aborted, and the rest go on. Only a fault in the
bookkeeping itself (scheduling, update), which leaves the engine's state unknown,
propagates out of ``step()``.

Memory the pool saves, the figure a lab draws: a contiguous cache reserves
``max_seq_len`` slots per request up front, a paged one holds
``ceil(len / block_size)`` blocks, so

    waste_contiguous = max_seq_len - len      waste_paged < block_size   (per request)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from .. import observe
from ..generate import GREEDY, Sampling, check_decoding
from ..model import Transformer
from ..validate import token_ids
from .block_manager import BlockManager, PrefixLookup
from .interface import EngineLoad, KVUsage, StepRecord, TokenOutput
from .model_runner import ModelRunner
from .paged_attention import DECODE_ATTENTION, PagedKVCache
from .scheduler import PreemptionPolicy, Scheduler, SchedulerOutput, StepPolicy
from .sequence import Sequence, TokenConstraint

__all__ = ["Engine", "EngineConfig", "EngineLoad", "KVUsage", "StepRecord", "TokenOutput"]

log = logging.getLogger(__name__)
ALONE_ATTEMPTS = 2  # forwards a request gets alone, after a batched one raised, to work


@dataclass
class EngineConfig:
    block_size: int = 16
    num_blocks: int = 512  # KV pool = num_blocks * block_size token slots
    max_num_seqs: int = 32  # running requests at most
    max_num_batched_tokens: int = 512  # token budget of one step
    enable_prefix_caching: bool = True
    chunked_prefill: bool = True
    keep_step_records: bool = True
    # How a decode step reads the pool: "auto" (the Triton paged kernel on a CUDA model
    # with Triton, else block by block in PyTorch), "blocks", "kernel" (Triton) or "cpp"
    # (a compiled CPU kernel reading blocks in place): serving/paged_attention.py.
    decode_attention: str = "auto"

    def __post_init__(self) -> None:
        for name in ("block_size", "num_blocks", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.decode_attention not in DECODE_ATTENTION:
            raise ValueError(f"decode_attention must be one of {', '.join(DECODE_ATTENTION)},"
                             f" got {self.decode_attention!r}")


class Engine:
    """Continuous-batching engine over one model (a :class:`~.interface.ServingEngine`).

        engine = Engine(model, EngineConfig(num_blocks=256))
        seq = engine.add_request(prompt_ids, max_tokens=32)
        while engine.has_unfinished():
            for out in engine.step():
                print(out.seq_id, out.token)
    """

    def __init__(self, model: Transformer, config: EngineConfig | None = None,
                 observers: Seq[observe.Observer] | None = None, *,
                 schedule_policy: StepPolicy | None = None,
                 preemption: PreemptionPolicy | None = None,
                 prefix_lookup: PrefixLookup | None = None):
        self.model = model.eval()
        # Told of every step as plain data (observe.EngineStep); None: observe's defaults,
        # read at each step, so a monitor connected later still hears this engine.
        self.observers = observers
        self.config = c = config or EngineConfig()
        # The policies plug in as functions (lab 06 runs the learner's); None: built in.
        self.block_manager = BlockManager(c.num_blocks, c.block_size, c.enable_prefix_caching,
                                          prefix_lookup)
        self.scheduler = Scheduler(self.block_manager, c.max_num_seqs,
                                   c.max_num_batched_tokens, c.chunked_prefill,
                                   schedule_policy, preemption)
        self.cache = PagedKVCache.for_model(model, c.num_blocks, c.block_size,
                                            c.decode_attention)
        self.runner = ModelRunner(model, self.cache)
        self.requests: dict[int, Sequence] = {}  # unfinished, by seq_id
        self.records: list[StepRecord] = []
        self.num_steps = 0
        self.num_request_errors = 0  # requests aborted by a fault while being served
        self.num_forward_faults = 0  # forwards that raised (each was retried alone)

    # -- requests -----------------------------------------------------------------------
    def add_request(self, prompt: list[int], max_tokens: int, sampling: Sampling = GREEDY,
                    eos_id: int | None = None, arrival_time: float | None = None,
                    priority: int = 0, *, constraint: TokenConstraint | None = None
                    ) -> Sequence:
        """Queue a request; raises ValueError for input that can never be served.

        ``priority``: lower is more important; only a ``preemption`` policy reads it.
        ``constraint``: constrained output (a regex, a JSON schema:
        :class:`infer_lab.app.constrained.Cursor`); it needs ``eos_id``, which ends the
        answer once the constraint accepts.

        The rules are :mod:`infer_lab.validate`'s, as for ``generate`` and the server.
        """
        cfg = self.model.config
        prompt = token_ids("prompt", prompt, cfg.vocab_size)
        check_decoding(self.model, sampling, eos_id)
        if constraint is not None and eos_id is None:
            raise ValueError("a constrained request needs eos_id: EOS is how the answer ends")
        seq = Sequence(prompt, max_tokens, sampling, eos_id, arrival_time,
                       constraint=constraint)
        if seq.max_len > cfg.max_seq_len:
            raise ValueError(f"prompt of {len(seq.prompt)} tokens + max_tokens={max_tokens} "
                             f"exceeds the model's context of {cfg.max_seq_len} tokens")
        self.scheduler.add(seq, priority)  # checks that the request fits the KV pool
        self.requests[seq.seq_id] = seq
        return seq

    def abort(self, seq_id: int) -> None:
        """Cancel a request; its KV blocks are free for the next step."""
        seq = self.requests.pop(seq_id, None)
        if seq is not None:
            self.scheduler.abort(seq)
            self.runner.generators.release(seq_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # -- the loop -------------------------------------------------------------------------
    def step(self) -> list[TokenOutput]:
        """One iteration: schedule, run the model, append tokens. Returns new tokens."""
        start = time.perf_counter()
        out = self.scheduler.schedule()
        if out.is_empty:
            if self.scheduler.has_unfinished():
                raise RuntimeError("scheduler made no progress with requests pending "
                                   "(a bug: every request fits the pool alone)")
            return []
        new_tokens, errors = self._execute(out.chunks)
        failed = [self._fail(c.seq, errors[c.seq.seq_id]) for c in out.chunks
                  if c.seq.seq_id in errors]
        now = time.perf_counter()
        finished = self.scheduler.update(out, new_tokens, now)
        for seq in finished:
            self.requests.pop(seq.seq_id, None)
            self.runner.generators.release(seq.seq_id)
        outputs = [TokenOutput(c.seq, new_tokens[c.seq.seq_id], c.seq.is_finished)
                   for c in out.chunks if c.seq.seq_id in new_tokens]
        outputs += [TokenOutput(seq, None, True, seq.error) for seq in failed]
        if self.config.keep_step_records:
            self.records.append(StepRecord(
                self.num_steps, start, now, [c.seq.seq_id for c in out.chunks],
                out.num_prefill_tokens, out.num_decode_tokens,
                [s.seq_id for s in out.preempted], [s.seq_id for s in finished],
                len(self.scheduler.running), len(self.scheduler.waiting),
                self.block_manager.num_used_blocks,
                self.block_manager.num_used_blocks * self.cache.bytes_per_block()))
        self.num_steps += 1
        watching = observe.listening(self.observers)
        if watching:  # e.g. the JupyterLab monitor: built only when someone listens
            self._report(watching, out, finished, start, now)
        return outputs

    def _report(self, observers: list[observe.Observer], out: SchedulerOutput,
                finished: list[Sequence], start: float, now: float) -> None:
        """Hand each observer this step as plain data; one that raises is logged."""
        queued = list(self.scheduler.waiting) + list(out.preempted)
        phases = [(s.seq_id, "queued") for s in queued]
        phases += [(c.seq.seq_id, "decode" if c.is_decode else "prefill") for c in out.chunks]
        bm = self.block_manager
        step = observe.EngineStep(
            engine=id(self), start=start, end=now, phases=phases,
            finished=[observe.FinishedRequest(s.seq_id, len(s.output), s.ttft, s.tpot)
                      for s in finished],
            num_sampled=sum(1 for c in out.chunks if c.samples),
            kv_used=bm.num_used_blocks, kv_free=bm.num_free_blocks,
            kv_total=self.config.num_blocks, num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting), unfinished=self.has_unfinished())
        for o in observers:
            try:
                o.engine_step(step)
            except Exception:  # noqa: BLE001 - an observer must not stop serving
                log.exception("observer %r failed on step %d; serving goes on", o,
                              self.num_steps)

    def _execute(self, chunks: list) -> tuple[dict[int, int], dict[int, Exception]]:
        """Run the step; if the batched forward raises, run each request alone.

        Alone, a request's forward either works (the fault was transient, or another
        request's) or raises again; it gets one more try, and then that request is the
        one that fails.
        """
        try:
            return self.runner.execute(chunks)
        except Exception as e:  # noqa: BLE001 - isolated below, request by request
            self.num_forward_faults += 1
            log.warning("step %d: batched forward of %d requests raised %r; retrying "
                        "each request alone", self.num_steps, len(chunks), e)
        tokens: dict[int, int] = {}
        errors: dict[int, Exception] = {}
        for c in chunks:
            for attempt in range(ALONE_ATTEMPTS):
                try:
                    toks, errs = self.runner.execute([c])
                except Exception as e:  # noqa: BLE001 - this request fails, not the engine
                    self.num_forward_faults += 1
                    errors[c.seq.seq_id] = e
                else:
                    errors.pop(c.seq.seq_id, None)
                    tokens.update(toks)
                    errors.update(errs)
                    break
        return tokens, errors

    def _fail(self, seq: Sequence, error: Exception) -> Sequence:
        """Abort one request for a fault of its own: free its blocks, keep the reason."""
        seq.error = f"{type(error).__name__}: {error}"
        log.error("request %d failed and was aborted: %s", seq.seq_id, seq.error,
                  exc_info=error)
        self.scheduler.abort(seq, reason="error")
        self.requests.pop(seq.seq_id, None)
        self.runner.generators.release(seq.seq_id)
        self.num_request_errors += 1
        return seq

    def run(self) -> None:
        """Step until every submitted request has finished."""
        while self.has_unfinished():
            self.step()

    def generate(self, prompts: list[list[int]], max_tokens: int,
                 sampling: Sampling = GREEDY, eos_id: int | None = None) -> list[list[int]]:
        """Submit all prompts at once and return each one's output tokens."""
        seqs = [self.add_request(p, max_tokens, sampling, eos_id) for p in prompts]
        self.run()
        return [s.output for s in seqs]

    # -- what a lab or a benchmark reads --------------------------------------------------
    def load(self) -> EngineLoad:
        return EngineLoad(len(self.scheduler.waiting), len(self.scheduler.running),
                          self.config.max_num_seqs, self.block_manager.num_used_blocks,
                          self.block_manager.num_blocks)

    def set_draining(self, draining: bool) -> None:
        """Continuous batching never waits for arrivals: nothing to change."""

    def kv_usage(self) -> KVUsage:
        running = self.scheduler.running
        return KVUsage(
            blocks_used=self.block_manager.num_used_blocks,
            blocks_total=self.config.num_blocks, block_size=self.config.block_size,
            bytes_per_token=self.cache.bytes_per_block() // self.config.block_size,
            tokens=sum(s.num_computed_tokens for s in running), num_running=len(running),
            max_seq_len=self.model.config.max_seq_len,
            reserved_tokens=sum(s.max_len for s in running))

    @property
    def num_preemptions(self) -> int:
        return self.scheduler.num_preemptions
