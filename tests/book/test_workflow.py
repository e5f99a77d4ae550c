"""The publishing workflow, validated offline against check-jsonschema's vendored schema."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


def test_workflow_matches_the_github_workflows_schema() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_workflow_builds_caches_and_deploys() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = _steps(workflow)
    uses = [step.get("uses", "").split("@")[0] for step in steps]
    runs = " ".join(step.get("run", "") for step in steps)
    assert "make book" in runs
    assert {"actions/upload-pages-artifact", "actions/deploy-pages", "actions/cache/restore",
            "actions/cache/save"} <= set(uses)
    assert workflow["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    cached = next(s for s in steps if s.get("uses", "").startswith("actions/cache/restore"))["with"]
    assert {"book/chapters", "data/runs", "data/cache"} <= set(cached["path"].split())
    # The key covers every input make book hashes, and nothing a text-only change touches.
    key = cached["key"]
    for source in ("notebooks/*.ipynb", "book/params/*.yaml", "sae_helpers/**/*.py", "requirements.txt",
                   "pyproject.toml"):
        assert source in key
    assert "book/*.md" not in key and "_config.yml" not in key
    # Every action is pinned to a major version at least.
    assert all("@" in step["uses"] for step in steps if "uses" in step)


def test_repository_url_is_written_once() -> None:
    """The site's address is derived from _config.yml's repository.url, never written again."""
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    owner_repo = url.removeprefix("https://github.com/")
    files = [WORKFLOW, ROOT / "Makefile", ROOT / "README.md", *sorted((ROOT / "book").glob("*.md")),
             *sorted((ROOT / "book" / "tools").glob("*.py"))]
    for path in files:
        assert owner_repo not in path.read_text(), f"{path} repeats the repository URL of _config.yml"
