"""Deploy a Serve application for a team: its replicas are reserved on the team's quota first.

The reservation covers the application at its largest (``ml_system.teams.serving``); when the
team's quota has no room within ``wait_timeout_s`` nothing is deployed and the request is
withdrawn. The lease is bound to the application, which is named ``<team>-<name>``; deleting
the application gives the quota back.
"""

from __future__ import annotations

from ray import serve
from ray.serve import Application

from ml_system.config import ServingConfig
from ml_system.errors import AdmissionError
from ml_system.serving.deploy import run_app
from ml_system.teams.admission import AdmissionClient
from ml_system.teams.serving import app_name, application_demand


def deploy_for_team(
    client: AdmissionClient,
    team: str,
    app: Application,
    name: str,
    config: ServingConfig,
    route_prefix: str = "/",
    health_path: str = "/healthz",
    wait_timeout_s: float = 60.0,
) -> tuple[str, str]:
    """Reserve, deploy, bind; returns (base URL, lease id). Raises ``AdmissionError`` when the quota is full."""
    full = app_name(team, name)
    demand, detail = application_demand(app, full)
    lease = client.submit(team, "serve", demand, label=full)
    deployed = False
    try:
        try:
            client.wait_granted(lease, wait_timeout_s)
        except AdmissionError:
            raise AdmissionError(
                f"team '{team}' has no room for application '{full}' ({demand.describe()}: "
                f"{', '.join(f'{k} {v}' for k, v in detail.items())}) within {wait_timeout_s:g} s; nothing was deployed"
            ) from None
        deployed = True
        url = run_app(app, full, config, route_prefix=route_prefix, health_path=health_path)
        client.bind(lease, {"serve": full})
        return url, lease
    except BaseException:
        if deployed:
            serve.delete(full)
        client.release(lease)
        raise
