"""The package's layering: no import circle, the bottom modules import nothing of ours,
and the configuration types import no torch (so the launcher can load a training config
where torch is absent)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("helm_scale", "data_prep", "launcher")
BOTTOM = ("helm_scale.codon", "helm_scale.tokenizer", "helm_scale.durable")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _lazy_names(tree: ast.Module) -> dict[str, str]:
    """A package's ``_LAZY = {"name": "submodule"}`` table (names imported on first use)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def import_graph() -> dict[str, set[str]]:
    """Module -> modules of ours it imports anywhere (in functions too: a lazy import is
    still a dependency), except under ``if TYPE_CHECKING:``, which never runs."""
    modules = _modules()
    trees = {name: ast.parse(path.read_text()) for name, path in modules.items()}
    lazy = {name: _lazy_names(tree) for name, tree in trees.items() if modules[name].name == "__init__.py"}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
        targets = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                table = lazy.get(node.module, {})
                targets += [f"{node.module}.{table.get(a.name, a.name)}" for a in node.names]
        graph[name] = {r for t in targets if (r := resolve(t)) and r != name and not name.startswith(r + ".")}
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while not component or w != v:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    graph = import_graph()
    assert "helm_scale.models.registry" in graph["helm_scale.trainer"]  # deferred imports count
    found = circles(graph)
    assert not found, f"import circles: {found}"


def test_the_circle_check_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_bottom_modules_import_nothing_of_ours():
    graph = import_graph()
    for name in BOTTOM:  # but each other
        assert graph[name] <= set(BOTTOM), f"{name} imports {graph[name] - set(BOTTOM)}"


def test_config_types_import_no_torch():
    code = ("import sys\n"
            "import helm_scale.train_config, helm_scale.config_io, helm_scale.parallel.config, launcher.job\n"
            "from helm_scale.train_config import load_train_config\n"
            f"load_train_config({str(ROOT / 'configs' / 'tiny.yaml')!r}, ['parallel.tensor_parallel=2'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron', 'deepspeed')))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_exports_load_without_megatron_and_eval_parses_without_torch():
    """An export is plain PyTorch (models.registry.build_model: no megatron-core, no
    DeepSpeed); `helm-scale eval` builds its parser without torch (each command imports
    what it runs inside run())."""
    code = ("import sys\n"
            "from helm_scale.cli import build_parser\n"
            "build_parser(['eval', 'generate'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron', 'deepspeed')))\n"
            "import helm_scale.export, helm_scale.models.registry\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'megatron', 'deepspeed'}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "['torch']"]
