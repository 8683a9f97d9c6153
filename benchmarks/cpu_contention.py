"""The README's main job (``againzoo train quickstart``) alone and beside one busy process, with
againzoo's thread choice (idle cores only, ``againzoo/cpu.py``) and with every core forced
(``OMP_NUM_THREADS=<cores>``), in one run; reports wall times and the busy/alone ratios.

    python benchmarks/cpu_contention.py                          # the README job as written
    python benchmarks/cpu_contention.py --set epochs=1 --set model.kwargs.width=8   # tiny (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("alone", "busy")


def run_job(overrides: list[str], busy: bool, force_all_cores: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "AGAINZOO_THREADS")}
    if force_all_cores:
        env["OMP_NUM_THREADS"] = str(os.cpu_count() or 1)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if hog is not None:
            time.sleep(0.5)  # let it get going, as a job already running would be
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "againzoo", "train", "quickstart", "--quiet", "--set", f"output_dir={out}"]
            for o in overrides:
                cmd += ["--set", o]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, capture_output=True)
            return time.perf_counter() - t
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override, as for train")
    p.add_argument("--json", default="benchmarks/cpu_contention.json")
    args = p.parse_args()
    rows = []
    for policy, force in (("idle cores (againzoo)", False), ("all cores", True)):
        times = {v: run_job(args.overrides, v == "busy", force) for v in VARIANTS}
        rows.append({"threads": policy, "alone_s": round(times["alone"], 2), "busy_s": round(times["busy"], 2),
                     "busy_over_alone": round(times["busy"] / times["alone"], 3)})
    result = {"job": "againzoo train quickstart " + " ".join(f"--set {o}" for o in args.overrides),
              "cores": os.cpu_count(), "results": rows}
    print(f"README main job on {os.cpu_count()} cores, alone and beside one busy process")
    print(f"{'threads':<24}{'alone (s)':>10}{'busy (s)':>10}{'busy/alone':>12}")
    for r in rows:
        print(f"{r['threads']:<24}{r['alone_s']:>10.2f}{r['busy_s']:>10.2f}{r['busy_over_alone']:>11.2f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
