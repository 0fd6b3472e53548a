"""Would today's label-free gate have let through the adaptations that made MAE worse?

    python -m research.gate_replay [--baseline-mae MAE] [--set gate.FIELD=VALUE ...] RUN_DIR [RUN_DIR ...]

Each RUN_DIR is a ``research/adaptation.py --out`` folder: one ``<row>.json``
report per adapted row (its held-out statistics for parent and candidate)
and ``rows.json`` (MAE measured with the labels afterwards). The gate only
ever sees the label-free statistics; this replays ``adapt.selfsup.gate.gate``
with the current GateConfig (or one changed with ``--set``) on those stored figures and sets its verdict
next to the verdict given at run time and to whether MAE actually improved
on NoAdapt (``--baseline-mae``, or the folder's own NoAdapt row).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from adapt.selfsup.gate import FrameStats, GateConfig, gate
from research.adaptation import ADAPTED, parse_overrides


def load_stats(d: dict) -> FrameStats:
    return FrameStats(**{k: d[k] for k in FrameStats.__dataclass_fields__ if k in d})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--baseline-mae", type=float, default=None, help="NoAdapt MAE, when a folder has no NoAdapt row")
    p.add_argument("--set", action="append", default=[], metavar="gate.FIELD=VALUE", help="replay a changed gate, e.g. gate.per_person_uncertainty=true")
    args = p.parse_args()
    overrides = parse_overrides(args.set)
    if overrides["flip"] or overrides["pseudo"]:
        raise SystemExit("--set: only gate.FIELD settings change a replay")
    cfg = replace(GateConfig(), **overrides["gate"])
    print("| run | row | MAE | NoAdapt MAE | better? | verdict then | verdict now | reasons now |")
    print("|---|---|---|---|---|---|---|---|")
    wrong = {"then": [0, 0], "now": [0, 0]}  # [worse accepted, better refused]
    n = 0
    for run in args.runs:
        rows = {r["row"]: r for r in json.loads((run / "rows.json").read_text())}
        baseline = rows["NoAdapt"]["mae"] if "NoAdapt" in rows else args.baseline_mae
        if baseline is None:
            raise SystemExit(f"{run}: no NoAdapt row; pass --baseline-mae")
        for key, name in ADAPTED.items():
            report_path = run / f"{key}.json"
            if name not in rows or not report_path.is_file():
                continue
            report = json.loads(report_path.read_text())
            v = report["validation"]
            now = gate(load_stats(v["parent"]), load_stats(v["candidate"]), cfg.for_stages(report["stages"]))
            mae = rows[name]["mae"]
            better = mae < baseline
            n += 1
            for when, verdict in (("then", v["verdict"]), ("now", now.verdict)):
                accepted = verdict == "accept"
                wrong[when][0] += accepted and not better
                wrong[when][1] += better and not accepted
            print(f"| {run.name} | {name} | {mae:.2f} | {baseline:.2f} | {'yes' if better else 'no'} | {v['verdict']} | {now.verdict} | {'; '.join(now.reasons) or '-'} |")
    for when, (worse_accepted, better_refused) in wrong.items():
        print(f"\n{when}: of {n} models, {worse_accepted} worse accepted, {better_refused} better refused", end="")
    print()


if __name__ == "__main__":
    main()
