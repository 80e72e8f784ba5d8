"""House rules the code keeps: no import cycles between the package's modules (imports inside functions
count too), and no function in src/ longer than 80 lines."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "lesionseg").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module `name` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                root = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(root + ([base] if base else []))
            # `from pkg import sub` imports the submodule; `from pkg import name` runs pkg itself
            subs = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t for t in subs if t in known] or [base]
        else:
            continue
        # a package's __init__ always runs before its modules: importing an ancestor adds no edge
        found |= {t for t in targets if t in known and t != name and not name.startswith(t + ".")}
    return found


def test_no_import_cycles():
    mods = modules()
    graph = {name: imports(name, path, set(mods)) for name, path in mods.items()}

    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, "\n".join(" → ".join(c) for c in cycles)


def test_functions_read_in_one_screen():
    long = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "\n".join(long)


MAX_MODULE_LINES = 450


def test_modules_hold_one_concern_each():
    """A module past MAX_MODULE_LINES holds more than one concern: split it by concern."""
    long = [f"{path.relative_to(SRC)} ({n} lines)" for path in modules().values()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, "\n".join(long)

