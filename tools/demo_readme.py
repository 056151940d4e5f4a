"""Refresh the README's demo table from the last `make demo`.

``python -m tools.demo_readme`` (``make demo-readme``) copies ``data/demo_results.json`` (what
`make demo` measured, with the code and settings that made it) to ``docs/demo_results.json``
and redraws the README's table between its markers from it. A test then keeps the two in step
and fails once the code that makes the numbers changes (echo_pipeline_tests/test_readme_demo.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from echo_pipeline.infra.layout import Layout
from echo_pipeline.operations import demo_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results",
        default=str(Layout.default().root / "demo_results.json"),
        help="The results `make demo` wrote (default: data/demo_results.json).",
    )
    args = parser.parse_args(argv)
    source = Path(args.results)
    if not source.exists():
        print(f"{source}: no demo results; run `make demo` first", file=sys.stderr)
        return 2
    results = demo_results.load(source)
    demo_results.write(results, demo_results.COMMITTED)
    readme = demo_results.README.read_text(encoding="utf-8")
    demo_results.README.write_text(demo_results.with_table(readme, results), encoding="utf-8")
    print(f"{demo_results.COMMITTED} and {demo_results.README.name}'s demo table refreshed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
