"""Where PEARL's draft model runs: beside the target in the same thread (``InlineWorker``), in a
second thread (``ThreadWorker``; on CUDA on its own stream) or in a second process over a
``torch.distributed`` gloo process group (``ProcessWorker``). Each wraps one ``ChainDraft``: the
draft model, its paged cache and the drafting of ``gamma`` tokens per row.

A round's request per live row is ``(row index, keep, feed)``: roll the row's draft cache back
to its first ``keep`` tokens (what is still valid after the last verification), feed ``feed``
(the tokens it has not seen: at least the last one), then draft ``gamma`` tokens. The reply is
the drafted tokens, their draft distributions (sampling only, ``[n, gamma, V]``) and the seconds
the draft side was busy.
"""

from __future__ import annotations

import atexit
import datetime
import os
import pickle
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from leapdec.engine.runner import close_session, open_sequences, plan_extend
from leapdec.engine.sampling import make_generator, warp_logits


class ChainDraft:
    """The draft model's side of PEARL: its cache and ``gamma``-token chains."""

    def __init__(self, draft, gamma: int, sampling: bool, temperature: float, top_k, top_p,
                 page_size: int, seed: int | None):
        self.draft, self.gamma, self.sampling = draft, gamma, sampling
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.page_size, self.seed = page_size, seed
        self.session = None

    def start(self, capacities: list[int]) -> None:
        """A draft sequence per row; ``capacities[i]``: the most tokens row i's draft will hold."""
        self.session, self.seqs = open_sequences(self.draft, capacities, self.page_size)
        self.held: list[list[int]] = [[] for _ in capacities]         # the tokens each cache holds
        self.generator = make_generator(self.seed, self.draft.device) if self.sampling else None

    def finish(self) -> None:
        self.session = close_session(self.session)

    @torch.no_grad()
    def draft_chains(self, requests) -> tuple[list[list[int]], torch.Tensor | None, float, int]:
        """Draft ``gamma`` tokens per request; returns (tokens, draft probs or None, busy seconds,
        draft forwards)."""
        t0 = time.perf_counter()
        cache = self.session.cache
        seqs = [self.seqs[i] for i, _, _ in requests]
        for s, (i, keep, feed) in zip(seqs, requests):
            if not feed:
                raise ValueError("pearl: a draft request must feed at least one token")
            if cache.seq_len(s) < keep:
                raise RuntimeError(f"pearl: the draft cache holds {cache.seq_len(s)} tokens, "
                                   f"the request keeps {keep}")
            cache.truncate(s, keep)
            self.held[i] = self.held[i][:keep] + feed
        feed = [f for _, _, f in requests]
        tokens, probs = [], []
        for _ in range(self.gamma):
            logits = self.draft.forward_paged(plan_extend(cache, seqs, feed, logits="last"), cache)
            if self.sampling:
                q = warp_logits(logits.float(), self.temperature, self.top_k, self.top_p).softmax(-1)
                tok = torch.multinomial(q, 1, generator=self.generator).squeeze(-1)
                probs.append(q)
            else:
                tok = logits.argmax(dim=-1)
            tokens.append(tok)
            if len(tokens) < self.gamma:
                feed = [[t] for t in tok.tolist()]
        out = torch.stack(tokens, 1).tolist()                               # one sync
        for (i, _, _), drafted in zip(requests, out):
            self.held[i] += drafted[:-1]                                    # the last one is not fed
        q = torch.stack(probs, 1) if self.sampling else None
        return out, q, time.perf_counter() - t0, self.gamma


class _Done:
    """An already-computed result (the ``Future`` interface)."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class InlineWorker:
    """No overlap: the draft model drafts before the target runs (PEARL's algorithm, sequential)."""

    def __init__(self, chain: ChainDraft):
        self.chain, self.calls = chain, 0

    def start(self, capacities, options=None) -> None:
        self.calls = 0
        self.chain.start(capacities)

    def submit(self, requests):
        tokens, q, busy, calls = self.chain.draft_chains(requests)
        self.calls += calls
        return _Done((tokens, q, busy))

    def finish(self) -> None:
        self.chain.finish()


class ThreadWorker(InlineWorker):
    """The draft model in a second thread (torch releases the GIL inside ops); on CUDA it runs on
    its own stream, so draft and target kernels overlap on one GPU."""

    def __init__(self, chain: ChainDraft):
        super().__init__(chain)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="leapdec-pearl-draft")
        dev = chain.draft.device
        self.stream = torch.cuda.Stream(device=dev) if dev.type == "cuda" else None

    def _run(self, requests):
        if self.stream is None:
            return self.chain.draft_chains(requests)
        self.stream.wait_stream(torch.cuda.current_stream(self.stream.device))
        with torch.cuda.stream(self.stream):
            out = self.chain.draft_chains(requests)
        self.stream.synchronize()
        return out

    def submit(self, requests):
        inner = self.pool.submit(self._run, requests)
        outer: Future = Future()

        def done(f):
            try:
                tokens, q, busy, calls = f.result()
            except BaseException as e:           # noqa: BLE001 (handed to the caller)
                outer.set_exception(e)
                return
            self.calls += calls
            if q is not None and self.stream is not None:
                q.record_stream(torch.cuda.current_stream(q.device))
            outer.set_result((tokens, q, busy))
        inner.add_done_callback(done)
        return outer

    def finish(self) -> None:
        try:
            self.chain.finish()
        finally:
            self.pool.shutdown(wait=True)


# ------------------------------------------------------------------ two processes (gloo)

_TIMEOUT = datetime.timedelta(seconds=600)
_START_TIMEOUT_S = 120
_ENTRY = "from leapdec.decoding.pearl_workers import _serve; _serve({port}, {device!r}, {threads})"


def _send(pg, obj, dst: int) -> None:
    data = torch.frombuffer(bytearray(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)), dtype=torch.uint8)
    pg.send([torch.tensor([data.numel()], dtype=torch.int64)], dst, 0).wait()
    pg.send([data], dst, 1).wait()


def _recv(pg, src: int):
    size = torch.zeros(1, dtype=torch.int64)
    pg.recv([size], src, 0).wait()
    data = torch.empty(int(size), dtype=torch.uint8)
    pg.recv([data], src, 1).wait()
    return pickle.loads(data.numpy().tobytes())


def _serve(port: int, device: str, threads: int) -> None:
    """The draft process: receive the draft model, then answer start / draft / finish requests
    until close."""
    import torch.distributed as dist

    torch.set_num_threads(threads)
    store = dist.TCPStore("127.0.0.1", port, 2, False, timeout=_TIMEOUT)
    store.set("ready", "1")
    pg = dist.ProcessGroupGloo(store, 1, 2, _TIMEOUT)
    draft = _recv(pg, 0).to(device)
    chain = None
    while True:
        msg = _recv(pg, 0)
        try:
            if msg[0] == "close":
                if chain is not None:
                    chain.finish()
                _send(pg, ("ok",), 0)
                return
            if msg[0] == "start":
                if chain is not None:
                    chain.finish()
                chain = ChainDraft(draft, **msg[2])
                chain.start(msg[1])
                reply = ("ok",)
            elif msg[0] == "draft":
                tokens, q, busy, calls = chain.draft_chains(msg[1])
                reply = ("ok", tokens, None if q is None else q.cpu(), busy, calls)
            elif msg[0] == "finish":
                chain.finish()
                reply = ("ok",)
            else:
                reply = ("error", f"unknown request {msg[0]!r}")
        except Exception:                          # noqa: BLE001 (reported to the target process)
            reply = ("error", traceback.format_exc())
        _send(pg, reply, 0)


class _Reply:
    def __init__(self, worker):
        self.worker = worker

    def result(self):
        _, tokens, q, busy, calls = self.worker._call_reply()
        self.worker.calls += calls
        if q is not None:
            q = q.to(self.worker.target_device)
        return tokens, q, busy


class ProcessWorker:
    """The draft model in a second process (PEARL's two-device layout), over a gloo process group
    of its own (the default process group is left alone). Started once per draft model and
    reused by later calls (``shutdown_workers`` stops them; they stop at exit)."""

    def __init__(self, draft, device: str, threads: int, target_device):
        import torch.distributed as dist

        self.target_device = torch.device(target_device)
        self.lock = threading.Lock()
        self.calls = 0
        store = dist.TCPStore("127.0.0.1", 0, 2, True, timeout=_TIMEOUT, wait_for_workers=False)
        # a fresh interpreter (not multiprocessing's spawn, which re-runs the caller's __main__)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen([sys.executable, "-c", _ENTRY.format(port=store.port, device=str(device), threads=int(threads))],
                                     env=env)
        self.store = store
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not store.check(["ready"]):            # a draft process that dies says so at once
            if self.proc.poll() is not None:
                raise RuntimeError(f"pearl: the draft process exited with status {self.proc.returncode} "
                                   f"before connecting (its error is printed above)")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"pearl: the draft process did not connect within {_START_TIMEOUT_S} s")
            time.sleep(0.02)
        self.pg = dist.ProcessGroupGloo(store, 0, 2, _TIMEOUT)
        _send(self.pg, draft if draft.device.type == "cpu" else draft.cpu(), 1)

    def _call_reply(self):
        reply = _recv(self.pg, 1)
        if reply[0] != "ok":
            raise RuntimeError(f"pearl: the draft process failed:\n{reply[1]}")
        return reply

    def _call(self, *msg):
        _send(self.pg, msg, 1)
        return self._call_reply()

    def start(self, capacities, options) -> None:
        self.calls = 0
        self.lock.acquire()                       # one generation at a time per draft process
        try:
            self._call("start", capacities, options)
        except BaseException:
            self.lock.release()
            raise

    def submit(self, requests):
        _send(self.pg, ("draft", requests), 1)
        return _Reply(self)

    def finish(self) -> None:
        try:
            self._call("finish")
        finally:
            self.lock.release()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.alive():
            try:
                self._call("close")
            except Exception:                       # noqa: BLE001 (closing anyway)
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


_PROCESS_WORKERS: dict = {}


def process_worker(draft, device: str, threads: int = 1, target_device="cpu") -> ProcessWorker:
    """The draft process serving ``draft`` on ``device`` (started on first use, then reused)."""
    key = (id(draft), str(device), int(threads), str(target_device))
    worker = _PROCESS_WORKERS.get(key)
    if worker is not None and (worker[0] is not draft or not worker[1].alive()):
        worker[1].close()
        worker = None
    if worker is None:
        worker = (draft, ProcessWorker(draft, str(device), int(threads), target_device))
        _PROCESS_WORKERS[key] = worker
    return worker[1]


def shutdown_workers() -> None:
    """Stop every PEARL draft process."""
    while _PROCESS_WORKERS:
        _, (_, worker) = _PROCESS_WORKERS.popitem()
        worker.close()


atexit.register(shutdown_workers)
