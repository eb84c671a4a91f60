"""Runs every benchmark and writes `bench/results.json` and `bench/results.md`.

    python -m bench.run_all            # the full run (about 10 minutes on one CPU core)
    python -m bench.run_all --quick    # tiny sizes, one repeat: checks the scripts, measures nothing
    python -m bench.run_all --only loss    # re-runs some; the others' results are kept from the last run

Every benchmark also runs alone (`python -m bench.loss --help`); here each gets `--quick`, `--threads`, `--device`,
`--repeats` and `--warmup` passed through, and its own defaults otherwise.
"""

import argparse
import importlib
import json
import time
from pathlib import Path

from .cli import BENCH_DIR, fix_threads
from .report import machine_line, markdown, write_json

BENCHMARKS = ("train_step", "loss", "inference", "text_length", "scaling", "retrieval", "selection")


def arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and one repeat")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu' or 'cuda'")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default: each script's)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), help="benchmarks to run")
    p.add_argument("--out-dir", type=Path, default=BENCH_DIR, help="where results.json and results.md go")
    p.add_argument("--results", type=Path, help="replaced: the accuracy plots are now "
                   "`python -m smartclip_experiments.accuracy --results FILE` (bench measures speed and memory only)")
    return p


def forwarded(args: argparse.Namespace) -> list[str]:
    """The command line a benchmark gets here: what it would get if run alone with these flags."""
    argv = ["--threads", str(args.threads), "--device", args.device, "--warmup", str(args.warmup)]
    argv += ["--quick"] if args.quick else []
    argv += ["--repeats", str(args.repeats)] if args.repeats else []
    return argv


def main(argv=None) -> list[dict]:
    parser = arguments()
    args = parser.parse_args(argv)
    if args.results is not None:
        parser.error("--results moved with the accuracy plots: python -m smartclip_experiments.accuracy --results FILE")
    fix_threads(args.threads)
    results_path = args.out_dir / "results.json"
    kept = {}  # a partial run keeps the other benchmarks' last results (of the same kind, quick or full)
    if results_path.exists() and set(args.only) != set(BENCHMARKS):
        previous = json.loads(results_path.read_text())
        if previous.get("quick") == args.quick:
            kept = {section["name"]: section for section in previous["benchmarks"]}
    for name in args.only:
        module = importlib.import_module(f"bench.{name}")
        start = time.perf_counter()
        kept[name] = module.run(module.arguments().parse_args(forwarded(args)))
        kept[name]["wall_seconds"] = round(time.perf_counter() - start, 1)
    sections = [kept[name] for name in BENCHMARKS if name in kept]
    write_json(results_path, {"quick": args.quick, "benchmarks": sections})
    (args.out_dir / "results.md").write_text(markdown(sections) + "\n")
    print(f"wrote {args.out_dir / 'results.md'}")
    if sections:
        print(f"machine: {machine_line(sections[0]['machine'])}")
    return sections


if __name__ == "__main__":
    main()
