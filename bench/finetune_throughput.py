"""Benchmark: a smolVLA LoRA fine-tune, `piperctl train --peft lora` vs `lerobot-train --peft.*`, on one GPU.

Both tools fine-tune the same base (default `lerobot/smolvla_base`) with LoRA (lerobot's default
smolVLA targets, rank --rank) on the same synthesized PiPER dataset, whose three cameras carry the
base's names (camera1..3), so that neither tool needs a rename map. As in train_throughput.py, each
tool runs SHORT and LONG steps and steps/s = (LONG - SHORT) / (time(LONG) - time(SHORT)); the save
cost is a LONG run saving every SAVE_EVERY steps against one saving once. It prints both
checkpoint sizes and piperctl's peak GPU memory (torch.cuda.max_memory_allocated of a probe run).
Precision: smolVLA has no `dtype` field, so lerobot-train's only switch is `--policy.use_amp=true`,
which autocasts to fp16 on CUDA; piperctl runs `--precision fp16` against it (or fp32 against fp32).

The base and its VLM (`HuggingFaceTB/SmolVLM2-500M-Video-Instruct`) must be in the Hugging Face
cache (the run is offline): `hf download lerobot/smolvla_base` and
`hf download HuggingFaceTB/SmolVLM2-500M-Video-Instruct` once on a machine with network.

Usage: .venv/bin/python bench/finetune_throughput.py [--base ID_OR_FOLDER] [--rank 16] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import BIN, run  # noqa: E402 - the same timed runner as the ACT benchmark

WORK = Path(__file__).resolve().parent / "_work" / "finetune_throughput"
CAMERAS = "camera1,camera2,camera3"  # smolvla_base's camera names


def folder_size(folder: Path) -> int:
    """Bytes of the files in a folder (recursively)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def memory_probe(cmd: list[str]) -> float:
    """Peak GPU memory (GiB) of a piperctl training run, measured in a child process."""
    code = (
        "import sys, torch\n"
        "from piperctl.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('PEAK', torch.cuda.max_memory_allocated() / 2**30)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, *cmd[1:]], capture_output=True, text=True)
    peaks = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("PEAK ")]
    return float(peaks[-1]) if peaks else float("nan")


def main() -> None:
    """Run both fine-tunes side by side and print steps/s, the ratio, save cost and checkpoint sizes."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="lerobot/smolvla_base", help="Hub id (cached) or local folder")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank (--peft-opt r / --peft.r)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--num-workers", type=int, default=4)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="fp16", choices=["fp32", "fp16"])
    args = ap.parse_args()

    short, long_, save_every = 10, 40, 10
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    data = WORK / "piper"
    print(f"synthesizing dataset {data} ...", flush=True)
    synth = [str(BIN / "piperctl"), "dataset", "synth", str(data), "--episodes", "20", "--frames", "60:90"]
    run([*synth, "--cameras", CAMERAS, "--image-size", "256x256"])

    def piperctl(steps: int, out: str, every: int | None = None) -> list[str]:
        return [
            str(BIN / "piperctl"), "train", "--output-dir", str(WORK / out), "--dataset-root", str(data),
            "--dataset-id", "local/piper", "--policy", "smolvla", "--init-from", args.base,
            "--peft", "lora", "--peft-opt", f"r={args.rank}", "--steps", str(steps),
            "--save-every", str(every or steps), "--keep-last", "0", "--batch-size", str(args.batch_size),
            "--num-workers", str(args.num_workers), "--device", args.device, "--precision", args.precision,
        ]  # fmt: skip

    def lerobot(steps: int, out: str) -> list[str]:
        amp = "true" if args.precision == "fp16" else "false"
        return [
            str(BIN / "lerobot-train"), f"--policy.path={args.base}", "--dataset.repo_id=local/piper",
            f"--dataset.root={data}", "--policy.push_to_hub=false", f"--policy.device={args.device}",
            f"--policy.use_amp={amp}", "--peft.method_type=LORA", f"--peft.r={args.rank}",
            f"--steps={steps}", f"--save_freq={steps}", f"--batch_size={args.batch_size}",
            f"--num_workers={args.num_workers}", f"--output_dir={WORK / out}", "--wandb.enable=false",
            f"--log_freq={steps}",
        ]  # fmt: skip

    print(f"smolVLA + LoRA r={args.rank} from {args.base} on {args.device} in {args.precision}, "
          f"batch {args.batch_size}, steps {short} and {long_}", flush=True)  # fmt: skip
    run(lerobot(1, "lr_warmup"))  # builds the Arrow cache both tools share (untimed)
    run(piperctl(1, "pc_warmup"))
    t = {
        "lerobot_short": run(lerobot(short, "lr_short")),
        "ours_short": run(piperctl(short, "pc_short")),
        "lerobot_long": run(lerobot(long_, "lr_long")),
        "ours_long": run(piperctl(long_, "pc_long")),
        "ours_long_saving": run(piperctl(long_, "pc_saves", every=save_every)),
    }
    for k, v in t.items():
        print(f"  {k:18s} {v:7.1f} s", flush=True)
    span = long_ - short
    ours = span / (t["ours_long"] - t["ours_short"])
    theirs = span / (t["lerobot_long"] - t["lerobot_short"])
    save_cost = (t["ours_long_saving"] - t["ours_long"]) / (long_ // save_every - 1)
    ours_ckpt = WORK / "pc_saves" / f"checkpoint-{save_every}"
    theirs_ckpt = next((WORK / "lr_long" / "checkpoints").glob("0*"))
    print()
    print(f"piperctl train --peft lora : {ours:6.3f} steps/s")
    print(f"lerobot-train --peft.*     : {theirs:6.3f} steps/s")
    print(f"ratio (piperctl / lerobot-train): {ours / theirs:.2f}x")
    print(f"save cost per checkpoint (whole process, background writes): {save_cost:.2f} s")
    print(f"checkpoint size: piperctl {folder_size(ours_ckpt) / 1e6:.1f} MB (adapter + its optimizer state "
          f"+ resume state), lerobot-train {folder_size(theirs_ckpt) / 1e6:.1f} MB")  # fmt: skip
    state = json.loads((ours_ckpt / "base_model.json").read_text())
    print(f"base reference: {state['source']} {state['location']} {state.get('revision') or ''}")
    if args.device.startswith("cuda"):
        peak = memory_probe(piperctl(short, "pc_memory"))
        print(f"piperctl peak GPU memory (torch.cuda.max_memory_allocated): {peak:.1f} GiB")


if __name__ == "__main__":
    main()
