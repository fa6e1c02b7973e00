"""The baselines continuous batching is measured against, on the same model code.

Both run request-level batches: a batch is formed, prefilled together (left-padded,
:func:`infer_lab.generate.prefill`) into a contiguous :class:`~infer_lab.kv_cache.KVCache`
sized for its longest request, then decoded one token per step *until its longest
request finishes*. A request that finishes early keeps its row (its tokens are
discarded) and a request that arrives meanwhile waits for the whole batch:

* :class:`StaticBatcher` waits until ``batch_size`` requests are queued (or the oldest
  has waited ``max_wait_s``), like offline batch inference.
* :class:`DynamicBatcher` takes whatever is queued (up to ``max_batch_size``) as soon
  as the previous batch is done, like a simple request-level server.

With output lengths n_1..n_B, a batch runs max(n_i) decode steps for sum(n_i) useful
tokens, so its utilisation is sum(n_i) / (B * max(n_i)); continuous batching refills
a finished row on the next step instead.

Both implement :class:`~infer_lab.serving.interface.ServingEngine`, as the
:class:`~infer_lab.serving.engine.Engine` does, so one benchmark loop drives all three.
"""

from __future__ import annotations

import time
from collections import deque

import torch

from ..generate import GREEDY, Sampling, check_decoding, check_prompts, prefill, sample
from ..kv_cache import KVCache
from ..model import Transformer
from .interface import EngineLoad, StepRecord, TokenOutput
from .model_runner import Generators
from .sequence import Sequence, Status, TokenConstraint


class _RequestLevelBatcher:
    """Shared machinery: a queue, one batch at a time, run to its longest request."""

    def __init__(self, model: Transformer, max_batch_size: int):
        if max_batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {max_batch_size}")
        self.model = model.eval()
        self.max_batch_size = max_batch_size
        self.waiting: deque[Sequence] = deque()
        self.batch: list[Sequence] = []
        self.cache: KVCache | None = None
        self.records: list[StepRecord] = []
        self.generators = Generators(self.model.device)
        self.num_steps = 0
        self.num_forward_faults = 0  # no fault isolation here: a step that raises stops a server
        self.draining = False  # no more arrivals: a partial batch may start

    def add_request(self, prompt: list[int], max_tokens: int, sampling: Sampling = GREEDY,
                    eos_id: int | None = None, arrival_time: float | None = None, *,
                    constraint: TokenConstraint | None = None) -> Sequence:
        if constraint is not None:
            raise ValueError("constrained output needs the continuous-batching Engine; "
                             f"{type(self).__name__} samples without masks")
        seq = Sequence(prompt, max_tokens, sampling, eos_id, arrival_time)
        seq.prompt = check_prompts(self.model, [seq.prompt], max_tokens)[0]
        check_decoding(self.model, sampling, eos_id)
        self.waiting.append(seq)
        return seq

    def abort(self, seq_id: int) -> None:
        for seq in list(self.waiting) + self.batch:
            if seq.seq_id == seq_id and not seq.is_finished:
                if seq in self.waiting:
                    self.waiting.remove(seq)
                seq.status, seq.finish_reason = Status.FINISHED, "abort"
                self.generators.release(seq_id)
                seq.finish_time = time.perf_counter()

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.batch)

    def _ready(self) -> bool:
        raise NotImplementedError

    @torch.inference_mode()
    def step(self) -> list[TokenOutput]:
        """Start a batch if the policy allows, else decode one token for the batch."""
        start = time.perf_counter()
        prefill_tokens = 0
        if not self.batch:
            if not self.waiting or not self._ready():
                return []
            self.batch = [self.waiting.popleft()
                          for _ in range(min(self.max_batch_size, len(self.waiting)))]
            longest = max(len(s.prompt) for s in self.batch)
            self.cache = KVCache.for_model(self.model, len(self.batch),
                                           longest + max(s.max_tokens for s in self.batch))
            for s in self.batch:
                s.status, s.first_scheduled_time = Status.RUNNING, start
            logits = prefill(self.model, [s.prompt for s in self.batch], self.cache)
            prefill_tokens = len(self.batch) * longest  # padded: all of it is computed
        else:
            last = torch.tensor([s.tokens[-1] for s in self.batch], device=self.model.device)
            # Finished rows still run; pin their position so a long-prompt row that
            # finished early cannot walk past the context while another row goes on.
            pos = self.cache.next_pos.clamp(max=self.model.config.max_seq_len - 1)
            logits = self.model(last[:, None], self.cache, pos[:, None])[:, -1]  # (B, V)
        outputs, now = self._append(logits), time.perf_counter()
        done = all(s.is_finished for s in self.batch)
        self.records.append(StepRecord(
            self.num_steps, start, now, [s.seq_id for s in self.batch], prefill_tokens,
            0 if prefill_tokens else len(self.batch), [],
            [o.seq_id for o in outputs if o.finished], len(self.batch), len(self.waiting),
            0, self.kv_bytes()))
        self.num_steps += 1
        if done:
            self.batch, self.cache = [], None
        return outputs

    def _append(self, logits: torch.Tensor) -> list[TokenOutput]:
        now = time.perf_counter()
        outputs = []
        for i, seq in enumerate(self.batch):
            if seq.is_finished:
                continue  # its row still ran: the waste request-level batching pays
            tok = int(sample(logits[i:i + 1], seq.sampling, self.generators[seq]))
            seq.append_token(tok, now)
            if seq.finish_reason is not None:
                seq.status, seq.finish_time = Status.FINISHED, now
                self.generators.release(seq.seq_id)
            outputs.append(TokenOutput(seq, tok, seq.is_finished))
        return outputs

    def run(self) -> None:
        """Step until every queued request has finished (a last partial batch runs)."""
        self.draining = True
        while self.has_unfinished():
            self.step()
        self.draining = False

    def generate(self, prompts: list[list[int]], max_tokens: int,
                 sampling: Sampling = GREEDY, eos_id: int | None = None) -> list[list[int]]:
        seqs = [self.add_request(p, max_tokens, sampling, eos_id) for p in prompts]
        self.run()
        return [s.output for s in seqs]

    def kv_bytes(self) -> int:
        """Bytes the current batch's contiguous cache reserves."""
        return self.cache.bytes() if self.cache is not None else 0

    def load(self) -> EngineLoad:
        return EngineLoad(len(self.waiting), len(self.batch), self.max_batch_size)

    def kv_usage(self) -> None:
        """No block pool: its KV memory is :meth:`kv_bytes`, in the step records."""
        return None

    def set_draining(self, draining: bool) -> None:
        self.draining = draining


class StaticBatcher(_RequestLevelBatcher):
    """Wait for ``batch_size`` requests, run them to the longest, repeat."""

    def __init__(self, model: Transformer, batch_size: int, max_wait_s: float | None = None):
        super().__init__(model, batch_size)
        self.max_wait_s = max_wait_s

    def _ready(self) -> bool:
        if len(self.waiting) >= self.max_batch_size or self.draining:
            return True
        waited = time.perf_counter() - self.waiting[0].arrival_time
        return self.max_wait_s is not None and waited >= self.max_wait_s


class DynamicBatcher(_RequestLevelBatcher):
    """Batch whatever is waiting (up to ``max_batch_size``), run it to completion."""

    def __init__(self, model: Transformer, max_batch_size: int = 32):
        super().__init__(model, max_batch_size)

    def _ready(self) -> bool:
        return True
