"""The GPU check in one table: end-to-end throughput (bench/throughput.py) and the fast-vs-reference accuracy A/B
(bench/accuracy_ab.py) on real CIFAR-10, saved as bench/results/<date>_<device>.json. Run it through
bench/gpu_check.sh, which prepares the machine first (../shared/gpu.md)."""
from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import accuracy_ab  # noqa: E402
import throughput  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for a dry run on a CPU")
    args = parser.parse_args()
    smoke = ["--smoke"] if args.smoke else []
    speed = throughput.main([*smoke, "--data-path", args.data_path, *([] if args.smoke else ["--batch", "1024"])])
    ab = accuracy_ab.main([*smoke, "--data-path", args.data_path, "--labels", args.labels])
    device = speed["device"]
    table = [
        ("end-to-end samples/s, ours", f"{speed['ours']['samples_per_s']:,.0f}"),
        ("end-to-end samples/s, reference-style", f"{speed['reference-style']['samples_per_s']:,.0f}"),
        ("ratio", f"{speed['ratio']:.2f}x"),
        ("EM step share of the epoch, ours", f"{speed['ours']['em_share']:.1%}"),
        ("peak device memory GiB, ours / reference-style",
         f"{speed['ours']['peak_gib'] or 0:.2f} / {speed['reference-style']['peak_gib'] or 0:.2f}"),
        (f"A/B test accuracy, fast / reference-style ({ab['epochs']} epochs)",
         f"{ab['fast']['test_acc']:.4f} / {ab['reference-style']['test_acc']:.4f}"),
        ("A/B noise AUC, fast / reference-style", f"{ab['fast']['noise_auc']:.4f} / {ab['reference-style']['noise_auc']:.4f}"),
        ("A/B within 1.0 point and 0.01 AUC", str(ab["within_tolerance"])),
    ]
    print(f"\n| {device}, {datetime.date.today()} | value |\n|---|---|")
    for name, value in table:
        print(f"| {name} | {value} |")
    name = f"{datetime.date.today()}_{re.sub(r'[^A-Za-z0-9]+', '_', device)}{'_smoke' if args.smoke else ''}.json"
    out = BENCH / "results" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"throughput": speed, "accuracy_ab": ab, "table": dict(table)}, indent=2) + "\n")
    print(f"saved {out.relative_to(BENCH.parent)}")


if __name__ == "__main__":
    main()
