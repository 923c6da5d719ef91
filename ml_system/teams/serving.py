"""Serve replicas of a team: what an application will hold, reserved on the team's quota before it deploys.

A Serve application holds its replicas for as long as it lives, so its lease is taken for the
most replicas it may run (``max_replicas`` when it autoscales) times each replica's actor
options (or its placement-group bundles), on the team's own quota only: a replica is never
preempted to give borrowed quota back, since that would fail the requests it is serving.
The lease lives while the application does; the admission queue releases it once Serve no
longer lists the application.

Reading an application's deployments before it is deployed takes Serve's own builder
(``ray.serve._private.build_app``); Ray 2.60 has no public API for it. The application is
named ``<team>-<name>``, so the team shows on the dashboard's Serve page and in every replica's
actor name (``SERVE_REPLICA::<team>-<name>#...``).
"""

from __future__ import annotations

from typing import Any

from ml_system.teams.resources import Resources


def app_name(team: str, name: str) -> str:
    return name if name.startswith(f"{team}-") else f"{team}-{name}"


def replica_resources(deployment: Any) -> Resources:
    """One replica's reservation: its placement-group bundles if it has any, else its actor options."""
    bundles = getattr(deployment, "_replica_config", None) and deployment._replica_config.placement_group_bundles
    if bundles:
        total = Resources()
        for bundle in bundles:
            total = total + Resources.from_ray(bundle)
        return total
    options = deployment.ray_actor_options or {}
    cpus = options.get("num_cpus")  # Serve's default is one CPU per replica
    gpus = float(options.get("num_gpus") or 0)
    return Resources(1.0 if cpus is None else float(cpus), gpus, float(options.get("memory") or 0))


def max_replicas(deployment: Any) -> int:
    config = deployment._deployment_config
    autoscaling = config.autoscaling_config
    if autoscaling is not None:
        return int(autoscaling.max_replicas)
    return int(config.num_replicas or 1)


def application_demand(app: Any, name: str) -> tuple[Resources, dict[str, str]]:
    """What ``app`` holds at its largest, and a line per deployment saying why."""
    from ray.serve._private.build_app import build_app

    built = build_app(app, name=name)
    total, detail = Resources(), {}
    for deployment in built.deployments:
        each, count = replica_resources(deployment), max_replicas(deployment)
        total = total + each.scaled(count)
        detail[deployment.name] = f"{count} x {each.describe()}"
    return total, detail
