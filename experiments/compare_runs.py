"""Two evaluations of the same BounceBench clips compared clip by clip: the interaction-module ablation, a LoRA
against its base, one training run against another.

Reads two result files written by ``experiments/sync_guidance_table.py --json-dir`` (``evaluate_bouncebench``'s
JSON: the same split, first clip, clip count, variant and guidance, so every clip has the same prompt and noise in
both), prints both rows' means and the difference B − A of every per-clip number, paired by clip, with its standard
error (``sync_guidance_table.differences``). Last line: ``RESULT dmargin=... dmargin_se=... df1=... ...``.

    python experiments/compare_runs.py runs/global/plain.json runs/window/plain.json --names global,window
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sync_guidance_table import COLUMNS, DIFF_KEYS, differences, fmt, fmt_difference  # noqa: E402

SAME_KEYS = ("split", "seed", "clips", "variant", "guidance", "steps", "solver", "shift", "seeds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="result JSON of the reference (A)")
    parser.add_argument("b", help="result JSON compared with it (B)")
    parser.add_argument("--names", default="A,B", help="how to call the two in the tables")
    args = parser.parse_args()
    names = args.names.split(",")
    if len(names) != 2:
        parser.error("--names: expected two comma-separated names")
    a, b = (json.loads(Path(p).read_text()) for p in (args.a, args.b))
    other = [k for k in SAME_KEYS if a.get(k) != b.get(k)]
    if other:
        parser.error(f"the two results were not made on the same clips with the same settings: {', '.join(other)} "
                     "differ")
    print("| run | " + " | ".join(COLUMNS) + " |")
    print("|---" * (1 + len(COLUMNS)) + "|")
    for name, result in zip(names, (a, b)):
        print(f"| {name} | " + " | ".join(fmt(result.get(k)) for k in COLUMNS) + " |")
    diffs = differences(b, a)
    print(f"\n{names[1]} − {names[0]}, paired by clip (mean ± standard error, {a['clips']} clips):\n")
    print("| " + " | ".join(DIFF_KEYS) + " |")
    print("|---" * len(DIFF_KEYS) + "|")
    print("| " + " | ".join(fmt_difference(diffs[k]) for k in DIFF_KEYS) + " |")
    short = {"event_f1": "df1", "event_f1_margin": "dmargin", "median_offset_ms": "doffset_ms",
             "video_blob_count_ok": "dcount_ok"}
    print("RESULT " + " ".join(f"{short[k]}={d.mean:.4f} {short[k]}_se={d.se:.4f}" for k, d in diffs.items()
                               if k in short and d is not None and d.se is not None))


if __name__ == "__main__":
    main()
