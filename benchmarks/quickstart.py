"""The quickstart's wall time: `longmix run` on the demo profile from a fresh state folder (the
dataset built, the model trained, evaluated, gated, approved and deployed), and the time of each
step as the run's progress table reports it. Target: quickstart_minutes <= 10 on 2 CPUs.

    python benchmarks/quickstart.py [--quick]

The baseline is the target itself: `vs_target` = minutes / 10. `--quick` runs the tiny profile."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO_ROOT, console, emit_json, parse_args

TARGET_MINUTES = 10.0
STEP_ROW = re.compile(r"│ ((?:dataset|train) \w+|record lineage|evaluate|gate|model card|approval|"
                      r"deploy)\s*│ (\w+)\s*│\s*(\d+) s")


def main() -> None:
    args = parse_args(__doc__)
    profile = "tiny" if args.quick else "demo"
    home = Path(tempfile.mkdtemp(prefix="longmix-quickstart-"))
    env = {**os.environ, "LONGMIX_HOME": str(home), "COLUMNS": "200"}
    longmix = str(Path(sys.executable).with_name("longmix"))
    started = time.perf_counter()
    result = subprocess.run([longmix, "run", "--profile", profile], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True)
    minutes = (time.perf_counter() - started) / 60
    subprocess.run([longmix, "down"], env=env, capture_output=True)
    if result.returncode != 0:
        console.print(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"longmix run failed with exit {result.returncode}")
    steps = {m[1]: int(m[3]) for m in STEP_ROW.finditer(result.stdout)}
    console.print(result.stdout[result.stdout.find("longmix run: done"):][:3000])
    shutil.rmtree(home, ignore_errors=True)
    emit_json({"profile": profile, "quickstart_minutes": round(minutes, 2),
               "target_minutes": TARGET_MINUTES, "vs_target": round(minutes / TARGET_MINUTES, 3),
               "step_seconds": steps, "cpus": os.cpu_count()})


if __name__ == "__main__":
    main()
