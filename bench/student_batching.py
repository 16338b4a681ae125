"""Student service batching: 32 concurrent HTTP requests vs one in-process batched generation.

Both sides use the same tiny model, the same 32 prompts, the same sampling
(seeded, fixed token budget), measured in one run side by side. Also measures
the HTTP overhead of a single request (service latency minus in-process latency
for the same one-token generation).

The HTTP side is measured with two clients, each round: httpx (what the coordinator uses; about 2.5 ms of
CPU per request, spent on the same two cores as the service) and a minimal HTTP/1.1 client on asyncio
streams (one connection per request, as a fresh httpx client opens them; well under 1 ms per request), so
the ratio of the service's own batching can be told from the bench client's cost.

    .venv/bin/python bench/student_batching.py [--requests 32] [--max-tokens 64] [--repeats 3]

Prints a table and writes bench/results/student_batching.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.models.builtin import ensure_builtin_model  # noqa: E402
from shared.models.transformers_engine import TransformersEngine  # noqa: E402
from shared.schemas.sampling import SamplingParams  # noqa: E402
from shared.settings import ModelServiceConfig  # noqa: E402
from shared.tasks.builtin import builtin_tasks  # noqa: E402
from bench.probes import engine_counters  # noqa: E402
from bench.report import report  # noqa: E402
from tests.service_process import ServiceProcess  # noqa: E402


def prompts(n: int) -> list[str]:
    return [task.question for task in builtin_tasks(split="eval", n=n, seed=123)]


async def http_round(url: str, questions: list[str], max_tokens: int) -> tuple[float, int]:
    async with httpx.AsyncClient(timeout=600) as client:
        async def one(i: int, question: str) -> int:
            response = await client.post(f"{url}/v1/chat/completions", json=request_body(i, question, max_tokens))
            response.raise_for_status()
            return response.json()["usage"]["completion_tokens"]

        started = time.perf_counter()
        tokens = await asyncio.gather(*(one(i, q) for i, q in enumerate(questions)))
        return time.perf_counter() - started, sum(tokens)


def request_body(i: int, question: str, max_tokens: int) -> dict:
    return {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 1.0, "seed": 1000 + i}


async def raw_post(url: str, body: dict) -> dict:
    """POST `body` as JSON over one fresh HTTP/1.1 connection; the decoded JSON answer (2xx only)."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        answer = await reader.readexactly(length)
    finally:
        writer.close()
    if not 200 <= status < 300:
        raise RuntimeError(f"HTTP {status}: {answer[:500]!r}")
    return json.loads(answer)


async def raw_round(url: str, questions: list[str], max_tokens: int) -> tuple[float, int]:
    async def one(i: int, question: str) -> int:
        answer = await raw_post(f"{url}/v1/chat/completions", request_body(i, question, max_tokens))
        return answer["usage"]["completion_tokens"]

    started = time.perf_counter()
    tokens = await asyncio.gather(*(one(i, q) for i, q in enumerate(questions)))
    return time.perf_counter() - started, sum(tokens)


async def inprocess_round(engine: TransformersEngine, questions: list[str], max_tokens: int) -> tuple[float, int]:
    tokenizer = engine.tokenizer
    ids = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in questions
    ]
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in ids]
    started = time.perf_counter()
    outputs = await asyncio.gather(*(
        engine.generate(p, SamplingParams(temperature=1.0, max_tokens=max_tokens, seed=1000 + i))
        for i, p in enumerate(ids)
    ))
    return time.perf_counter() - started, sum(len(o.token_ids) for o in outputs)


async def single_latency_http(url: str, question: str, repeats: int) -> float:
    async with httpx.AsyncClient(timeout=60) as client:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            body = {"messages": [{"role": "user", "content": question}], "max_tokens": 1, "temperature": 0}
            (await client.post(f"{url}/v1/chat/completions", json=body)).raise_for_status()
            times.append(time.perf_counter() - started)
        return statistics.median(times)


async def single_latency_inprocess(engine: TransformersEngine, question: str, repeats: int) -> float:
    tokenizer = engine.tokenizer
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await engine.generate(ids, SamplingParams(temperature=0, max_tokens=1))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def main_async(args) -> dict:
    home = Path(os.environ.get("SCORE_HOME") or tempfile.mkdtemp(prefix="score-bench-"))
    model_dir = ensure_builtin_model("student", home)
    questions = prompts(args.requests)
    # The service's default prefix cache on both sides: rounds repeat the prompts, and both should reuse them alike.
    engine = TransformersEngine(str(model_dir), device="cpu",
                                prefix_cache_mb=ModelServiceConfig.model_fields["prefix_cache_mb"].default)
    await engine.start()
    service = ServiceProcess("student", home=home, log_dir=Path(tempfile.mkdtemp()))
    try:
        service.wait_ready()
        await http_round(service.url, questions, 4)  # warm-up every side
        await raw_round(service.url, questions, 4)
        await inprocess_round(engine, questions, 4)
        rows = []
        counters_before = engine_counters(service.url)
        for _ in range(args.repeats):  # interleaved so both see the same machine noise
            http_s, http_tokens = await http_round(service.url, questions, args.max_tokens)
            raw_s, raw_tokens = await raw_round(service.url, questions, args.max_tokens)
            local_s, local_tokens = await inprocess_round(engine, questions, args.max_tokens)
            rows.append({"http_s": http_s, "http_tokens": http_tokens, "raw_s": raw_s, "raw_tokens": raw_tokens,
                         "local_s": local_s, "local_tokens": local_tokens})
        counters_after = engine_counters(service.url)
        http_latency = await single_latency_http(service.url, questions[0], args.repeats * 5)
        local_latency = await single_latency_inprocess(engine, questions[0], args.repeats * 5)
    finally:
        service.stop()
        await engine.close()
    http_tps = statistics.median(r["http_tokens"] / r["http_s"] for r in rows)
    raw_tps = statistics.median(r["raw_tokens"] / r["raw_s"] for r in rows)
    local_tps = statistics.median(r["local_tokens"] / r["local_s"] for r in rows)
    return {
        "requests": args.requests, "max_tokens": args.max_tokens, "repeats": args.repeats, "model": str(model_dir),
        "service_tokens_per_s": http_tps, "service_tokens_per_s_minimal_client": raw_tps,
        "inprocess_batched_tokens_per_s": local_tps,
        "ratio_service_vs_inprocess": http_tps / local_tps,
        "ratio_service_vs_inprocess_minimal_client": raw_tps / local_tps, "target_ratio": 0.9,
        "single_request_latency_s": {"service": http_latency, "inprocess": local_latency,
                                     "http_overhead_s": http_latency - local_latency},
        "service_engine_counters_during_rounds": {
            k: counters_after.get(k, 0.0) - v for k, v in counters_before.items()
        },
        "rounds": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "student_batching.json"))
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    latency = result["single_request_latency_s"]
    counters = result["service_engine_counters_during_rounds"]
    report([
        (f"service, {result['requests']} concurrent requests, httpx client (tok/s)",
         f"{result['service_tokens_per_s']:.1f}"),
        (f"service, {result['requests']} concurrent requests, minimal client (tok/s)",
         f"{result['service_tokens_per_s_minimal_client']:.1f}"),
        ("in-process batched generation (tok/s)", f"{result['inprocess_batched_tokens_per_s']:.1f}"),
        ("ratio, httpx client (target >= 0.9)", f"{result['ratio_service_vs_inprocess']:.3f}"),
        ("ratio, minimal client (target >= 0.9)", f"{result['ratio_service_vs_inprocess_minimal_client']:.3f}"),
        ("single request via HTTP (ms)", f"{latency['service'] * 1000:.1f}"),
        ("single request in-process (ms)", f"{latency['inprocess'] * 1000:.1f}"),
        ("HTTP overhead (ms)", f"{latency['http_overhead_s'] * 1000:.1f}"),
        ("service batches / requests joined mid-batch",
         f"{counters.get('batches', 0):.0f} / {counters.get('joined_requests', 0):.0f}"),
    ], result, args.out)


if __name__ == "__main__":
    main()
