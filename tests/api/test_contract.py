"""The public contract is kept beside the code (contract/), so every clone tests
against it; where the shared original is beside the repository (the workspace),
the copy must be it, byte for byte."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT, SHARED_SEED

FILES = ("uploads-openapi.yaml", "uploads-endpoint.md")


@pytest.mark.parametrize("name", FILES)
def test_the_contract_copy_is_the_shared_original(name):
    original = SHARED_SEED / name
    if not original.exists():
        pytest.skip(f"no shared original at {original} (a clone outside the workspace): the copy stands alone")
    assert (ROOT / "contract" / name).read_bytes() == original.read_bytes(), (
        f"contract/{name} differs from {original}: copy the shared one over it"
    )


def test_the_copy_is_the_whole_contract():
    assert sorted(path.name for path in (ROOT / "contract").iterdir()) == sorted(FILES)
