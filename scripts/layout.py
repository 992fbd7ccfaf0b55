"""Write docs/layout.md: one line per module of the kdlab package (path, lines, its docstring's first sentence).

Run after adding, moving or renaming a module: ``.venv/bin/python scripts/layout.py``; tests/test_layout.py checks
that the page lists exactly the modules there are.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 100

HEADER = """# Where things are

One line per module of the `kdlab` package: its path, its length in lines and the first sentence of its docstring
(written by `scripts/layout.py`). Tests mirror this tree under `tests/` (`kdlab/x/y.py` is tested in
`tests/x/test_y.py`). Modules are cut by responsibility, not by size. `tests/test_layout.py` checks that no function
passes 80 lines (argument-parser tables excepted), that the kdlab import graph has no cycle, that no two sub-packages
import each other and that this page lists every module.

Reading order for a newcomer: `cli.py` and `api.py` (what a user calls), `train/recipes.py` (what `kdlab sft` and
`kdlab distill` do), `losses/` (the KD math, written once) and `teacher_cache/` (the same objective from a cache),
`eval/evaluate.py` and `fidelity_metrics/` (what is measured), then `study/` (a grid from one spec: `spec/`,
`plan.py`, `executors/`, `report/`) and `stats/` (its results table and statistics, and the paper's).
"""


def first_sentence(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    text = " ".join(doc.split("\n\n")[0].split())
    match = re.match(r"(.+?\.)(\s|$)", text)
    text = match.group(1) if match else text
    return text if len(text) <= WIDTH else text[: WIDTH - 1].rstrip() + "…"


def module_paths(package: Path) -> list[Path]:
    return sorted(package.rglob("*.py"), key=lambda p: (p.parent.as_posix(), p.name != "__init__.py", p.name))


def render() -> str:
    lines = [HEADER, "```"]
    for path in module_paths(ROOT / "kdlab"):
        name = path.relative_to(ROOT).as_posix()
        size = len(path.read_text(encoding="utf-8").splitlines())
        lines.append(f"{name:<42} {size:>4}  {first_sentence(path)}")
    return "\n".join([*lines, "```"]) + "\n"


if __name__ == "__main__":
    (ROOT / "docs" / "layout.md").write_text(render(), encoding="utf-8")
