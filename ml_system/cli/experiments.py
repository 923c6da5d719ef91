"""``mlsys experiments``: a team's hypothesis queue: submit, list, cancel, run."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ml_system.cli.common import ConfigOpt, HomeOpt, UseCaseOpt, cli_config, console, fails_cleanly
from ml_system.cli.groups import GroupsOpt, TeamOpt, TokenOpt, acting_for, admission_client
from ml_system.errors import TeamError
from ml_system.teams.experiments import HypothesisQueue, parse_request

app = typer.Typer(help="Hypothesis queue: experiments per team, run in priority order on the team's quota.")


def _space(value: str | None) -> dict[str, Any]:
    """JSON inline or ``@file.json``: ``{"max_depth": {"randint": [3, 8]}, "eta": 0.1}``."""
    if not value:
        return {}
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        space = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TeamError(f"--space is not valid JSON: {exc}") from None
    if not isinstance(space, dict):
        raise TeamError("--space must be a JSON object of parameter -> constant or domain")
    return space


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("submit")
@fails_cleanly
def experiments_submit(
    team: str = TeamOpt,
    token: str | None = TokenOpt,
    usecase: str | None = UseCaseOpt,
    space: str | None = typer.Option(
        None, help='Search space override, JSON or @file: {"eta": {"uniform": [0.05, 0.3]}}'
    ),
    trials: int = typer.Option(4, min=1, help="Budget: trials"),
    cpu_seconds: float | None = typer.Option(None, min=1, help="Budget: CPU-seconds of all trials together"),
    concurrency: int = typer.Option(1, min=1, help="Trials at once (each one CPU of the team's quota)"),
    rounds: int | None = typer.Option(None, min=10, help="Boosting rounds per trial (default: the use case's)"),
    expected_gain: float = typer.Option(..., help="Expected gain over the champion, in the use case's metric"),
    owner: str | None = typer.Option(None, help="Who in the team owns it (default: the OS user)"),
    priority: int = typer.Option(0, min=0, help="Higher runs first within the team"),
    description: str = typer.Option("", help="The hypothesis in words"),
    groups: str | None = GroupsOpt,
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Queue an experiment for TEAM (its token in $MLSYS_TEAM_TOKEN)."""
    from ml_system.pipelines.steps import usecase_for

    cfg, parsed = acting_for(team, token, groups, config, home)
    uc = usecase_for(cfg, usecase)
    request = parse_request(
        {
            "team": team,
            "usecase": uc.name,
            "owner": owner or getpass.getuser(),
            "search_space": _space(space),
            "budget": {"trials": trials, "cpu_seconds": cpu_seconds, "concurrency": concurrency, "rounds": rounds},
            "expected_gain": expected_gain,
            "priority": priority,
            "description": description,
        }
    )
    record = HypothesisQueue(cfg.teams.state_dir).submit(request, parsed)
    assert uc.training is not None
    console.print(
        f"queued {record['id']} for team {team}: {uc.name}, {trials} trial(s), expects {uc.training.metric} "
        f"{expected_gain:+g} over the champion, priority {priority}"
    )


@app.command("list")
@fails_cleanly
def experiments_list(
    team: str | None = typer.Option(None, "--team", "-t", help="Only this team's"),
    state: str | None = typer.Option(None, help="queued | running | succeeded | failed | cancelled"),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Experiments: queued ones in the order they will run, then the rest, newest first."""
    cfg = cli_config(config, home)
    table = Table(title="experiments")
    for col in ("id", "team", "prio", "state", "use case", "owner", "expected", "achieved gain", "held", "submitted"):
        table.add_column(col)
    for r in HypothesisQueue(cfg.teams.state_dir).list(team, state):
        out = r["outcome"] or {}
        gain = f"{out['gain']:+.4f} ({out['metric']})" if out else (r["error"] or "-")[:40]
        held = "-" if not out else ("yes" if out["hypothesis_held"] else "no")
        state_text = r["state"] + (" (cancelling)" if r["cancel_requested"] and r["state"] == "running" else "")
        table.add_row(
            r["id"], r["team"], str(r["priority"]), state_text, r["usecase"], r["owner"],
            f"{r['expected_gain']:+g}", gain, held, _when(r["submitted_at"]),
        )  # fmt: skip
    console.print(table)


@app.command("cancel")
@fails_cleanly
def experiments_cancel(
    experiment_id: str,
    team: str = TeamOpt,
    token: str | None = TokenOpt,
    groups: str | None = GroupsOpt,
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Cancel a queued experiment, or stop a running one at its next check (team token required)."""
    cfg, _ = acting_for(team, token, groups, config, home)
    record = HypothesisQueue(cfg.teams.state_dir).cancel(experiment_id, team)
    what = "cancelled" if record["state"] == "cancelled" else "asked to stop (it is running)"
    console.print(f"{experiment_id} of team {team}: {what}")


@app.command("run")
@fails_cleanly
def experiments_run(
    team: str = TeamOpt,
    token: str | None = TokenOpt,
    max_experiments: int | None = typer.Option(None, "--max", min=1, help="Stop after this many"),
    groups: str | None = GroupsOpt,
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Run TEAM's queued experiments in priority order, each a Tune search on the team's quota."""
    from ml_system.pipelines.experiments import run_queue

    cfg, parsed = acting_for(team, token, groups, config, home)
    client = admission_client(cfg, parsed)

    def started(record: dict[str, Any]) -> None:
        console.print(f"running {record['id']} ({record['usecase']}, priority {record['priority']})")

    def done(record: dict[str, Any]) -> None:
        out = record["outcome"]
        if out is None:
            console.print(f"{record['id']}: {record['state']}: {record['error']}", markup=False)
            return
        verdict = "held" if out["hypothesis_held"] else "refuted"
        console.print(
            f"{record['id']}: {out['metric']} {out['achieved']:.4f} vs {out['reference']:.4f} "
            f"({out['reference_source']}): gain {out['gain']:+.4f}, expected {out['expected_gain']:+g}: {verdict} "
            f"(model v{out['model_version']}, {out['trials']} trials, {out['cpu_seconds']:g} CPU-s)"
        )

    finished = run_queue(cfg, team, client, max_experiments=max_experiments, on_start=started, on_done=done)
    console.print(f"ran {len(finished)} experiment(s) for team {team}")
