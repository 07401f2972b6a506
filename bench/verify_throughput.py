"""Benchmark: `piperctl checkpoints verify` against `sha256sum` on the same checkpoint files.

Builds a run of K checkpoints of realistic size (default ACT, ~52M parameters, with its AdamW state:
~620 MB each) by training one step on a tiny synthesized dataset and copying that checkpoint K times
(real copies, each with its own step and manifest). Then, on the same files:

- `sha256sum` of every file (one process, as a user would run it), and for reference `openssl dgst
  -sha256` and `sha256sum` run in parallel with `xargs -P <cores>`;
- the hashing part of `verify` (piperctl's manifest check of all K checkpoints, in-process);
- the full `piperctl checkpoints verify RUN` command (start-up, hashing and deep loads);
- `piperctl checkpoints verify --quick` on 100 checkpoint folders (hard links to the same files).

Each timing is taken cold (every file evicted from the page cache with posix_fadvise DONTNEED
first; the disk is read) and warm (the best of two runs right after a warm-up read).

Usage: .venv/bin/python bench/verify_throughput.py [--checkpoints K] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "verify_throughput"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from piperctl import checkpoints as ckpt  # noqa: E402


def build_seed_checkpoint() -> Path:
    """One default-size ACT checkpoint (trained for one step on a tiny image dataset)."""
    from piperctl import train
    from piperctl.datasets.synth import SynthConfig, synthesize

    seed_run = WORK / "seed_run"
    if (seed_run / "checkpoint-1" / ckpt.MANIFEST).is_file():
        return seed_run / "checkpoint-1"
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    os.environ.setdefault("HF_DATASETS_CACHE", str(WORK / "hf_cache"))
    ds = synthesize(
        WORK / "ds",
        SynthConfig(episodes=2, frames=(20, 24), cameras=["front"], image_size=(32, 40), video=False),
    )
    print("training 1 step of default ACT to get a realistic checkpoint ...", flush=True)
    train(
        seed_run,
        dataset_id="local/bench",
        dataset_root=ds,
        steps=1,
        batch_size=2,
        save_every=1,
        num_workers=0,
        device="cpu",
        policy_options={"pretrained_backbone_weights": None},
    )
    return seed_run / "checkpoint-1"


def _set_step(folder: Path, step: int) -> None:
    state = json.loads((folder / ckpt.TRAINING_STATE).read_text())
    state["step"] = step
    (folder / ckpt.TRAINING_STATE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    ckpt.write_json(folder / ckpt.MANIFEST, ckpt.build_manifest(folder, step))


def build_run(seed: Path, k: int) -> Path:
    """A run folder with K full copies of the seed checkpoint (steps 1000, 2000, ...)."""
    run = WORK / f"run_{k}"
    if len(ckpt.list_checkpoints(run)) == k:
        return run
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    shutil.copy2(seed.parent / ckpt.RUN_FILE, run / ckpt.RUN_FILE)
    for i in range(1, k + 1):
        folder = run / f"checkpoint-{i * 1000}"
        shutil.copytree(seed, folder)
        _set_step(folder, i * 1000)
    return run


def build_quick_run(source: Path, n: int) -> Path:
    """N checkpoint folders whose files are hard links to one checkpoint (own manifest each)."""
    run = WORK / f"quick_{n}"
    if len(ckpt.list_checkpoints(run)) == n:
        return run
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    manifest = json.loads((source / ckpt.MANIFEST).read_text())
    for i in range(1, n + 1):
        folder = run / f"checkpoint-{i}"
        folder.mkdir()
        for rel in manifest["files"]:
            os.link(source / rel, folder / rel)
        ckpt.write_json(folder / ckpt.MANIFEST, {**manifest, "step": i})
    return run


def evict(paths: list[Path]) -> None:
    """Drop the files from the page cache (no root needed), so the next read comes from disk."""
    os.sync()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(paths: list[Path]) -> None:
    """Read every file once so the next runs find it in the page cache."""
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(8 << 20):
                pass


def timed(fn) -> float:  # noqa: ANN001 - any zero-argument callable
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sh(cmd: list[str], expect: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != expect:
        sys.exit(f"command failed ({res.returncode}): {' '.join(cmd[:4])} ...\n{res.stderr[-3000:]}")
    return res


def hash_part(checkpoints: list[Path]) -> None:
    """What verify does for the sha256 check: quick scans, then one thread pool over all files."""
    checks = [ckpt.scan_checkpoint(p) for p in checkpoints]
    ckpt.hash_pending(checks)
    bad = [c.path.name for c in checks if not c.ok]
    if bad:
        sys.exit(f"hash check failed for {bad}")


def main() -> None:
    """Build the run (once), time every tool cold and warm, print the figures and ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", type=int, default=4, help="full-size checkpoints to hash (default 4)")
    ap.add_argument("--quick-count", type=int, default=100, help="checkpoints for the --quick timing")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the work folder from scratch")
    args = ap.parse_args()
    if args.rebuild:
        shutil.rmtree(WORK, ignore_errors=True)

    seed = build_seed_checkpoint()
    run = build_run(seed, args.checkpoints)
    checkpoints = ckpt.list_checkpoints(run)
    files = [c / rel for c in checkpoints for rel in json.loads((c / ckpt.MANIFEST).read_text())["files"]]
    total = sum(p.stat().st_size for p in files)
    from safetensors import safe_open

    with safe_open(str(seed / ckpt.POLICY_WEIGHTS), "pt") as f:
        params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    per = total / len(checkpoints)
    cores = os.cpu_count() or 1
    print(
        f"run: {len(checkpoints)} checkpoints of default ACT ({params / 1e6:.1f}M parameters), "
        f"{per / 1e6:.0f} MB each, {total / 1e9:.2f} GB in {len(files)} files; {cores} CPU cores",
        flush=True,
    )
    names = [str(p) for p in files]
    tools = {
        "sha256sum": lambda: sh(["sha256sum", *names]),
        f"sha256sum x{cores} (xargs -P)": lambda: sh(
            ["sh", "-c", f'printf "%s\\0" "$@" | xargs -0 -n 4 -P {cores} sha256sum > /dev/null', "sh", *names]
        ),
        "openssl dgst -sha256": lambda: sh(["openssl", "dgst", "-sha256", *names]),
        "verify, hash part": lambda: hash_part(checkpoints),
        "piperctl checkpoints verify (full)": lambda: sh([str(BIN / "piperctl"), "checkpoints", "verify", str(run), "--json"]),
    }  # fmt: skip
    if shutil.which("openssl") is None:
        tools.pop("openssl dgst -sha256")

    results: dict[str, tuple[float, float]] = {}
    for name, fn in tools.items():
        evict(files)
        cold = timed(fn)
        warm(files)
        warm_t = min(timed(fn), timed(fn))
        results[name] = (cold, warm_t)
        print(f"  {name:38s} cold {cold:7.2f} s ({total / cold / 1e6:6.0f} MB/s)   "
              f"warm {warm_t:7.2f} s ({total / warm_t / 1e6:6.0f} MB/s)", flush=True)  # fmt: skip

    quick_run = build_quick_run(checkpoints[0], args.quick_count)
    quick_cmd = [str(BIN / "piperctl"), "checkpoints", "verify", str(quick_run), "--quick", "--json"]
    sh(quick_cmd)
    quick_cli = min(timed(lambda: sh(quick_cmd)) for _ in range(3))
    out = json.loads(sh(quick_cmd).stdout)
    assert out["ok"] and len(out["checkpoints"]) == args.quick_count
    from piperctl.checkpoints.verify import verify_paths

    quick_core = min(timed(lambda: verify_paths([quick_run], quick=True)) for _ in range(3))
    startup = min(timed(lambda: sh([str(BIN / "piperctl"), "--version"])) for _ in range(3))

    sha_cold, sha_warm = results["sha256sum"]
    ours_cold, ours_warm = results["verify, hash part"]
    print()
    print(f"verify hash part vs sha256sum: {sha_warm / ours_warm:.2f}x the speed warm, "
          f"{sha_cold / ours_cold:.2f}x cold (goal >= 0.8x)")  # fmt: skip
    print(f"--quick on {args.quick_count} checkpoints: {quick_cli:.3f} s for the whole command "
          f"(of which {startup:.3f} s is starting piperctl --version), {quick_core:.3f} s in-process (goal < 1 s)")  # fmt: skip


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    main()
