"""The repository's promises to a newcomer: the README's two quick-start lines and the CI script.
Run: python -m pytest tests/test_repo.py"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_lines():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, flags=re.S).group(1)
    return [line.strip() for line in block.strip().splitlines()]


def test_readme_quick_start_is_two_lines_install_and_main_job_then_install_and_tests():
    lines = quick_start_lines()
    assert lines == ["pip install -r requirements.txt && python train.py",
                     "pip install -r requirements.txt && python -m pytest"]


def test_ci_runs_the_readme_test_command_after_installing_the_requirements():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    test_command = quick_start_lines()[1].split("&&")[1].strip()           # python -m pytest
    install = next(i for i, line in enumerate(ci) if "pip install" in line and "requirements.txt" in line)
    run = next(i for i, line in enumerate(ci) if line.startswith(test_command))
    assert install < run and "set -e" in " ".join(ci)  # a failing install or test fails CI


# --- the house rules of the code (issue 19): small files, short functions, comments, one-way imports

CORE = sorted(list(ROOT.glob("*.py")) + list((ROOT / "data").glob("*.py")))


def comment_and_code_lines(source):
    """(lines holding a comment or a docstring, lines holding code) of a Python source."""
    import ast
    import io
    import tokenize
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    commented = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                 if tok.type == tokenize.COMMENT}
    lines = [(i, line.strip()) for i, line in enumerate(source.splitlines(), 1) if line.strip()]
    code = [i for i, line in lines if i not in docstrings and not line.startswith("#")]
    return len(docstrings | commented), len(code)


def test_core_files_are_small_commented_and_without_long_functions():
    import ast
    for path in CORE:
        source = path.read_text()
        assert len(source.splitlines()) <= 600, f"{path.name} has more than 600 lines"
        comments, code = comment_and_code_lines(source)
        assert comments >= 0.35 * code, f"{path.name}: {comments} comment lines for {code} of code (< 0.35)"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 80, f"{path.name}: {node.name} is over 80 lines"


def test_project_imports_point_one_way():
    """No import cycle among the project's modules (lazy imports inside functions included)."""
    import ast
    modules = {str(p.relative_to(ROOT).with_suffix("")).replace("/", ".").removesuffix(".__init__"): p for p in CORE}
    imports = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        imports[name] = {m for m in found if m in modules and m != name}

    def reaches(start, goal, seen):
        return any(m == goal or (m not in seen and reaches(m, goal, seen | {m})) for m in imports[start])
    cycles = [name for name in modules if reaches(name, name, {name})]
    assert not cycles, f"import cycles through {cycles}"
