"""``mlsys groups``: teams' quotas on the cluster, their tokens, and jobs submitted through admission."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from ml_system.cli.common import ConfigOpt, HomeOpt, cli_config, console, fails_cleanly
from ml_system.config import PlatformConfig
from ml_system.teams.groups import ResourceGroups, load_groups
from ml_system.teams.identity import TOKEN_ENV, TokenStore, authorize
from ml_system.teams.resources import GIB, Resources

if TYPE_CHECKING:  # imported where used: `mlsys --help` should not wait for Ray
    from ml_system.teams.admission import AdmissionClient

app = typer.Typer(help="Resource groups: teams, quotas, borrowing, tokens.", no_args_is_help=True)
token_app = typer.Typer(help="Team tokens (stored hashed).", no_args_is_help=True)
app.add_typer(token_app, name="token")

GroupsOpt = typer.Option(None, "--groups", "-g", help="resource_groups.yaml (default: teams.resource_groups)")
TeamOpt = typer.Option(..., "--team", "-t", help="The team acting")
TokenOpt = typer.Option(None, "--token", envvar=TOKEN_ENV, show_default=False, help=f"Team token (or ${TOKEN_ENV})")


def read_groups(cfg: PlatformConfig, path: str | None) -> ResourceGroups:
    return load_groups(path or cfg.teams.resource_groups)


def acting_for(
    team: str, token: str | None, groups: str | None, config: str | None, home: str | None
) -> tuple[PlatformConfig, ResourceGroups]:
    """Config and groups of a command that acts for ``team``, once its token is checked."""
    cfg = cli_config(config, home)
    parsed = read_groups(cfg, groups)
    authorize(token, team, parsed, TokenStore(cfg.teams.state_dir))
    return cfg, parsed


def admission_client(cfg: PlatformConfig, groups: ResourceGroups) -> AdmissionClient:
    """Connect to the cluster and its admission queue (started with ``groups`` if none runs)."""
    from ml_system.cluster import connect, quiet
    from ml_system.teams.admission import AdmissionClient

    quiet()
    connect(cfg.ray)
    return AdmissionClient.connect(cfg.teams.state_dir, groups)


def _amount(r: dict[str, float], quota: dict[str, float] | None = None) -> str:
    out = f"{r['cpu']:g}"
    if r["gpu"] or (quota and quota["gpu"]):
        out += f" / {r['gpu']:g} GPU"
    if r["memory"] or (quota and quota["memory"]):
        out += f" / {r['memory'] / GIB:.3g} GiB"
    return out


@app.command("validate")
@fails_cleanly
def groups_validate(groups: str | None = GroupsOpt, config: str | None = ConfigOpt, home: str | None = HomeOpt) -> None:
    """Check resource_groups.yaml without touching the cluster."""
    cfg = cli_config(config, home)
    parsed = read_groups(cfg, groups)
    total = parsed.total_quota().describe()
    console.print(f"{len(parsed.teams)} teams, quotas add up to {total}; give-back bound {parsed.give_back_s:g} s")


@app.command("status")
@fails_cleanly
def groups_status(groups: str | None = GroupsOpt, config: str | None = ConfigOpt, home: str | None = HomeOpt) -> None:
    """Use against quota per team: own use, borrowed from others, lent to others, waiting work."""
    cfg = cli_config(config, home)
    wanted = read_groups(cfg, groups)
    client = admission_client(cfg, wanted)
    status = client.status()
    table = Table(title=f"resource groups (give-back bound {status['groups']['give_back_s']:g} s)")
    for col in ("team", "priority", "quota CPU", "used", "borrowed", "lent", "waiting", "borrow/lend"):
        table.add_column(col)
    for name, use in status["usage"].items():
        spec = status["groups"]["teams"][name]
        table.add_row(
            name,
            str(spec["priority"]),
            _amount(use["quota"]),
            _amount(use["own"], use["quota"]),
            _amount(use["borrowed"], use["quota"]),
            _amount(use["lent"], use["quota"]),
            f"{use['waiting']} ({_amount(use['waiting_resources'])} CPU)" if use["waiting"] else "0",
            f"{'yes' if spec['can_borrow'] else 'no'}/{'yes' if spec['can_lend'] else 'no'}",
        )
    console.print(table)
    backs = status["give_backs"]
    if backs:
        worst = max(g["seconds"] for g in backs)
        console.print(f"{len(backs)} borrowed leases given back, slowest in {worst:.2f} s")
    if wanted.document() != status["groups"]:
        console.print("note: the running queue uses other resource groups than the file; `mlsys groups apply`")


@app.command("apply")
@fails_cleanly
def groups_apply(groups: str | None = GroupsOpt, config: str | None = ConfigOpt, home: str | None = HomeOpt) -> None:
    """Give the running admission queue the groups in the file (checked against the cluster first)."""
    cfg = cli_config(config, home)
    parsed = read_groups(cfg, groups)
    teams = admission_client(cfg, parsed).apply(parsed)
    console.print(f"admission queue now enforces {len(teams)} teams: {', '.join(teams)}")


@app.command("export-kueue")
@fails_cleanly
def groups_export_kueue(
    output: str | None = typer.Option(None, "--output", "-o", help="Write the YAML here (default: print it)"),
    namespace: str = typer.Option("ml-system", help="Namespace of the teams' LocalQueues (where their RayJobs run)"),
    groups: str | None = GroupsOpt,
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """The resource groups as Kueue objects: ResourceFlavor, Cohort, ClusterQueue and LocalQueue per team."""
    from ml_system.teams.kueue import export_kueue, kueue_objects

    cfg = cli_config(config, home)
    parsed = read_groups(cfg, groups)
    text = export_kueue(parsed, namespace)
    if output is None:
        typer.echo(text, nl=False)  # plain, for `> file` or `| kubectl apply -f -`
        return
    Path(output).write_text(text)
    count = len(kueue_objects(parsed, namespace))
    console.print(f"wrote {count} Kueue objects for {len(parsed.teams)} teams to {output}")


@app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@fails_cleanly
def groups_submit(
    ctx: typer.Context,
    team: str = TeamOpt,
    token: str | None = TokenOpt,
    cpus: float = typer.Option(1.0, min=0, help="CPUs for the job's driver"),
    gpus: float = typer.Option(0.0, min=0),
    memory_gb: float = typer.Option(0.0, min=0),
    priority: int = typer.Option(0, min=0),
    address: str = typer.Option("http://127.0.0.1:8265", envvar="RAY_DASHBOARD_ADDRESS", help="Ray dashboard URL"),
    working_dir: str = typer.Option(".", help="Uploaded as the job's working dir"),
    groups: str | None = GroupsOpt,
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Submit a Ray job for a team once the team's quota has room: mlsys groups submit -t T -- python jobs/train.py"""
    from ml_system.teams.jobs import submit_job

    entrypoint = list(ctx.args)
    if not entrypoint:
        raise typer.BadParameter("give the job's entrypoint after --, e.g. -- python jobs/train.py")
    cfg, parsed = acting_for(team, token, groups, config, home)
    client = admission_client(cfg, parsed)
    sid = submit_job(
        client,
        team,
        entrypoint,
        Resources(cpus, gpus, memory_gb * GIB),
        address=address,
        working_dir=working_dir,
        priority=priority,
        on_queued=lambda lease: console.print(f"lease {lease} queued for team {team}"),
    )
    console.print(f"submitted job {sid} for team {team}; follow it with: ray job logs -f {sid}")


@token_app.command("issue")
@fails_cleanly
def token_issue(
    team: str,
    label: str = typer.Option("", help="Who or what the token is for"),
    groups: str | None = GroupsOpt,
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """A new token for TEAM, printed once (only its hash is kept)."""
    cfg = cli_config(config, home)
    record, token = TokenStore(cfg.teams.state_dir).issue(team, read_groups(cfg, groups), label)
    console.print(f"token {record.id} for team {team} (keep it; it is not stored):")
    console.print(token, markup=False, highlight=False, soft_wrap=True)


@token_app.command("list")
@fails_cleanly
def token_list(config: str | None = ConfigOpt, home: str | None = HomeOpt) -> None:
    """Issued tokens: id, team, label, when (never the tokens)."""
    cfg = cli_config(config, home)
    table = Table(title=f"team tokens in {Path(cfg.teams.state_dir) / 'tokens.json'}")
    for col in ("id", "team", "label", "created", "sha256"):
        table.add_column(col)
    for r in TokenStore(cfg.teams.state_dir).records():
        table.add_row(r.id, r.team, r.label or "-", r.created_at, r.sha256[:12] + "...")
    console.print(table)


@token_app.command("revoke")
@fails_cleanly
def token_revoke(token_id: str, config: str | None = ConfigOpt, home: str | None = HomeOpt) -> None:
    """Revoke a token by id; requests already admitted keep running."""
    cfg = cli_config(config, home)
    record = TokenStore(cfg.teams.state_dir).revoke(token_id)
    console.print(f"revoked token {record.id} of team {record.team}")
