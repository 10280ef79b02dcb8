"""Where two runs' time went, side by side: each notebook's and each stage's seconds before and after, as markdown.

Reads two run folders (or their manifest.json files): `timing.total_s` and `timing.notebooks_s` (the driver's wall
seconds) and `stages[name]['seconds']` (each stage's own). Notebooks are listed slowest first (by the before run),
each followed by its stages, slowest first (a notebook the driver did not time, such as in a published manifest,
sorts by its stages' sum); the totals close the table. A stage one run lacks, or one that was
skipped without seconds, shows `-`. From the repository root:

    python tools/stage_table.py build/runs/full_before build/runs/full
"""
import argparse
import json
import sys
from pathlib import Path

MANIFEST = "manifest.json"  # mvlib.rundir.MANIFEST (read here without importing mvlib: the tool is instant)


def load(path: Path | str) -> dict:
    """A run's manifest: `path` is the run folder or its manifest.json."""
    path = Path(path)
    return json.loads((path / MANIFEST if path.is_dir() else path).read_text())


def _seconds(value) -> float | None:
    """A number of seconds, or None for anything else (absent, a skip's reason)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def stage_seconds(manifest: dict) -> dict[str, float | None]:
    """Each stage's seconds ('notebook/stage' -> seconds, None where it has none)."""
    return {name: _seconds(st.get("seconds")) if isinstance(st, dict) else None
            for name, st in (manifest.get("stages") or {}).items()}


def notebook_seconds(manifest: dict) -> dict[str, float | None]:
    """Each notebook's wall seconds as the driver timed it."""
    return {nb: _seconds(s) for nb, s in ((manifest.get("timing") or {}).get("notebooks_s") or {}).items()}


def _key(before: float | None, after: float | None) -> tuple:
    """Slowest first by the before run; rows only the after run has follow, slowest first."""
    return (before is None, -(before if before is not None else after or 0.0))


def rows(before: dict, after: dict) -> list[dict]:
    """The table's rows: per notebook (slowest first) its row, then its stages' rows (slowest first); then the
    totals of stages and of the run. Each row: kind, name, before_s, after_s."""
    sb, sa = stage_seconds(before), stage_seconds(after)
    nb_b, nb_a = notebook_seconds(before), notebook_seconds(after)
    books = list(dict.fromkeys([*nb_b, *nb_a, *(n.split("/")[0] for n in [*sb, *sa])]))
    def summed(seconds: dict, nb: str) -> float | None:  # a notebook's stages, where the driver did not time it
        found = [v for k, v in seconds.items() if k.split("/")[0] == nb and v is not None]
        return sum(found) if found else None

    def order(nb: str) -> tuple:
        b, a = nb_b.get(nb), nb_a.get(nb)
        return _key(summed(sb, nb) if b is None else b, summed(sa, nb) if a is None else a)

    out = []
    for nb in sorted(books, key=order):
        out.append({"kind": "notebook", "name": nb, "before_s": nb_b.get(nb), "after_s": nb_a.get(nb)})
        names = [n for n in dict.fromkeys([*sb, *sa]) if n.split("/")[0] == nb]
        for name in sorted(names, key=lambda n: _key(sb.get(n), sa.get(n))):
            out.append({"kind": "stage", "name": name, "before_s": sb.get(name), "after_s": sa.get(name)})
    total = [sum(v for v in s.values() if v is not None) for s in (sb, sa)]
    out.append({"kind": "total", "name": "all stages", "before_s": total[0], "after_s": total[1]})
    run = [_seconds((m.get("timing") or {}).get("total_s")) for m in (before, after)]
    out.append({"kind": "total", "name": "run (timing.total_s)", "before_s": run[0], "after_s": run[1]})
    return out


def _cell(s: float | None) -> str:
    """Seconds as a table cell."""
    return "-" if s is None else f"{s:.1f}"


def _diff(before: float | None, after: float | None) -> tuple[str, str]:
    """After minus before, in seconds and percent of before."""
    if before is None or after is None:
        return "-", "-"
    pct = f"{100 * (after - before) / before:+.0f} %" if before else "-"
    return f"{after - before:+.1f}", pct


def markdown(table: list[dict]) -> str:
    """The rows as a markdown table: notebooks and totals in bold, stages indented under their notebook."""
    lines = ["| notebook / stage | before s | after s | difference s | difference |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in table:
        name = f"&nbsp;&nbsp;{r['name'].split('/', 1)[-1]}" if r["kind"] == "stage" else f"**{r['name']}**"
        lines.append(f"| {name} | {_cell(r['before_s'])} | {_cell(r['after_s'])} | "
                     + " | ".join(_diff(r["before_s"], r["after_s"])) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the table of two runs; 2 where a manifest cannot be read."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", help="run folder or manifest.json of the run before")
    ap.add_argument("after", help="run folder or manifest.json of the run after")
    args = ap.parse_args(argv)
    try:
        manifests = [load(p) for p in (args.before, args.after)]
    except (OSError, ValueError) as err:
        print(f"stage_table: cannot read a manifest ({err}): give a run folder or its {MANIFEST}", file=sys.stderr)
        return 2
    print(markdown(rows(*manifests)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
