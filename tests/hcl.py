"""Reading terraform/ offline (python-hcl2): its files, variables and resources, and the files its archive takes."""

from __future__ import annotations

import re

import hcl2

from tests.conftest import ROOT

TF = ROOT / "terraform"


def load_tf(name: str) -> dict:
    with (TF / name).open() as handle:
        return hcl2.load(handle)


def unquote(value: str) -> str:
    return value[1:-1] if isinstance(value, str) and value[:1] == value[-1:] == '"' else value


def tf_variables() -> dict:
    """variables.tf as {name: body}."""
    return {unquote(k): v for block in load_tf("variables.tf")["variable"] for k, v in block.items()}


def resource(tf: dict, type_name: str, name: str, kind: str = "resource") -> dict:
    for entry in tf.get(kind, []):
        for type_label, named in entry.items():
            if unquote(type_label) == type_name:
                for name_label, body in named.items():
                    if unquote(name_label) == name:
                        return body
    raise KeyError(f"{kind} {type_name}.{name}")


def archive_files() -> list[str]:
    """The files terraform's archive_file zips, from function.tf's `function_files` local.

    The expression is `setunion([literal files], fileset(local.repo_root, "glob"), ...)`;
    anything else there should fail this test rather than be guessed at.
    """
    locals_ = {k: v for block in load_tf("function.tf")["locals"] for k, v in block.items()}
    expression = locals_["function_files"]
    match = re.fullmatch(r"\$\{setunion\(\[(.*?)\], (.*)\)\}", expression)
    assert match, f"unexpected function_files expression: {expression}"
    files = set(re.findall(r'"([^"]+)"', match.group(1)))
    for pattern in re.findall(r'fileset\(local\.repo_root, "([^"]+)"\)', match.group(2)):
        files |= {p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern) if p.is_file()}
    return sorted(files)
