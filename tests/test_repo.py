"""The repository's promises: the design card's layout (five modules a learner reads, everything else
beside them), their line budgets, imports that point one way, a training step that stays in a few
files, the README's two quick-start lines and the CI script. Run: python -m pytest tests/test_repo.py"""
import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import torch

import train
from conftest import TINY_SHOWO
from test_datasets import write_cifar

ROOT = Path(__file__).resolve().parents[1]
FIVE = ["attention.py", "model.py", "sample.py", "tokenizer.py", "train.py"]
LEARNER = [ROOT / name for name in FIVE] + sorted((ROOT / "data").glob("*.py"))


def lines(*paths):
    return sum(len(Path(p).read_text().splitlines()) for p in paths)


def test_the_top_level_is_the_design_cards():
    assert sorted(p.name for p in ROOT.glob("*.py")) == FIVE
    for folder in ("data", "tests", "docs", "evaluation", "tools", ".ci"):
        assert (ROOT / folder).is_dir(), folder


def test_the_learners_path_fits_its_line_budgets():
    assert lines(*(ROOT / f for f in ("tokenizer.py", "attention.py", "model.py"))) <= 1150
    assert lines(ROOT / "train.py") <= 600
    assert lines(ROOT / "sample.py") <= 350
    assert lines(*LEARNER) <= 3300
    assert lines(ROOT / "README.md") <= 200


def comment_and_code_lines(source):
    """(lines holding a comment, a docstring or a config field's help text, lines holding code) of a
    Python source: `lr: float = option(1e-3, "peak AdamW learning rate")` documents its field as a
    trailing comment would, and --help shows the same words."""
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "option":
            docstrings.update(range(node.lineno, node.end_lineno + 1))
    commented = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                 if tok.type == tokenize.COMMENT}
    numbered = [(i, line.strip()) for i, line in enumerate(source.splitlines(), 1) if line.strip()]
    code = [i for i, line in numbered if i not in docstrings and not line.startswith("#")]
    return len(docstrings | commented), len(code)


def test_the_learners_files_are_commented_and_without_long_functions():
    for path in LEARNER:
        source = path.read_text()
        comments, code = comment_and_code_lines(source)
        assert comments >= 0.35 * code, f"{path.name}: {comments} comment lines for {code} of code (< 0.35)"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 80, f"{path.name}: {node.name} is over 80 lines"


def module_imports(path, top_level_only):
    """The modules a file imports (at its top level only, or anywhere, lazily inside functions too)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_imports_point_one_way():
    """tools -> evaluation -> the five modules -> data where needed: no cycle, nothing of the learner's
    path imports the evaluation or the tools (the pipeline's last step may, inside its function)."""
    files = LEARNER + sorted((ROOT / "evaluation").glob("*.py")) + sorted((ROOT / "tools").glob("*.py"))
    modules = {str(p.relative_to(ROOT).with_suffix("")).replace("/", ".").removesuffix(".__init__"): p for p in files}
    imports = {name: {m for m in module_imports(path, False) if m in modules and m != name}
               for name, path in modules.items()}

    def reaches(start, goal, seen):
        return any(m == goal or (m not in seen and reaches(m, goal, seen | {m})) for m in imports[start])
    assert not [name for name in modules if reaches(name, name, {name})], "an import cycle"
    for path in LEARNER:
        assert not any(m.split(".")[0] in ("evaluation", "tools") for m in module_imports(path, True)), path.name
    for path in sorted((ROOT / "evaluation").glob("*.py")):
        assert not any(m.split(".")[0] == "tools" for m in module_imports(path, False)), path.name


def test_importing_train_sample_or_model_loads_no_evaluation_or_tool():
    code = "import sys, train, sample, model; print([m for m in sys.modules if m.split('.')[0] in ('evaluation', 'tools')])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:] + out.stdout


def test_one_cifar10_training_step_stays_in_five_files(tokenizer, tmp_path, monkeypatch):
    """Every project function that runs from drawing a Show-o step's batch to optimizer.step(), traced:
    they live in train.py, data/tasks.py, model.py, attention.py and tokenizer.py."""
    write_cifar(tmp_path, ["data_batch_1", "test_batch"], n=32)
    visited, draw_batch, optimizer_step = set(), train.showo_batch, torch.optim.AdamW.step

    def record(frame, event, arg):  # the project's files, not this test's own wrappers
        if event == "call" and frame.f_code.co_filename.startswith(str(ROOT)) and "/tests/" not in frame.f_code.co_filename:
            visited.add(str(Path(frame.f_code.co_filename).relative_to(ROOT)))

    def traced_batch(*args):
        if not visited:
            sys.setprofile(record)
        return draw_batch(*args)

    def step_then_stop(self, *args, **kwargs):
        sys.setprofile(None)
        return optimizer_step(self, *args, **kwargs)
    monkeypatch.setattr(train, "showo_batch", traced_batch)
    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_stop)
    tiny = [a for a in TINY_SHOWO if a not in ("shapes", "--dataset", "--limit", "64")]
    train.main(["showo", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--tokenizer", str(tokenizer),
                "--out", str(tmp_path / "run"), "--max-steps", "1", "--mirror", "--hide-codes", "0.5"] + tiny)
    assert visited == {"train.py", "data/tasks.py", "model.py", "attention.py", "tokenizer.py"}, visited


def quick_start_lines():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, flags=re.S).group(1)
    return [line.strip() for line in block.strip().splitlines()]


def test_readme_quick_start_is_two_lines_install_and_main_job_then_install_and_tests():
    assert quick_start_lines() == ["pip install -r requirements.txt && python train.py",
                                   "pip install -r requirements.txt && python -m pytest"]


def test_ci_runs_the_readme_test_command_after_installing_the_requirements():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    test_command = quick_start_lines()[1].split("&&")[1].strip()           # python -m pytest
    install = next(i for i, line in enumerate(ci) if "pip install" in line and "requirements.txt" in line)
    run = next(i for i, line in enumerate(ci) if line.startswith(test_command))
    assert install < run and "set -e" in " ".join(ci)  # a failing install or test fails CI
