"""Offline provider-schema check of terraform/ (`python -m dev.tfschema [DIR]`).

`terraform validate` needs the provider binaries from the Terraform registry,
which these machines cannot reach. The same schema ships on PyPI: each
`cdktn-provider-<name>` wheel carries a jsii assembly generated from the
provider's schema, in which every resource class names its Terraform type
(`... /docs/resources/storage_bucket google_storage_bucket}`) and every config
property its argument (`... #bucket_name BackendBucket#bucket_name}`), with
`optional` telling required from optional and struct-typed properties being
nested blocks.

This module extracts that into a compact schema (cached under
~/.cache/framelane-tfschema, since the google wheel is ~67 MB), parses the .tf
files with python-hcl2, and reports every resource or data type the pinned
provider lacks, every argument or block it does not have, and every required
argument or block that is missing. It also checks that versions.tf's
constraint for each provider admits the version whose schema it read.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2

# provider -> (PyPI package, package version, provider version it was generated from)
PROVIDERS = {
    "google": ("cdktn-provider-google", "21.1.0", "8.7.0"),
    "google-beta": ("cdktn-provider-google-beta", "21.1.0", "8.7.0"),
    "archive": ("cdktn-provider-archive", "14.0.1", "2.8.1"),
    "random": ("cdktn-provider-random", "15.0.1", "3.9.1"),
    "time": ("cdktn-provider-time", "14.0.2", "0.14.2"),
}
META_ARGUMENTS = {"count", "for_each", "depends_on", "provider"}
META_BLOCKS = {"lifecycle", "provisioner", "connection"}
_CLASS_DOC = re.compile(
    r"registry\.terraform\.io/providers/hashicorp/([\w-]+)/([\d.]+)/docs/"
    r"(resources|data-sources)/\w+ (\w+)\}"
)
_ARG_DOC = re.compile(r"#(\w+) \w+#\w+\}")
_BASES = {"cdktn.TerraformResource": "resource", "cdktn.TerraformDataSource": "data"}


# --- extracting the schema from a jsii assembly ----------------------------------


def extract(assembly: dict, provider: str, provider_version: str) -> dict:
    """{"version", "resource": {type: struct}, "data": {type: struct}, "structs": {struct: {...}}}.

    A struct is {"attrs": {name: required}, "blocks": {name: [required, struct]}}.
    """
    types = assembly["types"]
    out: dict[str, Any] = {"version": provider_version, "resource": {}, "data": {}, "structs": {}}

    def struct_of(type_ref: Any) -> str | None:
        """The fqn of the first struct of this assembly inside a (possibly nested) type reference."""
        if isinstance(type_ref, dict):
            fqn = type_ref.get("fqn")
            if fqn and fqn in types and types[fqn].get("datatype"):
                return fqn
            for value in type_ref.values():
                found = struct_of(value)
                if found:
                    return found
        elif isinstance(type_ref, list):
            for value in type_ref:
                found = struct_of(value)
                if found:
                    return found
        return None

    def add_struct(fqn: str) -> str:
        if fqn in out["structs"]:
            return fqn
        out["structs"][fqn] = entry = {"attrs": {}, "blocks": {}}
        for prop in types[fqn].get("properties", []):
            match = _ARG_DOC.search(prop.get("docs", {}).get("remarks", ""))
            name = match.group(1) if match else re.sub(r"(?<!^)([A-Z])", r"_\1", prop["name"]).lower()
            required = not prop.get("optional", False)
            nested = struct_of(prop["type"])
            if nested:
                entry["blocks"][name] = [required, add_struct(nested)]
            else:
                entry["attrs"][name] = required
        return fqn

    for fqn, cls in types.items():
        kind = _BASES.get(cls.get("base", ""))
        if kind is None or cls.get("kind") != "class":
            continue
        match = _CLASS_DOC.search(cls.get("docs", {}).get("summary", ""))
        if not match or match.group(1) != provider:
            continue
        if match.group(2) != provider_version:
            raise ValueError(f"{fqn} documents provider {match.group(2)}, expected {provider_version}")
        config = struct_of(cls["initializer"]["parameters"][-1]["type"])
        out[kind][match.group(4)] = add_struct(config)
    if not out["resource"]:
        raise ValueError(f"no {provider} resources found in the assembly")
    return out


def assembly_from_wheel(wheel: Path) -> dict:
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(zf.read(member))) as tar:
            return json.load(tar.extractfile("package/.jsii"))


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "framelane-tfschema"


def load_schema(provider: str) -> dict:
    """The provider's extracted schema, from the cache or built from its wheel on PyPI."""
    package, package_version, provider_version = PROVIDERS[provider]
    path = cache_dir() / f"{provider}-{provider_version}.json"
    if path.exists():
        return json.loads(path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--disable-pip-version-check",
                f"{package}=={package_version}",
                "-d",
                tmp,
            ],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        schema = extract(assembly_from_wheel(wheel), provider, provider_version)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(schema, separators=(",", ":")))
    partial.replace(path)  # atomic: a crashed run never leaves half a cache
    return schema


# --- checking .tf files ------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    file: str
    address: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.address}: {self.message}"


def _unquote(label: str) -> str:
    return label[1:-1] if len(label) >= 2 and label[0] == label[-1] == '"' else label


def _blocks(tf: dict, kind: str) -> Iterator[tuple[str, str, dict]]:
    for entry in tf.get(kind, []):
        for type_label, named in entry.items():
            for name_label, body in named.items():
                yield _unquote(type_label), _unquote(name_label), body


def _check_body(body: dict, struct: str, schema: dict, where: str, top: bool) -> list[tuple[str, str]]:
    """(address, message) for each problem in one block body, nested blocks included."""
    spec = schema["structs"][struct]
    problems: list[tuple[str, str]] = []
    present_blocks: dict[str, int] = {}
    for key, value in body.items():
        if key.startswith("__"):
            continue
        if key == "dynamic":
            for dyn in value:
                for label, dyn_body in dyn.items():
                    name = _unquote(label)
                    if name not in spec["blocks"]:
                        problems.append((where, f"unknown block {name!r} (dynamic)"))
                        continue
                    present_blocks[name] = present_blocks.get(name, 0) + 1
                    for content in dyn_body.get("content", []):
                        problems += _check_body(content, spec["blocks"][name][1], schema, f"{where}.{name}", False)
            continue
        if top and (key in META_ARGUMENTS or key in META_BLOCKS):
            continue
        is_block = (
            isinstance(value, list) and value and all(isinstance(v, dict) and v.get("__is_block__") for v in value)
        )
        if is_block:
            if key not in spec["blocks"]:
                hint = " (it is an argument)" if key in spec["attrs"] else ""
                problems.append((where, f"unknown block {key!r}{hint}"))
                continue
            present_blocks[key] = present_blocks.get(key, 0) + len(value)
            for item in value:
                problems += _check_body(item, spec["blocks"][key][1], schema, f"{where}.{key}", False)
        elif key not in spec["attrs"]:
            hint = " (it is a block)" if key in spec["blocks"] else ""
            problems.append((where, f"unknown argument {key!r}{hint}"))
    for name, required in spec["attrs"].items():
        if required and name not in body:
            problems.append((where, f"missing required argument {name!r}"))
    for name, (required, _) in spec["blocks"].items():
        if required and not present_blocks.get(name):
            problems.append((where, f"missing required block {name!r}"))
    return problems


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def constraint_admits(constraint: str, version: str) -> bool:
    """Terraform version-constraint semantics for =, !=, >, >=, <, <=, ~>."""
    have = _version_tuple(version)
    for clause in (c.strip() for c in constraint.split(",")):
        match = re.fullmatch(r"(~>|>=|<=|!=|=|>|<)?\s*([\d.]+)", clause)
        if not match:
            raise ValueError(f"cannot read version constraint {clause!r}")
        op, want_text = match.group(1) or "=", match.group(2)
        want = _version_tuple(want_text)
        padded = have + (0,) * (len(want) - len(have))
        if op == "~>":
            upper = (*want[:-1][:-1], want[:-1][-1] + 1) if len(want) > 1 else (want[0] + 1,)
            ok = padded >= want and padded[: len(upper)] < upper
        else:
            ok = {
                "=": padded == want,
                "!=": padded != want,
                ">": padded > want,
                ">=": padded >= want,
                "<": padded < want,
                "<=": padded <= want,
            }[op]
        if not ok:
            return False
    return True


def check(directory: Path, schemas: dict[str, dict] | None = None) -> list[Problem]:
    """Every schema problem in the .tf files of `directory`."""
    schemas = schemas if schemas is not None else {}

    def schema_for(type_name: str, body: dict) -> dict | None:
        provider = type_name.split("_", 1)[0]
        if "provider" in body:  # `provider = google-beta` (or `google-beta.alias`): that provider's schema
            provider = str(body["provider"]).removeprefix("${").removesuffix("}").split(".", 1)[0]
        if provider not in PROVIDERS:
            return None
        if provider not in schemas:
            schemas[provider] = load_schema(provider)
        return schemas[provider]

    problems: list[Problem] = []
    for path in sorted(directory.glob("*.tf")):
        with path.open() as handle:
            tf = hcl2.load(handle)
        for kind in ("resource", "data"):
            for type_name, name, body in _blocks(tf, kind):
                address = f"{'data.' if kind == 'data' else ''}{type_name}.{name}"
                schema = schema_for(type_name, body)
                if schema is None:
                    problems.append(Problem(path.name, address, f"no schema for provider of {type_name!r}"))
                    continue
                struct = schema[kind].get(type_name)
                if struct is None:
                    problems.append(
                        Problem(
                            path.name, address, f"unknown {kind} type {type_name!r} in provider {schema['version']}"
                        )
                    )
                    continue
                problems += [
                    Problem(path.name, where, message)
                    for where, message in _check_body(body, struct, schema, address, True)
                ]
        for terraform_block in tf.get("terraform", []):
            for required in terraform_block.get("required_providers", []):
                for provider, spec in required.items():
                    if provider.startswith("__"):
                        continue
                    if provider not in PROVIDERS:
                        problems.append(Problem(path.name, "terraform", f"no schema source for provider {provider!r}"))
                        continue
                    version = PROVIDERS[provider][2]
                    constraint = _unquote(spec.get("version", ""))
                    if not constraint_admits(constraint, version):
                        problems.append(
                            Problem(
                                path.name,
                                "terraform",
                                f"{provider} {constraint!r} does not admit {version}, the schema checked",
                            )
                        )
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0] if args else Path(__file__).resolve().parent.parent / "terraform")
    problems = check(directory)
    for problem in problems:
        print(problem)
    versions = ", ".join(f"{p} {v[2]}" for p, v in PROVIDERS.items())
    print(f"{len(problems)} problem(s) in {directory} against {versions}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
