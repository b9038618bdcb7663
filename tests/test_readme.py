"""The README's commands as a newcomer pastes them: each names an interpreter that has what it
imports, each module answers, and the tour's create body is what its comment says it declares."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.helpers import schema_errors

README = (ROOT / "README.md").read_text()
# `... -m module [subcommand]` in the README's code: inline spans and fenced blocks alike.
CODE = re.findall(r"`([^`\n]+)`", README) + re.findall(r"```sh\n(.*?)```", README, re.S)
MODULE_COMMANDS = sorted(
    {
        (m.group(1), m.group(2), m.group(3) or "")
        for text in CODE
        for m in re.finditer(r"(\S*python3?) -m ([\w.]+)(?: ([a-z][\w-]*))?", text)
        if m.group(2) != "venv"
    }
)


def test_the_readme_names_module_commands():
    assert ("client", "upload") in {(module, sub) for _, module, sub in MODULE_COMMANDS}


@pytest.mark.parametrize(("interpreter", "module", "sub"), MODULE_COMMANDS, ids=lambda v: v or "-")
def test_each_module_command_runs_with_the_interpreter_it_names(interpreter, module, sub):
    """Issue 34: `python -m client upload FILE` failed outside the virtualenv (No module named
    'platformdirs'); the README names the virtualenv's interpreter, and the command answers."""
    assert interpreter == ".venv/bin/python", f"`{interpreter} -m {module}` needs the project's virtualenv"
    done = subprocess.run(
        [sys.executable, "-m", module, *([sub] if sub else []), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_the_tours_create_declares_the_size_it_says_it_does(tmp_path, openapi_doc):
    """Issue 34: the tour said "Declare the size and checksum" above a body that declared neither. Its
    body, expanded by the shell beside a real file, is a valid create declaring that file's size."""
    tour = README.split("## A short tour of the API", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    step = tour.split("# 1.", 1)[1].split("\n# 2.", 1)[0]
    assert "Declare the size" in step
    body = re.search(r'-d ("(?:[^"\\]|\\.)*")', step).group(1)
    shutil.copy(ROOT / "tests" / "media" / "clip.mp4", tmp_path / "clip.mp4")
    expanded = subprocess.run(
        ["bash", "-c", f"printf %s {body}"], cwd=tmp_path, capture_output=True, text=True, timeout=30, check=True
    ).stdout
    sent = json.loads(expanded)
    assert sent["size_bytes"] == (tmp_path / "clip.mp4").stat().st_size
    assert schema_errors(openapi_doc, "#/components/schemas/UploadRequest", sent) == []
