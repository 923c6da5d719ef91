"""``mlsys rollout start | status | promote | abort | resume``: canary, blue-green and shadow rollouts."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ml_system.cli.common import ConfigOpt, HomeOpt, UseCaseOpt, cli_config, console, fails_cleanly
from ml_system.cli.model_promotion import TokenOpt

rollout_app = typer.Typer(help="Roll a challenger out: canary, blue-green or shadow, judged step by step.")


def _controller(config: str | None, home: str | None, usecase: str | None):  # type: ignore[no-untyped-def]
    from ml_system.pipelines.steps import usecase_for
    from ml_system.rollout.controller import RolloutController

    cfg = cli_config(config, home)
    return RolloutController(cfg, usecase_for(cfg, usecase))


def _follow(controller, tick_s: float | None) -> None:  # type: ignore[no-untyped-def]
    shown = [""]

    def show(state, result) -> None:  # type: ignore[no-untyped-def]
        if result is not None and result.summary() != shown[0]:
            shown[0] = result.summary()
            console.print(f"step {result.step} ({result.weight:g}%): {shown[0]}", soft_wrap=True)

    state = controller.run(tick_s, on_tick=show)
    if state is not None:
        outcome = f"rollout {state.id}: {state.status} (v{state.champion} -> v{state.challenger}): {state.reason}"
        console.print(outcome, soft_wrap=True)
        if state.status in ("rolled_back", "aborted"):
            raise typer.Exit(3)


@rollout_app.command("start")
@fails_cleanly
def rollout_start(
    plan: str = typer.Option(..., "--plan", "-p", help="Rollout config YAML (steps, step_s, thresholds)"),
    usecase: str | None = UseCaseOpt,
    token: str | None = TokenOpt,
    wait: bool = typer.Option(False, "--wait", help="Run the controller here until the rollout ends"),
    tick_s: float | None = typer.Option(None, help="Controller period with --wait (default rollout.tick_s)"),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Start a rollout of the challenger; with --wait, step it to promotion or rollback (exit 3 on rollback)."""
    from pathlib import Path

    controller = _controller(config, home, usecase)
    state = controller.start(Path(plan), token)
    steps, step_s = state.config["steps"], state.config["step_s"]
    console.print(
        f"rollout {state.id} started: {state.strategy} of {state.model} v{state.challenger} beside champion "
        f"v{state.champion}, steps {' -> '.join(f'{w:g}' for w in steps)} %, {step_s:g} s each; now at {state.weight}%"
    )
    if wait:
        _follow(controller, tick_s)


@rollout_app.command("resume")
@fails_cleanly
def rollout_resume(
    usecase: str | None = UseCaseOpt,
    tick_s: float | None = typer.Option(None, help="Controller period (default rollout.tick_s)"),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Run the controller of the rollout under way (after a restart) until it ends."""
    controller = _controller(config, home, usecase)
    if controller.store.active(controller.usecase.name) is None:
        console.print(f"no rollout of '{controller.usecase.name}' is under way")
        return
    _follow(controller, tick_s)


@rollout_app.command("status")
@fails_cleanly
def rollout_status(
    usecase: str | None = UseCaseOpt,
    as_json: bool = typer.Option(False, "--json"),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """The newest rollout of the use case: state, weight, and the analysis of each step."""
    from dataclasses import asdict

    controller = _controller(config, home, usecase)
    state = controller.status()
    if state is None:
        console.print(f"no rollout of '{controller.usecase.name}' yet")
        return
    if as_json:
        console.print_json(json.dumps(asdict(state)))
        return
    console.print(
        f"rollout {state.id}: {state.status}, {state.strategy} of {state.model} v{state.challenger} "
        f"(champion v{state.champion}), step {state.step} at {state.weight}%, started by {state.started_by}"
    )
    table = Table(title="steps")
    for col in ("at", "step", "weight", "event"):
        table.add_column(col)
    for event in state.history:
        what = event.get("status") or ("hold" if event.get("hold") else f"-> {event.get('to')}%")
        text = event.get("analysis") if isinstance(event.get("analysis"), str) else event.get("reason", "")
        table.add_row(event["at"], str(event.get("step")), str(event.get("weight")), f"{what}: {text}")
    console.print(table)


@rollout_app.command("promote")
@fails_cleanly
def rollout_promote(
    usecase: str | None = UseCaseOpt,
    token: str | None = TokenOpt,
    reason: str = typer.Option("", "--reason"),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Skip the remaining steps: the challenger becomes champion now."""
    state = _controller(config, home, usecase).promote(token, reason)
    console.print(f"rollout {state.id}: promoted v{state.challenger} (was v{state.champion})")


@rollout_app.command("abort")
@fails_cleanly
def rollout_abort(
    usecase: str | None = UseCaseOpt,
    token: str | None = TokenOpt,
    reason: str = typer.Option(..., "--reason"),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Stop the rollout; all traffic goes back to the champion."""
    state = _controller(config, home, usecase).abort(token, reason)
    console.print(f"rollout {state.id}: aborted; champion v{state.champion} answers everything")
