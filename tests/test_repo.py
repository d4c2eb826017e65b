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
