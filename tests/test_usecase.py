"""The use-case table and contract: bad use cases are refused by name before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml_system.errors import UseCaseError
from ml_system.usecase import BUILTIN_USECASES, load_all, load_usecase, usecase_table

FAKES = "tests.usecases.fake_usecases"


def test_flights_is_the_default_and_both_builtin_use_cases_load() -> None:
    assert load_usecase(None).name == "flights"
    names = {uc.name: uc for uc in load_all()}
    assert set(BUILTIN_USECASES) <= set(names)
    assert names["arrival_delay"].route == "/arrival_delay" and names["flights"].route == "/"
    assert names["arrival_delay"].training.mode == "min" and names["flights"].training.mode == "max"


def test_unknown_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(UseCaseError, match=r"unknown use case 'nope' \(known: arrival_delay, flights"):
        load_usecase("nope")


def test_a_use_case_lacking_parts_is_refused_naming_them() -> None:
    with pytest.raises(UseCaseError, match=r"'incomplete' .* lacks: feature_service, training_rows, training, serving"):
        load_usecase("incomplete", {"incomplete": f"{FAKES}:incomplete"})


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("same_route", r"use cases '.*' and '.*' both claim route '/'"),
        ("same_model", r"use cases '.*' and '.*' both claim model_name 'flight_delay'"),
    ],
)
def test_two_use_cases_claiming_one_route_or_model_are_refused(name: str, message: str) -> None:
    table = {name: f"{FAKES}:{name}"}
    with pytest.raises(UseCaseError, match=message):
        load_usecase(name, table)
    with pytest.raises(UseCaseError, match=message):  # loading the other one checks the whole table too
        load_usecase("flights", table)


def test_an_entry_that_is_not_a_use_case_or_misnames_itself_is_refused() -> None:
    with pytest.raises(UseCaseError, match="is a dict, not a UseCase"):
        load_usecase("x", {"x": f"{FAKES}:not_a_usecase"})
    with pytest.raises(UseCaseError, match="declares itself as 'not_what_the_table_says'"):
        load_usecase("m", {"m": f"{FAKES}:misnamed"})
    with pytest.raises(UseCaseError, match="cannot import 'no_such_package'"):
        load_usecase("gone", {"gone": "no_such_package:usecase"})


def test_config_entries_extend_the_table() -> None:
    table = usecase_table({"extra": "pkg.mod:attr"})
    assert table["extra"] == "pkg.mod:attr" and table["flights"] == BUILTIN_USECASES["flights"]


def test_cli_refuses_an_unknown_use_case_before_doing_any_work(tmp_path: Path) -> None:
    env = {**os.environ, "MLSYS_HOME": str(tmp_path), "COLUMNS": "200"}
    for command in (["train"], ["quickstart"], ["features", "plan"]):
        out = subprocess.run(
            [sys.executable, "-m", "ml_system.cli", *command, "--usecase", "nope"],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert out.returncode == 1, (command, out.stderr)
        assert "unknown use case 'nope'" in out.stderr and "Traceback" not in out.stderr
        assert out.stderr.strip().count("\n") == 0, out.stderr
    assert not (tmp_path / "offline").exists()


def test_a_job_refuses_an_unknown_use_case_with_a_usage_error(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "jobs/train.py", "--usecase", "nope"],
        capture_output=True, text=True, cwd=repo, timeout=120,
        env={**os.environ, "MLSYS_HOME": str(tmp_path), "RAY_ADDRESS": ""},
    )  # fmt: skip
    assert out.returncode == 2 and "unknown use case 'nope'" in out.stderr
