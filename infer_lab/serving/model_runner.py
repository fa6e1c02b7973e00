"""Execution: turn a step's scheduled chunks into model forwards over the paged cache.

One step runs at most two forwards, whatever the number of requests:

* every chunk of one token (decodes, mostly) in a single (B, 1) forward, and
* every longer chunk (prefills, chunks of prefills) in a single (B, T) forward, each
  row left-padded to T = the longest chunk.

Keeping the two apart means decodes are never padded to a prompt's length; batching
within each means a step costs two forwards, not one per request (nano-vllm's
ModelRunner does the same split). Left padding puts every row's last token in the last
column, so ``last_only`` logits are the ones that sample the next token.

A request with a ``constraint`` (constrained output) has its row of logits masked to the
tokens the constraint allows before sampling, and the constraint advanced by the token.

Sampling is per request, and so are its faults: a row whose logits are NaN or whose
sampler raises is reported in the second half of :meth:`ModelRunner.execute`'s answer,
and the other rows still get their tokens (the engine aborts only that request).
"""

from __future__ import annotations

import torch

from ..generate import check_logits, make_generator, sample
from ..model import Transformer
from .paged_attention import PagedKVCache
from .scheduler import ScheduledChunk
from .sequence import Sequence


class Generators:
    """Each seeded request's own random stream, kept beside the model that samples.

    Created on a request's first sample from ``sampling.seed`` (so a request draws the
    same tokens whatever else is batched with it), kept across preemption, dropped with
    :meth:`release` when the request ends. The requests themselves stay plain data.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._streams: dict[int, torch.Generator | None] = {}

    def __getitem__(self, seq: Sequence) -> torch.Generator | None:
        if seq.seq_id not in self._streams:
            self._streams[seq.seq_id] = make_generator(seq.sampling, self.device)
        return self._streams[seq.seq_id]

    def __setitem__(self, seq: Sequence, gen: object) -> None:
        self._streams[seq.seq_id] = gen  # type: ignore[assignment] - tests inject faults

    def release(self, seq_id: int) -> None:
        self._streams.pop(seq_id, None)

    def __len__(self) -> int:
        return len(self._streams)


class ModelRunner:
    def __init__(self, model: Transformer, cache: PagedKVCache):
        self.model, self.cache = model, cache
        self.generators = Generators(model.device)
        self.num_forwards = 0

    @torch.inference_mode()
    def execute(self, chunks: list[ScheduledChunk]
                ) -> tuple[dict[int, int], dict[int, Exception]]:
        """Run the chunks. Returns (seq_id -> next token for the chunks that reach their
        end, seq_id -> the exception that sampling that request raised).

        A forward that raises propagates: the engine decides what to retry.
        """
        singles = [c for c in chunks if c.num_tokens == 1]
        longer = [c for c in chunks if c.num_tokens > 1]
        out: dict[int, int] = {}
        errors: dict[int, Exception] = {}
        for group in (longer, singles):
            if group:
                toks, errs = self._forward(group)
                out.update(toks)
                errors.update(errs)
        return out, errors

    def _forward(self, chunks: list[ScheduledChunk]
                 ) -> tuple[dict[int, int], dict[int, Exception]]:
        T = max(c.num_tokens for c in chunks)
        rows = []
        for c in chunks:
            if c.start + c.num_tokens == len(c.seq) and c.num_tokens == 1:
                toks = [c.seq.last_token]  # a decode: skip copying the whole sequence
            else:
                toks = c.seq.tokens[c.start:c.start + c.num_tokens]
            rows.append([0] * (T - len(toks)) + toks)
        idx = torch.tensor(rows, dtype=torch.long, device=self.cache.device)  # (B, T)
        batch = self.cache.prepare([c.seq.block_table for c in chunks],
                                   [c.start for c in chunks],
                                   [c.num_tokens for c in chunks], T)
        logits = self.model(idx, batch, batch.pos, last_only=True)[:, -1]  # (B, V)
        self.num_forwards += 1
        return self._sample(chunks, logits)

    def _sample(self, chunks: list[ScheduledChunk], logits: torch.Tensor
                ) -> tuple[dict[int, int], dict[int, Exception]]:
        rows = [i for i, c in enumerate(chunks) if c.samples]  # mid-prompt chunks don't
        out: dict[int, int] = {}
        errors: dict[int, Exception] = {}
        if not rows:
            return out, errors
        constrained = [i for i in rows if chunks[i].seq.constraint is not None]
        for i in constrained:  # before the check: a mask that allows nothing fails the row
            seq = chunks[i].seq
            try:
                allowed = seq.constraint.allowed(seq.max_tokens - len(seq.output))  # (V,)
                logits[i].masked_fill_(~allowed.to(logits.device), float("-inf"))
            except Exception as e:  # noqa: BLE001 - this request's constraint failed
                errors[seq.seq_id] = e
        rows = [i for i in rows if chunks[i].seq.seq_id not in errors]
        # One finiteness check for the batch; a bad row fails alone, not its neighbours.
        bad = ((torch.isnan(logits) | torch.isposinf(logits)).any(-1)
               | torch.isneginf(logits).all(-1))  # (B,)
        for i in rows:
            if bad[i]:
                try:
                    check_logits(logits[i:i + 1])
                except ValueError as e:
                    errors[chunks[i].seq.seq_id] = e
        rows = [i for i in rows if not bad[i]]
        greedy = [i for i in rows if chunks[i].seq.sampling.greedy]
        if greedy:  # one argmax for the whole batch
            toks = sample(logits[greedy]).tolist()
            out.update((chunks[i].seq.seq_id, t) for i, t in zip(greedy, toks))
        for i in rows:
            seq = chunks[i].seq
            if not seq.sampling.greedy:
                try:
                    out[seq.seq_id] = int(sample(logits[i:i + 1], seq.sampling,
                                                 self.generators[seq]))
                except Exception as e:  # noqa: BLE001 - this request's fault, not the batch's
                    errors[seq.seq_id] = e
        for i in constrained:  # the constraint follows the token just sampled
            seq = chunks[i].seq
            if seq.seq_id in out:
                try:
                    seq.constraint.advance(out[seq.seq_id])
                except Exception as e:  # noqa: BLE001
                    errors[seq.seq_id] = e
                    del out[seq.seq_id]
        return out, errors
