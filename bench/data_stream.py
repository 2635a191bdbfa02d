"""Benchmark: packed shards streamed from a bucket vs today's download-all path.

    make bench-data        # = .venv/bin/python -m bench.data_stream  (~20 min on 2 cores)
    .venv/bin/python -m bench.data_stream --sizes 1000 10000 100000 --download-sizes 1000 10000

Starts fake-gcs-server, generates JPEG class-folder datasets (10 classes; a few hundred distinct
small encoded images reused under different names, so 100k files take seconds to write), pushes
each to the emulator as class folders and packs each into it (``trainer.data.packer``), then measures
whole ``python -m trainer`` processes, each with a fresh scratch directory (a new pod):

1. **start -> first training step**: process launch to the end of the first step, download-all
   (``--data gs://…/folders-N``) vs streamed (``--data gs://…/packed-N``); also the peak local
   scratch bytes (polled every 0.5 s) and the peak RSS (``ru_maxrss``) at that moment;
2. **a whole streamed epoch** without a model (the input pipeline alone over the train split):
   peak scratch and peak RSS, to show both are bounded by the window, not the dataset;
3. **training images/s**, streamed vs the same images decoded in memory (``cache: memory``), on
   the same model (seed_cnn, 64x64) and batch size, alternating A/B rounds;
4. **the input pipeline alone at 224x224** from JPEG (decode + resize, then + augment; no model)
   with 1 and 2 tf.data threads: images per CPU-second of the process (= per core, robust to other
   load on the machine), and cores per 1,000 img/s for one GPU.

Prints Markdown tables for docs/benchmarks.md and writes bench/results/data-<time>.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "gcs"))

CLASSES = 10
DISTINCT_PER_CLASS = 30
MARK = "BENCH-DATA "


# ---------------------------------------------------------------------------------------------
# Datasets


def make_jpegs(root: Path, count: int, size: int, distinct_per_class: int = DISTINCT_PER_CLASS) -> None:
    """``count`` JPEG files in 10 class folders, from ``distinct_per_class`` encodings per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    blobs = []
    for c in range(CLASSES):
        colour = rng.integers(30, 225, 3)
        per = []
        for _ in range(distinct_per_class):
            img = np.clip(colour + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=85)
            per.append(buf.getvalue())
        blobs.append(per)
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        c = i % CLASSES
        (root / f"class{c}" / f"img{i:07d}.jpg").write_bytes(blobs[c][(i // CLASSES) % distinct_per_class])


def dir_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total


# ---------------------------------------------------------------------------------------------
# Child processes


def child_env(scratch: Path) -> dict[str, str]:
    return {**os.environ, "KUBETRAIN_SCRATCH": str(scratch), "CUDA_VISIBLE_DEVICES": "",
            "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}


def run_child(args: list[str], scratch: Path, poll_scratch: bool, timeout: float = 3600) -> dict:
    """Run ``python -m bench.data_stream child ARGS``; its JSON result + wall time + peak scratch."""
    scratch.mkdir(parents=True, exist_ok=True)
    peak = {"bytes": 0}
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.5):
            peak["bytes"] = max(peak["bytes"], dir_bytes(scratch))

    poller = threading.Thread(target=poll, daemon=True)
    start_wall = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "bench.data_stream", "child", *args], cwd=REPO,
                            env=child_env(scratch), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if poll_scratch:
        poller.start()
    out, err = proc.communicate(timeout=timeout)
    stop.set()
    if poll_scratch:
        poller.join()
    lines = [line for line in out.splitlines() if line.startswith(MARK)]
    if not lines:
        raise RuntimeError(f"child {args} failed ({proc.returncode}):\n{err[-3000:]}")
    result = json.loads(lines[-1][len(MARK):])
    if "first_step_wall" in result:
        result["start_to_first_step_seconds"] = result.pop("first_step_wall") - start_wall
    result["process_seconds"] = time.time() - start_wall
    result["peak_scratch_bytes"] = max(peak["bytes"], result.get("scratch_bytes_at_end", 0))
    return result


def _report(**values) -> None:
    values["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(MARK + json.dumps(values), flush=True)


def child_first_step(data: str, output: str) -> None:
    """The real trainer, stopped right after its first training step."""
    from trainer.training import loop as train

    real = train.Trainer._make_train_chunk

    def patched(self):
        chunk = real(self)

        def first(iterator, num_steps):
            out = chunk(iterator, num_steps)
            out.numpy()  # the step has run
            scratch = Path(os.environ["KUBETRAIN_SCRATCH"])
            _report(first_step_wall=time.time(), scratch_bytes_at_end=dir_bytes(scratch))
            os._exit(0)

        return first

    train.Trainer._make_train_chunk = patched
    from trainer.__main__ import main

    main(["--data", data, "--output", output, "--epochs", "1", "-q", "--set", "model=seed_cnn",
          "--set", "steps_per_execution=1", "--set", "batch_size=64"])
    raise SystemExit("the trainer returned before its first step")


def child_pipeline(data: str, image_size: int, threads: int, augment: str) -> None:
    """The training input pipeline alone (decode + resize [+ augment]), no model."""
    import tensorflow as tf

    from trainer.config import load_config
    from trainer.data import dataset as data_lib
    from trainer.data import pipeline

    values = {"data": data, "output": "/tmp/unused", "image_size": image_size}
    if augment == "off":
        values["augment"] = {"rotation": 0, "shift": 0, "zoom": 0, "flip": "none"}
    cfg = load_config(values)
    ds = data_lib.open_dataset(cfg, Path(os.environ["KUBETRAIN_SCRATCH"]))
    batches = pipeline.make_batches(pipeline.make_source(ds.train, cfg), len(ds.train), cfg, 64, training=True)
    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        batches = batches.with_options(options)
    n, start, cpu0 = 0, None, 0.0
    for _, labels in batches:
        if start is None:
            start, cpu0 = time.monotonic(), time.process_time()  # after the first batch: warm
            continue
        n += int(labels.shape[0])
    seconds, cpu = time.monotonic() - start, time.process_time() - cpu0
    window = getattr(ds.train.stream, "last_window", None)
    _report(images=n, seconds=seconds, images_per_second=n / seconds, cpu_seconds=cpu,
            images_per_cpu_second=n / cpu, threads=threads, augment=augment, train_images=len(ds.train),
            window_peak_bytes=window.peak_bytes_on_disk if window else 0)


def child_train(data: str, output: str, epochs: int) -> None:
    from trainer.__main__ import main

    code = main(["--data", data, "--output", output, "--epochs", str(epochs), "-q", "--set", "model=seed_cnn",
                 "--set", "image_size=64", "--set", "cache=memory", "--set", "batch_size=64"])
    metrics = json.loads((Path(output) / "report" / "metrics.json").read_text())
    _report(code=code, images_per_second=metrics["images_per_second"],
            per_epoch=metrics["history"]["images_per_second"], train_images=metrics["num_train_images"])


# ---------------------------------------------------------------------------------------------
# The benchmark


def main(argv: list[str]) -> int:
    if argv[:1] == ["child"]:
        mode, *rest = argv[1:]
        if mode == "first-step":
            child_first_step(*rest)
        elif mode == "pipeline":
            child_pipeline(rest[0], int(rest[1]), int(rest[2]), rest[3])
        elif mode == "train":
            child_train(rest[0], rest[1], int(rest[2]))
        return 0

    p = argparse.ArgumentParser(prog="python -m bench.data_stream", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--download-sizes", type=int, nargs="+", default=[1000, 10000],
                   help="sizes also measured on the download-all path (100k: ~15 more minutes here, "
                   "pushing and fetching 100k objects through the emulator)")
    p.add_argument("--image-px", type=int, default=64, help="generated JPEG side (small: 100k files)")
    p.add_argument("--shard-mb", type=float, default=4.0,
                   help="shard size for the bench (small datasets still get several shards)")
    p.add_argument("--speed-size", type=int, default=3000, help="dataset for the training-speed A/B")
    p.add_argument("--speed-rounds", type=int, default=3)
    p.add_argument("--pipeline-images", type=int, default=1500, help="224x224 JPEGs for the pipeline alone")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)

    from fake_gcs import Emulator

    from trainer.data.packer import PackOptions, pack
    from trainer.data.push import upload_tree
    from trainer.storage import gcs

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                 "python": platform.python_version()},
                     "command": "python -m bench.data_stream " + " ".join(argv), "args": vars(args) | {"workdir": str(work)},
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sizes": {}}
    t_bench = time.monotonic()
    with Emulator(work / "fake-gcs.log") as url:
        os.environ["STORAGE_EMULATOR_HOST"] = url
        gcs.client().create_bucket("bench")
        for n in args.sizes:
            row: dict = {}
            folder = work / f"jpeg-{n}"
            t = time.monotonic()
            make_jpegs(folder, n, args.image_px)
            row["generate_seconds"] = time.monotonic() - t
            row["dataset_bytes"] = dir_bytes(folder)
            t = time.monotonic()
            pack(str(folder), f"gs://bench/packed-{n}", PackOptions(shard_mb=args.shard_mb), work / "pack-scratch")
            row["pack_seconds"] = time.monotonic() - t
            packed_uri = f"gs://bench/packed-{n}"
            log(f"{n}: generated {row['dataset_bytes'] / 1e6:.1f} MB, packed in {row['pack_seconds']:.0f} s")
            if n in args.download_sizes:
                t = time.monotonic()
                upload_tree(folder, f"gs://bench/folders-{n}", workers=16)
                row["push_seconds"] = time.monotonic() - t
                log(f"{n}: pushed {n} objects in {row['push_seconds']:.0f} s")
                row["download_all"] = run_child(["first-step", f"gs://bench/folders-{n}", str(work / f"out-d-{n}")],
                                                work / f"scratch-d-{n}", poll_scratch=n <= 10000)
                shutil.rmtree(work / f"scratch-d-{n}", ignore_errors=True)
                log(f"{n}: download-all first step {row['download_all']['start_to_first_step_seconds']:.1f} s")
            row["streamed"] = run_child(["first-step", packed_uri, str(work / f"out-s-{n}")],
                                        work / f"scratch-s-{n}", poll_scratch=True)
            log(f"{n}: streamed first step {row['streamed']['start_to_first_step_seconds']:.1f} s")
            row["streamed_epoch_pipeline"] = run_child(["pipeline", packed_uri, "64", "0", "on"],
                                                       work / f"scratch-e-{n}", poll_scratch=True)
            log(f"{n}: streamed epoch (pipeline only) {row['streamed_epoch_pipeline']['images_per_second']:.0f} img/s, "
                f"peak scratch {row['streamed_epoch_pipeline']['peak_scratch_bytes'] / 1e6:.1f} MB")
            results["sizes"][str(n)] = row
            if n != args.speed_size:
                shutil.rmtree(folder, ignore_errors=True)

        # Training speed: streamed (gs:// packed) vs the same images decoded in memory.
        n = args.speed_size
        folder = work / f"jpeg-{n}"
        if not folder.exists():
            make_jpegs(folder, n, args.image_px)
            pack(str(folder), f"gs://bench/packed-{n}", PackOptions(shard_mb=args.shard_mb), work / "pack-scratch")
        speed = {"streamed": [], "memory": []}
        for r in range(args.speed_rounds):
            for kind, data in (("streamed", f"gs://bench/packed-{n}"), ("memory", str(folder))):
                out = work / f"out-speed-{kind}-{r}"
                res = run_child(["train", data, str(out), "2"], work / f"scratch-speed-{kind}-{r}", poll_scratch=False)
                speed[kind].append(res)
                log(f"speed round {r} {kind}: {res['images_per_second']:.0f} img/s")
        results["training_speed"] = speed

        # The input pipeline alone at 224x224 from JPEG (decode + resize + augment), per core.
        folder224 = work / "jpeg-224"
        make_jpegs(folder224, args.pipeline_images, 224, distinct_per_class=20)
        pack(str(folder224), str(work / "packed-224"), PackOptions(shard_mb=8), work / "pack-scratch")
        pipe = {}
        for threads, augment in ((1, "off"), (1, "on"), (2, "on")):
            res = run_child(["pipeline", str(work / "packed-224"), "224", str(threads), augment],
                            work / f"scratch-p-{threads}-{augment}", poll_scratch=False)
            pipe[f"{threads}-{augment}"] = res
            log(f"pipeline 224px, {threads} thread(s), augment {augment}: {res['images_per_second']:.0f} img/s, "
                f"{res['images_per_cpu_second']:.0f} img per CPU-second")
        results["pipeline_224"] = pipe
    results["bench_seconds"] = time.monotonic() - t_bench
    out_path = REPO / "bench" / "results" / f"data-{time.strftime('%Y-%m-%dT%H%M%SZ', time.gmtime())}.json"
    out_path.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))
    log(f"results: {out_path}")
    return 0


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def markdown(results: dict) -> str:
    def mb(b: float) -> str:
        return f"{b / 1e6:,.0f} MB" if b >= 1e6 else f"{b / 1e3:,.0f} KB"

    lines = [("| images | dataset | download-all: start -> first step | streamed: start -> first step | "
             "download-all: peak scratch / RSS | streamed: peak scratch / RSS (first step) | "
             "streamed whole epoch (no model): peak scratch / RSS, img/s |"),
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, row in results["sizes"].items():
        d, s, e = row.get("download_all"), row["streamed"], row["streamed_epoch_pipeline"]
        lines.append(
            f"| {int(n):,} | {mb(row['dataset_bytes'])} | "
            + (f"{d['start_to_first_step_seconds']:.1f} s" if d else "not measured") + " | "
            + f"{s['start_to_first_step_seconds']:.1f} s | "
            + (f"{mb(d['peak_scratch_bytes'])} / {d['peak_rss_mb']:,.0f} MB" if d else "-") + " | "
            + f"{mb(s['peak_scratch_bytes'])} / {s['peak_rss_mb']:,.0f} MB | "
            + f"{mb(max(e['peak_scratch_bytes'], e['window_peak_bytes']))} / {e['peak_rss_mb']:,.0f} MB, "
            + f"{e['images_per_second']:,.0f} |")
    def rounds(runs: list[dict]) -> str:
        return ", ".join(f"{r['images_per_second']:.0f}" for r in runs)

    sp = results.get("training_speed")
    if sp:
        st = statistics.median(r["images_per_second"] for r in sp["streamed"])
        me = statistics.median(r["images_per_second"] for r in sp["memory"])
        lines += ["", "| training (seed_cnn 64x64, batch 64) | images/s (median of rounds) | rounds |",
                  "|---|---:|---|",
                  f"| streamed from gs:// (packed) | {st:,.0f} | {rounds(sp['streamed'])} |",
                  f"| decoded in memory | {me:,.0f} | {rounds(sp['memory'])} |",
                  f"| **ratio streamed / memory** | **{st / me:.3f}** | |"]
    pp = results.get("pipeline_224")
    if pp:
        lines += ["", ("| input pipeline alone, 224x224 from JPEG, no model | images/s (wall) | "
                  "images per CPU-second (= per core) | cores per 1,000 img/s |"), "|---|---:|---:|---:|"]
        for key, label in (("1-off", "decode + resize, 1 tf.data thread"),
                           ("1-on", "decode + resize + augment, 1 thread"),
                           ("2-on", "decode + resize + augment, 2 threads")):
            r = pp[key]
            lines.append(f"| {label} | {r['images_per_second']:,.0f} | {r['images_per_cpu_second']:,.0f} | "
                         f"{1000 / r['images_per_cpu_second']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
