"""Lab 06, serving chat requests: conversations sent at once to ``/v1/chat/completions``.

Each client streams its answer (``chat.completion.chunk`` events) and times every token
as it arrives, so the lab can show what continuous batching gives a real model's users:
all answers progress together, and the whole set takes a fraction of what answering
them one at a time would.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

CONVERSATIONS: tuple[tuple[str, str], ...] = (  # (system prompt or "", user message)
    ("", "What is the capital of France?"),
    ("", "Write a Python function that reverses a string."),
    ("You answer in one sentence.", "Why is the sky blue?"),
    ("", "Give three tips for writing readable code."),
    ("", "What does a KV cache store in a transformer?"),
    ("You are a friendly tutor.", "Explain recursion to a beginner."),
    ("", "Translate 'good morning' into Spanish and German."),
    ("", "What is 12 times 13? Answer with the number."),
)


def messages(system: str, user: str) -> list[dict[str, str]]:
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": "user", "content": user}]


@dataclass
class ChatResult:
    question: str
    answer: str = ""
    start: float = 0.0  # when the request was sent (perf_counter seconds)
    token_times: list[float] = field(default_factory=list)  # one per streamed event

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.start

    @property
    def e2e(self) -> float:
        return self.token_times[-1] - self.start


async def _ask(client, url: str, system: str, user: str, max_tokens: int) -> ChatResult:
    body = {"messages": messages(system, user), "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    res = ChatResult(user, start=time.perf_counter())
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(event["error"]["message"])
                res.answer += event["choices"][0]["delta"]["content"]
                res.token_times.append(time.perf_counter())
    return res


async def ask_all(url: str, conversations=CONVERSATIONS, max_tokens: int = 64,
                  at_once: bool = True) -> list[ChatResult]:
    """Every conversation's streamed answer: all sent together, or one after another."""
    import httpx

    async with httpx.AsyncClient(timeout=None) as client:
        if at_once:
            return list(await asyncio.gather(*(_ask(client, url, s, u, max_tokens)
                                               for s, u in conversations)))
        return [await _ask(client, url, s, u, max_tokens) for s, u in conversations]


def progress_figure(runs: dict[str, list[ChatResult]], title: str):
    """Tokens received against time, one line per request, a panel per run."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(runs), shared_yaxes=True,
                        subplot_titles=list(runs))
    t0 = {k: min(r.start for r in rs) for k, rs in runs.items()}
    for col, (label, results) in enumerate(runs.items(), start=1):
        for i, r in enumerate(results):
            fig.add_scatter(x=[t - t0[label] for t in r.token_times],
                            y=list(range(1, len(r.token_times) + 1)), mode="lines",
                            name=f"{i}: {r.question[:30]}", legendgroup=str(i),
                            showlegend=col == 1, row=1, col=col)
        fig.update_xaxes(title_text="seconds since the first request", row=1, col=col)
    fig.update_yaxes(title_text="tokens received", row=1, col=1)
    fig.update_layout(title=title, height=420)
    return fig
