"""Cold-start cost of the two Lambda handlers: how long importing each one takes.

    python -m bench.lambda_import_time [--runs 7] [--json PATH]

Each measurement is a fresh interpreter (``python -X importtime -c "import ..."``),
so nothing is cached in the process; the OS file cache is warm after the first
run, as in a Lambda execution environment that was just created from a cached
image. It reports, per handler, the median and spread of the total import time
and the largest self-contributions (from ``-X importtime``), plus the bare
interpreter start-up for reference, and writes the figures as JSON.

Importing a handler creates no client and makes no network call
(tests/integration/test_lambda.py checks that); this is pure Python import work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    "interpreter only": "pass",
    "dispatch.aws_lambda.handler": "import dispatch.aws_lambda.handler",
    "dispatch_workers.lambda_handler": "import dispatch_workers.lambda_handler",
    "dispatch_workers.lambda_handler + dispatch.local.example.app": (
        "import dispatch_workers.lambda_handler, dispatch.local.example.app"
    ),
}


PACKAGES = (
    "botocore",
    "boto3",
    "aiohttp",
    "aiobotocore",
    "structlog",
    "tenacity",
    "yaml",
    "rich",
    "aws_embedded_metrics",
)


def measure(code: str) -> tuple[float, list[tuple[str, float]]]:
    """Wall seconds of one fresh interpreter running ``code``; cumulative import time
    of the heavy third-party packages it pulls in (from ``-X importtime``)."""
    started = time.perf_counter()
    result = subprocess.run(  # noqa: S603 - this interpreter, fixed code
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    wall = time.perf_counter() - started
    packages: dict[str, float] = {}
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|", 2)
        if name.strip() in PACKAGES:
            packages[name.strip()] = max(packages.get(name.strip(), 0.0), int(cumulative) / 1e6)
    return wall, sorted(packages.items(), key=lambda item: -item[1])


def main(argv: list[str] | None = None) -> int:
    """Measure every target and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "bench" / "results" / "lambda_import_time.json"
    )
    args = parser.parse_args(argv)
    report: dict[str, dict[str, object]] = {}
    for label, code in TARGETS.items():
        measure(code)  # warm the file cache
        runs = [measure(code) for _ in range(args.runs)]
        walls = [wall for wall, _ in runs]
        report[label] = {
            "median_s": statistics.median(walls),
            "min_s": min(walls),
            "max_s": max(walls),
            "packages_s": runs[len(runs) // 2][1],
        }
    base = float(report["interpreter only"]["median_s"])  # type: ignore[arg-type]
    print(f"Python {sys.version.split()[0]}, {args.runs} fresh interpreters per row\n")
    print(f"{'handler':<40} {'median':>8} {'min':>8} {'max':>8} {'import':>8}")
    for label, row in report.items():
        median = float(row["median_s"])  # type: ignore[arg-type]
        print(
            f"{label:<40} {median * 1000:>6.0f}ms {float(row['min_s']) * 1000:>6.0f}ms "  # type: ignore[arg-type]
            f"{float(row['max_s']) * 1000:>6.0f}ms {(median - base) * 1000:>6.0f}ms"  # type: ignore[arg-type]
        )
    print("\nheavy packages, cumulative import time (one run; nested ones counted once):")
    for label in list(TARGETS)[1:]:
        tops = ", ".join(f"{name} {s * 1000:.0f}ms" for name, s in report[label]["packages_s"])  # type: ignore[attr-defined]
        print(f"  {label}: {tops}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
