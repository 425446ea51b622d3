"""The type stubs (lamina.pyi) describe what the module has, no more, no less."""

import ast
import inspect

import lamina
from conftest import REPO

STUB = REPO / "python" / "lamina.pyi"


def stub_names(body) -> dict[str, ast.AST]:
    names = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return {n: v for n, v in names.items() if not n.startswith("_") or n == "__version__"}


def public(obj) -> set[str]:
    # maturin's package imports the extension as a submodule: not API.
    return {
        n for n in dir(obj) if not n.startswith("_") and not inspect.ismodule(getattr(obj, n))
    }


def test_module_names_match_the_stub():
    stub = stub_names(ast.parse(STUB.read_text()).body)
    assert set(stub) == public(lamina) | {"__version__"}


def test_class_members_match_the_stub():
    stub = stub_names(ast.parse(STUB.read_text()).body)
    for cls in ("Model", "TensorInfo"):
        members = set(stub_names(stub[cls].body))
        assert members == public(getattr(lamina, cls)), cls


def test_function_parameters_match_the_stub():
    stub = stub_names(ast.parse(STUB.read_text()).body)
    for name in ("load", "from_source"):
        args = stub[name].args
        declared = [a.arg for a in args.args + args.kwonlyargs]
        assert declared == list(inspect.signature(getattr(lamina, name)).parameters), name
    run = stub_names(stub["Model"].body)["run"].args
    assert [a.arg for a in run.args + run.kwonlyargs][1:] == list(
        inspect.signature(lamina.Model.run).parameters
    )[1:]
