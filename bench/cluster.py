"""Cluster: the relay as several nodes sharing Redis (the README's "Several nodes").

Each node is ``gunicorn -c deploy/gunicorn.conf.py wsgi:app`` (one gevent worker)
with ``SOCKETIO_MESSAGE_QUEUE`` pointing at a redis-server started here on a free
loopback port, its own ``NODE_ID``, the demo model at 50 tokens/s (200 ms TTFT) and
the per-user limits lifted. Two measurements:

1. **Streams per node**: the capacity scenario's sustained load (same lateness,
   delivered fraction and pass criterion) on 1 node and on 3 nodes, clients spread
   evenly over the nodes and connected to them directly (each stream is then on the
   local path: the node emits to its own client with ``ignore_queue=True``). The
   nodes share this machine's cores: the figure to read is the total CPU.
2. **Queue path**: per-chunk CPU of a stream delivered through Redis pub/sub.
   ``local``: each stream is started on node A over a connection to A and read
   there. ``cross``: started on A, and after its first chunk the client opens a
   connection to node B (same source address, so the same identity), sends
   ``resume {id, token, after}`` with the chat ack's ``resume_token`` and closes
   its connection to A; from then on A's chunks reach the client through Redis.
   Both report CPU µs per delivered chunk on A, on B and in redis-server.

Chunk coalescing is off (``COALESCE_WINDOW_MS=0``) so that a chunk is an event.

    python -m bench.cluster [--quick] [--levels 100,200,300] [--nodes 1,3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import capacity
from .capacity import CapacityConfig
from .common import (
    DEMO_PROMPT,
    cpu_us_per,
    expected_text,
    invalid_reasons,
    judge,
    level_figures,
    verdict,
)
from .loadgen import Generators, Job, SioClient, StreamRecord, _main, _summarise, merge
from .procstat import CpuMeter, cpu_seconds, percentile
from .servers import LOGS, ROOT, Server, free_port, stop, unwind_on_signals

RESULTS = ROOT / "bench" / "results"
RESUME_ATTEMPTS = 30
RESUME_RETRY_SECONDS = 0.1


@dataclass
class ClusterConfig:
    nodes: tuple[int, ...] = (1, 3)
    levels: tuple[int, ...] = (100, 200, 300)  # total streams over all nodes
    queue_streams: int = 100
    queue_duration: float = 14.0
    queue_warmup: float = 4.5
    capacity: CapacityConfig = field(
        default_factory=lambda: CapacityConfig(levels=(), quiet_wait=20.0)
    )


QUICK_CLUSTER = ClusterConfig(
    nodes=(1, 3),
    levels=(30,),
    queue_streams=20,
    queue_duration=6.0,
    queue_warmup=2.0,
    capacity=CapacityConfig(
        levels=(), tokens=50, duration=3.0, warmup=1.2, parts=2, quiet_wait=0.0
    ),
)


# -- the processes -------------------------------------------------------------------


class RedisServer:
    """A redis-server on a free loopback port, no persistence; ``pid`` is its own."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server") or shutil.which(
            "redis-server", path="/usr/sbin:/usr/bin"
        )
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="bench-redis-")
        LOGS.mkdir(parents=True, exist_ok=True)
        self._log = open(LOGS / f"redis-{self.port}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--dir", self._dir.name],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 10
        while self.command("PING") != "+PONG":
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer")
            time.sleep(0.05)

    def command(self, *words: str) -> str:
        """One inline command over a raw socket (the bench imports no redis client)."""
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall((" ".join(words) + "\r\n").encode())
                return s.recv(4096).decode().strip()
        except OSError:
            return ""

    def stop(self) -> None:
        stop(self.proc, 10)
        self._log.close()
        self._dir.cleanup()


def start_node(name: str, redis: RedisServer, ttft: float, rate: float) -> Server:
    port = free_port()
    env = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "ASYNC_MODE": "gevent",
        "WORKER_CONNECTIONS": "10000",
        "SOCKETIO_MESSAGE_QUEUE": redis.url,
        "NODE_ID": name,
        "LLM_PROVIDER": "demo",
        "DEMO_TTFT": str(ttft),
        "DEMO_TOKENS_PER_SECOND": str(rate),
        "COALESCE_WINDOW_MS": "0",
        "SYSTEM_PROMPT": "",
        # Every client has its own address (loadgen.source_address); these only
        # keep the benchmark's clients clear of the per-user limits.
        "CHATS_PER_MINUTE": "100000",
        "MAX_STREAMS_PER_IDENTITY": "100",
        "MAX_CONCURRENT_PER_CONNECTION": "10",
    }
    args = [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py"]
    return Server(f"node-{name}", args + ["wsgi:app"], env, port, "/healthz", True)


class Cluster:
    """``count`` nodes (a, b, c, …) on one fresh Redis, started in parallel."""

    def __init__(self, count: int, ttft: float, rate: float):
        self.redis = RedisServer()
        self.nodes: list[Server] = []
        names = "abcdefgh"[:count]
        with ThreadPoolExecutor(count) as pool:
            futures = [
                pool.submit(start_node, n, self.redis, ttft, rate) for n in names
            ]
            errors = []
            for future in futures:
                try:
                    self.nodes.append(future.result())
                except Exception as exc:  # noqa: BLE001  (stop the others first)
                    errors.append(exc)
        if errors:
            self.stop()
            raise errors[0]
        time.sleep(1.0)  # heartbeats and control channels subscribed

    def pids(self) -> dict[str, int]:
        found = {f"node-{n.name[-1]}": n.worker for n in self.nodes}
        found["redis"] = self.redis.pid
        return found

    def stop(self) -> None:
        with ThreadPoolExecutor(max(len(self.nodes), 1)) as pool:
            list(pool.map(lambda n: n.stop(), self.nodes))
        self.redis.stop()


# -- 1. streams per node -------------------------------------------------------------


class NodeGenerators(Generators):
    """The load generator's processes, each at its own node: slots spread evenly."""

    def __init__(self, job: Job, urls: list[str]):  # noqa: D107
        context = multiprocessing.get_context("spawn")
        self.pipes, self.procs = [], []
        count = len(urls)
        shares = [job.slots // count + (i < job.slots % count) for i in range(count)]
        first = 0
        for index, (url, share) in enumerate(zip(urls, shares, strict=True)):
            if share <= 0:
                continue
            parent, child = context.Pipe()
            fields = asdict(job) | {
                "url": url,
                "slots": share,
                "seed": job.seed * 100 + index,
                "first_slot": first,  # a source address of its own, machine-wide
            }
            first += share
            proc = context.Process(target=_main, args=(child, fields), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)


def run_level(nodes: int, streams: int, config: CapacityConfig) -> dict[str, Any]:
    cluster = Cluster(nodes, config.ttft, config.rate)
    try:
        urls = [n.url for n in cluster.nodes]
        # At least two generator processes, as the capacity scenario has.
        urls = urls * 2 if nodes == 1 else urls
        job = capacity.sustained_job(
            config, "sio", urls[0], streams, "demo", DEMO_PROMPT, parts=config.parts
        )
        pids = cluster.pids()
        waited = _wait_quiet(pids, config.quiet_wait)
        generators = NodeGenerators(job, urls)
        try:
            ready = generators.wait_ready()
            meter = CpuMeter(pids)
            go = generators.go()
            _sleep_until(go + job.warmup)
            meter.start()
            _sleep_until(go + job.duration)
            cpu = meter.stop()
            results = generators.results(timeout=job.stream_timeout + 60)
        finally:
            generators.close()
    finally:
        cluster.stop()
    phase = merge(results)
    phase["cpu"] = cpu
    cpu["generators"] = [g["cpu_cores"] for g in phase["generators"]]
    known = sum(v for k, v in cpu.items() if k not in ("machine", "generators"))
    known += sum(c or 0 for c in cpu["generators"])
    cpu["other"] = round(max(cpu["machine"] - known, 0.0), 3)
    invalid = invalid_reasons(phase)
    level: dict[str, Any] = {
        "nodes": nodes,
        "streams": streams,
        **level_figures(phase),
    }
    level["finishes"] = phase["finishes"]
    level["connect_failures"] = phase["connect_failures"]
    level["connect_errors"] = phase["connect_errors"]
    level["ready"] = ready
    level["tokens_per_s_offered"] = round(
        streams * config.tokens / config.stream_seconds, 1
    )
    level["tokens_per_s_delivered"] = phase["window_tokens_per_s"]
    node_cpu = {k: v for k, v in cpu.items() if k.startswith("node-")}
    level["node_cpu_cores"] = node_cpu
    level["nodes_cpu_cores"] = round(sum(node_cpu.values()), 3)
    level["redis_cpu_cores"] = cpu.get("redis")
    level["total_server_cpu_cores"] = round(
        level["nodes_cpu_cores"] + (cpu.get("redis") or 0), 3
    )
    level["generator_cpu_cores"] = cpu["generators"]
    level["generator_loop_lag_p99_ms"] = [
        g["loop_lag_p99_ms"] for g in phase["generators"]
    ]
    level["other_cpu_cores"] = cpu["other"]
    level["machine_cpu_cores"] = cpu["machine"]
    level["waited_for_quiet_s"] = waited
    level["cpu_us_per_token"] = cpu_us_per(
        level["total_server_cpu_cores"], phase["window_tokens_per_s"]
    )
    level["invalid"] = invalid
    judge(level, phase["connect_failures"], streams)
    return level


def _wait_quiet(pids: dict[str, int], max_wait: float) -> float:
    """As common.wait_quiet, for any set of processes."""
    from .common import MAX_OTHER_CORES

    started = time.monotonic()
    while max_wait:
        meter = CpuMeter(pids)
        meter.start()
        time.sleep(1.0)
        cpu = meter.stop()
        other = cpu["machine"] - sum(v for k, v in cpu.items() if k != "machine")
        if other < MAX_OTHER_CORES or time.monotonic() - started >= max_wait:
            break
    return round(time.monotonic() - started, 1)


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# -- 2. the queue path ----------------------------------------------------------------


class _Stream:
    """One request's record, fed by whichever connection carries it; seq dedupes."""

    def __init__(self, record: StreamRecord):
        self.record = record
        self.request_id = ""
        self.last_seq = -1  # seq counts from 0
        self.first: asyncio.Future = asyncio.get_running_loop().create_future()
        self.ended: asyncio.Future = asyncio.get_running_loop().create_future()

    def event(self, name: str, data: dict[str, Any], now: float) -> None:
        if data.get("id") != self.request_id or self.ended.done():
            return
        if name == "chunk":
            seq = data.get("seq", self.last_seq + 1)
            if seq <= self.last_seq:
                return  # already had it from the other connection
            self.last_seq = seq
            self.record.text_event(now, data["delta"])
            if not self.first.done():
                self.first.set_result(None)
        elif name == "error" and data.get("code") == "resume_denied":
            return  # the resume's ack says so too: the client retries it
        elif name in ("done", "error"):
            self.end(now, "done" if name == "done" else data.get("code", "error"))

    def end(self, now: float, how: str) -> None:
        if self.record.finish is None:
            self.record.end, self.record.finish = now, how
        for future in (self.first, self.ended):
            if not future.done():
                future.set_result(None)


class _Conn(SioClient):
    """A raw Socket.IO connection that feeds a ``_Stream`` and returns acks."""

    def __init__(self, url: str, slot: int):
        super().__init__(url, slot)
        self.stream: _Stream | None = None
        self.acks: dict[int, asyncio.Future] = {}
        self.next_ack = 0

    async def _read(self) -> None:
        loads, monotonic = json.loads, time.monotonic
        with contextlib.suppress(Exception):
            async for message in self.ws:
                if message == "2":
                    await self.ws.send("3")
                elif message.startswith("42") and self.stream is not None:
                    name, data = loads(message[2:])[:2]
                    self.stream.event(name, data, monotonic())
                elif message.startswith("43"):
                    body = message[2:]
                    digits = len(body) - len(body.lstrip("0123456789"))
                    future = self.acks.pop(int(body[:digits]), None)
                    if future is not None and not future.done():
                        future.set_result(loads(body[digits:])[0])
        if self.stream is not None and self.stream.record.finish is None:
            # Only the connection still carrying the stream ends it.
            self.stream.end(monotonic(), "closed")

    async def call(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.next_ack += 1
        future = asyncio.get_running_loop().create_future()
        self.acks[self.next_ack] = future
        await self.ws.send(f"42{self.next_ack}" + json.dumps([event, payload]))
        return await asyncio.wait_for(future, 10)


async def _one_stream(
    a_url: str, b_url: str | None, slot: int, fields: dict[str, Any], number: int
) -> tuple[StreamRecord, str | None, int]:
    record = StreamRecord(start=time.monotonic())
    stream = _Stream(record)
    stream.request_id = f"s{slot}-{number}"
    a, b = _Conn(a_url, slot), None
    problem, retries = None, 0
    try:
        await a.connect()
        a.stream = stream
        payload = {
            "id": stream.request_id,
            "message": fields["prompt"],
            "options": {"max_tokens": fields["max_tokens"]},
        }
        record.start = time.monotonic()
        ack = await a.call("chat", payload)
        if not ack.get("ok"):
            raise RuntimeError(f"chat refused: {ack}")
        if b_url is not None:
            await asyncio.wait_for(stream.first, fields["stream_timeout"])
            b = _Conn(b_url, slot)
            await b.connect()
            b.stream = stream
            # The owner mirrors a new stream to Redis within its flush interval
            # (50 ms), later under load; until then B denies the resume: retry.
            for attempt in range(RESUME_ATTEMPTS):  # noqa: B007  (reported)
                resume = {
                    "id": stream.request_id,
                    "token": ack["resume_token"],
                    "after": stream.last_seq,
                }
                reply = await b.call("resume", resume)
                code = (reply.get("error") or {}).get("code")
                if reply.get("ok") or code != "resume_denied":
                    break
                retries += 1
                await asyncio.sleep(RESUME_RETRY_SECONDS)
            if not reply.get("ok"):
                raise RuntimeError(
                    f"resume refused after {attempt + 1} attempts, "
                    f"seq {stream.last_seq}: {reply}"
                )
            a.stream = None  # from now on the stream reaches us through B only
            await a.close()
        await asyncio.wait_for(stream.ended, fields["stream_timeout"])
    except Exception as exc:  # noqa: BLE001  (recorded; the slot goes on)
        problem = f"{type(exc).__name__}: {exc}"[:200]
        stream.end(time.monotonic(), "failed")
    finally:
        await asyncio.gather(
            *(c.close() for c in (a, b) if c is not None), return_exceptions=True
        )
    return record, problem, retries


async def _queue_phase(fields: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(fields["seed"])
    go, duration, warmup = fields["go"], fields["duration"], fields["warmup"]
    window = (go + warmup, go + duration)
    records: list[StreamRecord] = []
    problems: list[str] = []
    resume_retries: list[int] = []
    cpu: dict[str, float] = {}

    async def slot(index: int) -> None:
        await asyncio.sleep(
            max(0.0, go + rng.uniform(0, fields["stagger"]) - time.monotonic())
        )
        number = 0
        while time.monotonic() < go + duration:
            number += 1
            record, problem, retries = await _one_stream(
                fields["a_url"], fields["b_url"], index, fields, number
            )
            records.append(record)
            resume_retries.append(retries)
            if problem:
                problems.append(problem)

    async def meter() -> None:
        await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
        cpu["start"] = cpu_seconds()
        await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
        cpu["end"] = cpu_seconds()

    first = fields["first_slot"]
    await asyncio.gather(meter(), *(slot(first + i) for i in range(fields["slots"])))
    job = Job(
        kind="sio",
        url=fields["a_url"],
        slots=fields["slots"],
        mode="sustained",
        prompt=fields["prompt"],
        max_tokens=fields["max_tokens"],
        expected_text=fields["expected_text"],
        rate=fields["rate"],
    )
    measured = [r for r in records if r.start >= window[0]]
    summary = _summarise(job, measured)
    return {
        "summary": summary,
        "window_events": sum(
            1 for r in records for t in r.chunk_times if window[0] <= t <= window[1]
        ),
        "window_s": window[1] - window[0],
        "problems": problems,
        "resume_retries": resume_retries,
        "cpu_cores": round((cpu["end"] - cpu["start"]) / (window[1] - window[0]), 3),
    }


def _count_finishes(summaries: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for summary in summaries:
        for name, count in summary["finishes"].items():
            counts[name] = counts.get(name, 0) + count
    return counts


def _queue_main(conn: Any, fields: dict[str, Any]) -> None:
    try:
        conn.send(("result", asyncio.run(_queue_phase(fields))))
    except BaseException as exc:  # noqa: BLE001  (reported to the parent)
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))


def queue_case(cross: bool, config: ClusterConfig) -> dict[str, Any]:
    cap = config.capacity
    cluster = Cluster(2, cap.ttft, cap.rate)
    processes = 2
    try:
        a, b = cluster.nodes
        pids = cluster.pids()
        waited = _wait_quiet(pids, cap.quiet_wait)
        go = time.monotonic() + 3.0  # the generator processes' imports
        context = multiprocessing.get_context("spawn")
        pipes, procs = [], []
        shares = [config.queue_streams // processes] * processes
        shares[0] += config.queue_streams % processes
        first = 0
        for index, share in enumerate(shares):
            fields = {
                "a_url": a.url,
                "b_url": b.url if cross else None,
                "slots": share,
                "first_slot": first,
                "seed": index,
                "go": go,
                "duration": config.queue_duration,
                "warmup": config.queue_warmup,
                "stagger": cap.stream_seconds,
                "prompt": DEMO_PROMPT,
                "max_tokens": cap.tokens,
                "expected_text": expected_text("demo", DEMO_PROMPT, cap.tokens),
                "rate": cap.rate,
                "stream_timeout": cap.stream_seconds + 10,
            }
            first += share
            parent, child = context.Pipe()
            proc = context.Process(
                target=_queue_main, args=(child, fields), daemon=True
            )
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        meter = CpuMeter(pids)
        _sleep_until(go + config.queue_warmup)
        meter.start()
        _sleep_until(go + config.queue_duration)
        cpu = meter.stop()
        results = []
        for pipe in pipes:
            if not pipe.poll(cap.stream_seconds + 60):
                raise RuntimeError("no word from a queue-path generator")
            message, data = pipe.recv()
            if message != "result":
                raise RuntimeError(f"queue-path generator failed: {data}")
            results.append(data)
        for proc in procs:
            proc.join(10)
    finally:
        for proc in locals().get("procs", []):
            if proc.is_alive():
                proc.terminate()
        cluster.stop()
    summaries = [r["summary"] for r in results]
    pooled = {
        "tokens_expected": sum(s["tokens_expected"] for s in summaries),
        "tokens_delivered": sum(s["tokens_delivered"] for s in summaries),
        "lateness": [v for s in summaries for v in s["lateness"]],
        "ttft": [v for s in summaries for v in s["ttft"]],
    }
    window = max(r["window_s"] for r in results)
    chunks_per_s = sum(r["window_events"] for r in results) / window
    generators = [r["cpu_cores"] for r in results]
    known = sum(cpu[k] for k in pids) + sum(generators)
    other = round(max(cpu["machine"] - known, 0.0), 3)
    invalid = [
        f"generator {i} saturated ({c:.2f} cores)"
        for i, c in enumerate(generators)
        if c >= 0.9
    ]
    if other >= 0.35:
        invalid.append(f"other work on the machine ({other:.2f} cores)")
    problems = [p for r in results for p in r["problems"]]
    retries = [n for r in results for n in r["resume_retries"]]

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    return {
        "case": "cross" if cross else "local",
        "streams": config.queue_streams,
        "streams_measured": sum(s["streams"] for s in summaries),
        "streams_complete": sum(s["complete"] for s in summaries),
        "finishes": _count_finishes(summaries),
        "delivered_fraction": round(
            pooled["tokens_delivered"] / max(pooled["tokens_expected"], 1), 5
        ),
        "lateness_p50_ms": ms(percentile(pooled["lateness"], 50)),
        "lateness_p99_ms": ms(percentile(pooled["lateness"], 99)),
        "ttft_p50_ms": ms(percentile(pooled["ttft"], 50)),
        "chunks_per_s": round(chunks_per_s, 1),
        "cpu_cores": {k: cpu[k] for k in pids},
        "cpu_us_per_chunk": {k: cpu_us_per(cpu[k], chunks_per_s) or 0.0 for k in pids},
        "generator_cpu_cores": generators,
        "other_cpu_cores": other,
        "machine_cpu_cores": cpu["machine"],
        "waited_for_quiet_s": waited,
        "problems": len(problems),
        "resume_retries": sum(retries),
        "streams_resume_retried": sum(1 for n in retries if n),
        "resume_retries_max": max(retries, default=0),
        "problem_examples": problems[:5],
        "invalid": invalid,
    }


# -- the run ---------------------------------------------------------------------


def run(config: ClusterConfig, log=print) -> dict[str, Any]:
    out: dict[str, Any] = {"levels": [], "queue": []}
    for nodes in config.nodes:
        for streams in config.levels:
            try:
                level = run_level(nodes, streams, replace(config.capacity))
            except Exception as exc:  # noqa: BLE001  (reported; the run goes on)
                level = {"nodes": nodes, "streams": streams, "error": str(exc)[:500]}
            out["levels"].append(level)
            log(f"  cluster {nodes} node(s), {streams} streams: {_short(level)}")
    for cross in (False, True):
        try:
            case = queue_case(cross, config)
        except Exception as exc:  # noqa: BLE001
            case = {"case": "cross" if cross else "local", "error": str(exc)[:500]}
        out["queue"].append(case)
        log(f"  queue path {case['case']}: {json.dumps(case.get('cpu_us_per_chunk'))}")
    return out


def _short(level: dict[str, Any]) -> str:
    if "error" in level:
        return "error: " + level["error"]
    return (
        f"delivered {level['delivered_fraction']}, lateness p99 "
        f"{level['lateness_p99_ms']} ms, nodes cpu {level['node_cpu_cores']}, "
        f"redis {level['redis_cpu_cores']} -> {verdict(level)}"
    )


def print_figures(result: dict[str, Any]) -> None:
    for level in result["levels"]:
        name = f"cluster.{level['nodes']}node.{level['streams']}"
        if "error" in level:
            print(f"{name}.error: {level['error']}")
            continue
        state = "INVALID " if level["invalid"] else ""
        print(f"{name}.delivered_fraction: {state}{level['delivered_fraction']}")
        print(f"{name}.lateness_p99_ms: {state}{level['lateness_p99_ms']}")
        print(f"{name}.streams_per_node: {level['streams'] / level['nodes']:g}")
        print(f"{name}.nodes_cpu_cores: {level['nodes_cpu_cores']}")
        print(f"{name}.redis_cpu_cores: {level['redis_cpu_cores']}")
        print(f"{name}.machine_cpu_cores: {level['machine_cpu_cores']}")
        print(f"{name}.cpu_us_per_token: {level['cpu_us_per_token']}")
        print(f"{name}.verdict: {verdict(level)}")
    for nodes in sorted({lv["nodes"] for lv in result["levels"]}):
        best = 0
        for level in result["levels"]:
            if level["nodes"] != nodes or "error" in level:
                continue
            if level["passes"] and not level["invalid"]:
                best = max(best, level["streams"])
            elif not level["invalid"] or level["gross_failure"]:
                break
        print(f"cluster.{nodes}node.capacity_streams: {best}")
    for case in result["queue"]:
        name = f"cluster.queue.{case['case']}"
        if "error" in case:
            print(f"{name}.error: {case['error']}")
            continue
        state = "INVALID " if case["invalid"] else ""
        for key in ("node-a", "node-b", "redis"):
            print(
                f"{name}.cpu_us_per_chunk.{key}: {state}{case['cpu_us_per_chunk'][key]}"
            )
        print(f"{name}.chunks_per_s: {case['chunks_per_s']}")
        print(f"{name}.delivered_fraction: {case['delivered_fraction']}")
        print(f"{name}.lateness_p99_ms: {case['lateness_p99_ms']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--levels", help="total streams, comma-separated")
    parser.add_argument("--nodes", help="node counts, comma-separated (default 1,3)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    unwind_on_signals()
    config = replace(QUICK_CLUSTER if args.quick else ClusterConfig())
    if args.levels:
        config.levels = tuple(int(n) for n in args.levels.split(","))
    if args.nodes:
        config.nodes = tuple(int(n) for n in args.nodes.split(","))
    started = time.time()

    def log(line: str) -> None:
        print(f"[{time.time() - started:6.0f} s] {line}", file=sys.stderr, flush=True)

    result = run(config, log)
    result["meta"] = {
        "command": " ".join(["python -m bench.cluster", *(argv or sys.argv[1:])]),
        "config": asdict(config),
        "duration_s": round(time.time() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    path = args.out / f"cluster-{stamp}.json"
    path.write_text(json.dumps(result, indent=1))
    print_figures(result)
    print(f"duration_s: {result['meta']['duration_s']}")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
