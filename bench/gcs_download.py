"""Benchmark: parallel vs sequential download of 1,000 small objects from the GCS emulator.

    make bench-gcs          # = .venv/bin/python -m bench.gcs_download
    .venv/bin/python -m bench.gcs_download --objects 1000 --size-bytes 2048 --rounds 5 --workers 16 --latency-ms 0 20

Starts fake-gcs-server on 127.0.0.1, uploads N objects of S bytes in class folders, then times
``trainer.storage.dataset_cache.download_prefix`` (the code the trainer runs) into a fresh cache directory with
1 thread ("sequential") and with W threads ("parallel"), alternating the two so that load from
anything else on the machine hits both alike; reports medians and the ratio.

``--latency-ms`` also runs the comparison through a loopback proxy that holds every request for
that many milliseconds, a stand-in for the network round trip to real GCS (a small GET from a GKE
node takes tens of ms). On loopback with no delay the client's own CPU per object (~2 ms of Python
in google-cloud-storage) is the limit, and threads, sharing one GIL, gain little; with a real round
trip they overlap the waiting, which is what they are for. Prints a Markdown table for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "gcs"))

from fake_gcs import Emulator, free_port

from trainer.storage import gcs
from trainer.storage.dataset_cache import download_prefix

# ---------------------------------------------------------------------------------------------
# A delaying TCP proxy (its own process, so its CPU does not compete for the client's GIL)


def _proxy_main(listen_port: int, upstream_port: int, delay_seconds: float, ready) -> None:
    async def pump(reader, writer, delay: float) -> None:
        try:
            while data := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)  # one round trip per request: requests fit one read
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(client_reader, client_writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(pump(client_reader, up_writer, delay_seconds), pump(up_reader, client_writer, 0.0))

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class DelayProxy:
    def __init__(self, upstream_url: str, delay_ms: float):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ctx = multiprocessing.get_context("spawn")
        self.ready = ctx.Event()
        upstream_port = int(upstream_url.rsplit(":", 1)[1])
        self.proc = ctx.Process(target=_proxy_main, args=(self.port, upstream_port, delay_ms / 1000, self.ready),
                                daemon=True)

    def __enter__(self) -> str:
        self.proc.start()
        if not self.ready.wait(timeout=30):
            self.proc.kill()
            raise RuntimeError("delay proxy did not start within 30 s")
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.join(timeout=10)


# ---------------------------------------------------------------------------------------------


def upload(bucket: str, objects: int, size: int) -> None:
    b = gcs.client().bucket(bucket)
    payload = os.urandom(size)
    names = [f"bench/class{i % 10}/{i:05d}.png" for i in range(objects)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: b.blob(n).upload_from_string(payload), names))


def time_download(uri: str, workers: int, scratch: Path) -> float:
    cache = Path(tempfile.mkdtemp(dir=scratch))
    start = time.perf_counter()
    got = download_prefix(uri, cache, workers=workers)
    seconds = time.perf_counter() - start
    shutil.rmtree(cache)
    assert got is not None
    return seconds


def compare(uri: str, objects: int, workers: int, rounds: int, scratch: Path) -> dict:
    time_download(uri, workers, scratch)  # warm-up: connections, imports
    seq, par = [], []
    for _ in range(rounds):  # alternate, so background load hits both alike
        seq.append(time_download(uri, 1, scratch))
        par.append(time_download(uri, workers, scratch))
    s, p = statistics.median(seq), statistics.median(par)
    return {"sequential_s": s, "parallel_s": p, "ratio": s / p,
            "sequential_obj_per_s": objects / s, "parallel_obj_per_s": objects / p,
            "seq_all": seq, "par_all": par}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gcs_download", description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=1000)
    ap.add_argument("--size-bytes", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=5, help="timed runs of each mode (alternating)")
    ap.add_argument("--workers", type=int, default=gcs.DEFAULT_WORKERS)
    ap.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 20.0],
                    help="added per-request delays to compare at (0 = plain loopback)")
    args = ap.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gcs-") as tmp:
        scratch = Path(tmp)
        with Emulator(scratch / "fake-gcs.log") as emulator_url:
            os.environ["STORAGE_EMULATOR_HOST"] = emulator_url
            bucket = "bench"
            gcs.client().create_bucket(bucket)
            upload(bucket, args.objects, args.size_bytes)
            uri = f"gs://{bucket}/bench"
            for latency in args.latency_ms:
                if latency:
                    with DelayProxy(emulator_url, latency) as url:
                        os.environ["STORAGE_EMULATOR_HOST"] = url
                        r = compare(uri, args.objects, args.workers, args.rounds, scratch)
                        os.environ["STORAGE_EMULATOR_HOST"] = emulator_url
                else:
                    r = compare(uri, args.objects, args.workers, args.rounds, scratch)
                rows.append((latency, r))
                print(f"latency {latency:g} ms: sequential {r['sequential_s']:.2f} s, "
                      f"{args.workers} threads {r['parallel_s']:.2f} s, ratio {r['ratio']:.2f}x "
                      f"(runs: seq {[round(x, 2) for x in r['seq_all']]}, par {[round(x, 2) for x in r['par_all']]})",
                      flush=True)

    load = os.getloadavg()
    print()
    print(f"{args.objects} objects x {args.size_bytes} B, {args.rounds} alternating rounds, medians; "
          f"{os.cpu_count()} CPUs ({platform.machine()}, Python {platform.python_version()}), "
          f"load average {load[0]:.1f} at the end; {time.strftime('%Y-%m-%d')}")
    print()
    print(f"| added latency per request | sequential (1 thread) | parallel ({args.workers} threads) | ratio |")
    print("|---|---|---|---|")
    for latency, r in rows:
        print(f"| {latency:g} ms | {r['sequential_s']:.2f} s ({r['sequential_obj_per_s']:.0f} obj/s) "
              f"| {r['parallel_s']:.2f} s ({r['parallel_obj_per_s']:.0f} obj/s) | {r['ratio']:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
