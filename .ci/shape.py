"""Report source files over 400 lines and functions over 80 lines.

A function's length counts from the line after its signature to its last line, so a
declarative CLI signature (one typed parameter per option) does not count against it.

Usage: python .ci/shape.py [PATH ...]   (default: src/elmtune); exit 1 when anything is over.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def over_limits(paths: list[Path]) -> list[str]:
    """Return one line per file or function over its limit."""
    problems = []
    for path in paths:
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            text = file.read_text(encoding="utf-8")
            lines = text.count("\n") + (0 if text.endswith("\n") else 1)
            if lines > MAX_FILE_LINES:
                problems.append(f"{file}: {lines} lines (limit {MAX_FILE_LINES})")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    body_start = node.body[0].lineno
                    length = node.end_lineno - body_start + 1
                    if length > MAX_FUNCTION_LINES:
                        limit = MAX_FUNCTION_LINES
                        problems.append(f"{file}:{node.lineno} {node.name}: {length} lines (limit {limit})")
    return problems


if __name__ == "__main__":
    targets = [Path(arg) for arg in sys.argv[1:]] or [Path("src/elmtune")]
    found = over_limits(targets)
    print("\n".join(found) if found else "all files and functions within limits")
    sys.exit(1 if found else 0)
