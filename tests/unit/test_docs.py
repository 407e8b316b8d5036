"""The generated docs match the code they are generated from."""

from __future__ import annotations

from docs.diagrams import main


def test_state_machine_diagrams_are_up_to_date() -> None:
    assert main(["--check"]) == 0, "run: python -m docs.diagrams"
