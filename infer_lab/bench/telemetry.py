"""What the inference monitor costs: decode with telemetry off vs on and connected.

``python -m infer_lab.bench telemetry`` decodes the same tokens (greedy, batch 1) with
the publisher off, as in plain Python, and on, attached to a fake comm that serialises
every message to JSON as a real comm would. Runs alternate so that drift on a busy
machine hits both sides alike; the figure is the ratio of median times (aim: < 1.02).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from .. import telemetry
from ..generate import generate


class JsonChannel:
    """A stand-in for a comm: keeps each message, after the JSON encoding a comm does."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.bytes = 0

    def send(self, data: dict[str, Any]) -> None:
        self.bytes += len(json.dumps(data))
        self.messages.append(data)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="code-m", help="zoo model (code-m)")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens per call (256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per side (5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is steadier "
                             "on a busy machine)")


def per_token_seconds(n: int = 20_000) -> float:
    """What one token costs the publisher when on (a trace's counter, clock and flushes)."""
    pub = telemetry.Publisher()
    pub.attach(JsonChannel())
    pub.subscribe("bench")
    trace = telemetry.RequestTrace("generate", pub)
    t0 = time.perf_counter()
    for _ in range(n):
        trace.token()
    return (time.perf_counter() - t0) / n


def measure(model: Any, prompt: list[int], new_tokens: int, repeats: int) -> dict[str, Any]:
    """Median seconds per call with telemetry off and on (restores the publisher after),
    and each call's seconds under ``times_s``.

    Alternates by hand rather than with :func:`~infer_lab.bench.interleaved_times`: the
    switch between sides (attach, subscribe) must stay outside the timed call.
    """
    pub, saved = telemetry.publisher, (telemetry.publisher.channel,
                                       set(telemetry.publisher.subscribers))
    channel = JsonChannel()
    times: dict[str, list[float]] = {"off": [], "on": []}
    watch = [telemetry.observer]  # as in a lab after connect(): listening only when "on"
    try:
        generate(model, [prompt], new_tokens, observers=watch)  # warm up
        for _ in range(repeats):
            for side in ("off", "on"):
                pub.attach(channel if side == "on" else None)
                if side == "on":
                    pub.subscribe("bench")
                t0 = time.perf_counter()
                generate(model, [prompt], new_tokens, observers=watch)
                times[side].append(time.perf_counter() - t0)
    finally:
        pub.attach(saved[0])
        for client in saved[1]:
            pub.subscribe(client)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    return {"off_s": off, "on_s": on, "ratio": on / off,
            "messages_per_call": len(channel.messages) / repeats,
            "bytes_per_call": channel.bytes / repeats, "times_s": times}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ..zoo import load_zoo

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_zoo(args.model, torch.device("cpu"), torch.float32)
    prompt = tok.encode("def read_config(path):\n")
    if getattr(args, "quick", False):  # the plumbing only
        args.new_tokens, args.repeats = min(args.new_tokens, 16), 1
    r = measure(model, prompt, args.new_tokens, args.repeats)
    times = r.pop("times_s")  # reported under "timings", like every bench's repeats
    print(f"{args.model}, greedy, batch 1, {args.new_tokens} new tokens, median of "
          f"{args.repeats}, {torch.get_num_threads()} threads")
    print(f"telemetry off:             {r['off_s'] * 1e3:8.1f} ms/call")
    print(f"telemetry on (fake comm):  {r['on_s'] * 1e3:8.1f} ms/call, "
          f"{r['messages_per_call']:.1f} messages, {r['bytes_per_call'] / 1e3:.1f} kB per call")
    per_token_runs = [per_token_seconds() for _ in range(args.repeats)]
    per_token = statistics.median(per_token_runs)
    step = r["off_s"] / args.new_tokens
    print(f"per token when on: {per_token * 1e6:.2f} us = {per_token / step:.3%} of a "
          f"{step * 1e3:.2f} ms decode step")
    print(f"telemetry_overhead: {r['ratio']:.4f}  (on / off, aim < 1.02)")
    return {"ratios": {"telemetry_overhead": r["ratio"], "per_token_fraction": per_token / step},
            "per_token_s": per_token, **r,
            "timings": {"telemetry off": times["off"], "telemetry on": times["on"],
                        "publisher per token": per_token_runs}}


if __name__ == "__main__":  # also runnable on its own: python -m infer_lab.bench.telemetry
    from . import main

    main(["telemetry", *sys.argv[1:]])
