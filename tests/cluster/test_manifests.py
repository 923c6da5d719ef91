"""The cluster configs in ``cluster/`` are what the platform needs and what the upstream schemas accept.

KubeRay and Kueue manifests are checked against the CRDs copied into ``cluster/crds/`` (strictly:
a field the CRD does not define fails, where the API server would silently drop it); the Kueue
objects are the generator's output of ``resource_groups.yaml``; the RayService carries the Serve
applications of ``serve_configs/flight_delay.yaml``; the ``ray up`` launcher passes Ray's own
schema and starts nodes with the documented settings.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from ml_system.cli.main import app
from ml_system.config import load_config
from ml_system.errors import TeamError
from ml_system.teams.groups import load_groups, parse_groups
from ml_system.teams.kueue import PRIORITY_LABEL, QUEUE_LABEL, export_kueue, kueue_objects, priority_class_name
from tests.cluster.kube_schema import CRDS, errors

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
KUEUE = CLUSTER / "kueue" / "kueue.yaml"
GROUPS = CLUSTER / "resource_groups.yaml"


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def pinned_ray() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d.split("==")[1] for d in deps if d.startswith("ray["))


def walk(node: Any) -> Any:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs(KUEUE) if d["kind"] == kind}


# ---- schemas ------------------------------------------------------------------------------------


def test_the_crd_copies_name_their_upstream_source() -> None:
    readme = (CRDS / "README.md").read_text()
    for file in CRDS.glob("*.yaml"):
        assert file.name in readme or file.name.split("_")[0] in readme, file.name
    assert "ray-project/kuberay" in readme and "kubernetes-sigs/kueue" in readme and "commit" in readme


@pytest.mark.parametrize("path", [*KUBERAY, KUEUE], ids=lambda p: p.name)
def test_every_manifest_is_valid_against_its_crd(path: Path) -> None:
    found = docs(path)
    assert found
    for manifest in found:
        assert errors(manifest) == [], f"{path.name}: {manifest['kind']} {manifest['metadata']['name']}"


def test_the_schema_check_refuses_a_misspelled_field_a_bad_quantity_and_a_bad_name() -> None:
    job = docs(CLUSTER / "kuberay" / "rayjob-retrain.yaml")[0]
    job["spec"]["entrypiont"] = job["spec"].pop("entrypoint")
    assert errors(job) == ["spec: Additional properties are not allowed ('entrypiont' was unexpected)"]
    queue = by_kind("ClusterQueue")["delays"]
    queue["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"] = 2.5
    assert any("nominalQuota" in e for e in errors(queue))
    queue = by_kind("ClusterQueue")["delays"]
    queue["metadata"]["name"] = "Delays"
    assert any(e.startswith("metadata.name") for e in errors(queue))


# ---- Kueue ------------------------------------------------------------------------------------


def test_the_committed_kueue_objects_are_the_generators_output() -> None:
    assert KUEUE.read_text() == export_kueue(load_groups(GROUPS)), "run: mlsys groups export-kueue -o " + str(KUEUE)


def test_export_kueue_cli_prints_and_writes_the_same_objects(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(app, ["groups", "export-kueue", "--groups", str(GROUPS), "--home", str(tmp_path)])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout == KUEUE.read_text()
    out = tmp_path / "kueue.yaml"
    wrote = runner.invoke(app, ["groups", "export-kueue", "-g", str(GROUPS), "-o", str(out), "--home", str(tmp_path)])
    assert wrote.exit_code == 0 and "8 Kueue objects for 2 teams" in wrote.stdout
    assert out.read_text() == KUEUE.read_text()


def test_export_kueue_cli_refuses_a_bad_groups_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "groups.yaml"
    bad.write_text("teams:\n  a:\n    quota: {cpus: 1}\n")
    result = CliRunner().invoke(app, ["groups", "export-kueue", "-g", str(bad), "--home", str(tmp_path)])
    assert result.exit_code == 1
    assert "teams.a.quota.cpus" in result.output and len(result.output.strip().splitlines()) == 1


def test_cluster_queues_carry_each_teams_quota_borrowing_and_cohort() -> None:
    groups = load_groups(GROUPS)
    queues, local = by_kind("ClusterQueue"), by_kind("LocalQueue")
    (cohort,) = by_kind("Cohort")
    (flavor,) = by_kind("ResourceFlavor")
    assert set(queues) == set(local) == set(groups.teams)
    for name, team in groups.teams.items():
        spec = queues[name]["spec"]
        assert spec["cohortName"] == cohort
        assert spec["preemption"]["reclaimWithinCohort"] == "Any"  # owners take borrowed quota back
        (group,) = spec["resourceGroups"]
        (used,) = group["flavors"]
        assert used["name"] == flavor
        cpu = next(r for r in used["resources"] if r["name"] == "cpu")
        assert float(cpu["nominalQuota"]) == team.quota.cpu
        others = sum(t.quota.cpu for n, t in groups.teams.items() if n != name and t.can_lend)
        assert float(cpu["borrowingLimit"]) == (others if team.can_borrow else 0)
        assert local[name]["spec"]["clusterQueue"] == name
    classes = by_kind("WorkloadPriorityClass")
    assert {c["value"] for c in classes.values()} == {t.priority for t in groups.teams.values()}


def test_kueue_quantities_lending_and_refusals_follow_the_groups() -> None:
    groups = parse_groups(
        {
            "teams": {
                "a": {"quota": {"cpu": 1.5, "memory_gb": 1.5, "gpu": 1}, "can_lend": False, "priority": 3},
                "b": {"quota": {"cpu": 0.5, "memory_gb": 4}, "can_borrow": False},
            }
        }
    )
    objects = kueue_objects(groups, namespace="team-ns")
    for manifest in objects:
        assert errors(manifest) == [], manifest
    queues = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterQueue"}
    a = {r["name"]: r for r in queues["a"]["spec"]["resourceGroups"][0]["flavors"][0]["resources"]}
    b = {r["name"]: r for r in queues["b"]["spec"]["resourceGroups"][0]["flavors"][0]["resources"]}
    assert queues["a"]["spec"]["resourceGroups"][0]["coveredResources"] == ["cpu", "memory", "nvidia.com/gpu"]
    assert (a["cpu"]["nominalQuota"], a["memory"]["nominalQuota"], a["nvidia.com/gpu"]["nominalQuota"]) == (
        "1500m", "1536Mi", 1,
    )  # fmt: skip
    assert a["cpu"]["lendingLimit"] == 0 and a["cpu"]["borrowingLimit"] == "500m"  # b lends its 0.5 CPU
    assert b["cpu"]["borrowingLimit"] == 0 and "lendingLimit" not in b["cpu"]  # b may not borrow; a lends nothing
    assert b["nvidia.com/gpu"]["nominalQuota"] == 0 and b["memory"]["nominalQuota"] == "4Gi"
    assert {o["metadata"]["namespace"] for o in objects if o["kind"] == "LocalQueue"} == {"team-ns"}
    with pytest.raises(TeamError, match="namespace 'Team_NS'"):
        kueue_objects(groups, namespace="Team_NS")
    half_gpu = parse_groups({"teams": {"a": {"quota": {"gpu": 0.5}}}})
    with pytest.raises(TeamError, match="counts GPUs whole"):
        kueue_objects(half_gpu)


# ---- KubeRay ----------------------------------------------------------------------------------


def test_the_rayjob_runs_retrain_in_its_teams_queue_at_its_teams_priority() -> None:
    (job,) = docs(CLUSTER / "kuberay" / "rayjob-retrain.yaml")
    entry = shlex.split(job["spec"]["entrypoint"])
    script = next(part for part in entry if part.endswith(".py"))
    assert script.endswith("/jobs/retrain.py") and (ROOT / "jobs" / "retrain.py").exists()
    team = job["metadata"]["labels"][QUEUE_LABEL]
    assert team in by_kind("LocalQueue")
    assert job["metadata"]["labels"][PRIORITY_LABEL] == priority_class_name(load_groups(GROUPS).team(team).priority)
    assert job["spec"]["shutdownAfterJobFinishes"] is True  # Kueue's quota comes back with the job's cluster


def test_the_rayservice_carries_the_serve_configs_applications() -> None:
    from ml_system.serving.config_check import validate_document

    (service,) = docs(CLUSTER / "kuberay" / "rayservice.yaml")
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert (
        embedded["applications"]
        == yaml.safe_load((ROOT / "serve_configs" / "flight_delay.yaml").read_text())["applications"]
    ), "copy serve_configs/flight_delay.yaml's applications into cluster/kuberay/rayservice.yaml"
    validate_document(embedded)  # Serve's schema and our builder's args and user_config


def test_every_image_and_cluster_runs_the_pinned_ray() -> None:
    version = pinned_ray()
    for path in KUBERAY:
        for node in walk(docs(path)):
            if isinstance(node, dict) and "rayVersion" in node:
                assert node["rayVersion"] == version, path.name
    assert f"FROM rayproject/ray:{version}-py311" in (CLUSTER / "Dockerfile").read_text()
    launcher = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    assert launcher["docker"]["image"].startswith(f"rayproject/ray:{version}-")


def test_every_secret_the_manifests_use_is_documented_with_its_keys() -> None:
    guide = (ROOT / "docs" / "cluster.md").read_text().replace("\\\n", " ")
    used: set[tuple[str, str]] = set()
    for path in KUBERAY:
        for node in walk(docs(path)):
            if isinstance(node, dict) and "secretKeyRef" in node:
                used.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
            if isinstance(node, dict) and node.get("mode") == "token" and "secretName" in node:
                used.add((node["secretName"], "auth_token"))  # the key KubeRay reads the Ray token from
    assert ("ray-auth-token", "auth_token") in used
    for name, key in sorted(used):
        assert re.search(rf"kubectl[^\n]* create secret generic {name}\b[^\n]*--from-\w+={key}\b", guide), (name, key)


def test_the_pods_get_the_cluster_mode_config_and_the_serving_settings() -> None:
    for path in KUBERAY:
        containers = [c for n in walk(docs(path)) if isinstance(n, dict) for c in n.get("containers", [])]
        assert containers, path.name
        for container in containers:
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["MLSYS_CONFIG"] == "/etc/mlsys/mlsys.yaml"
            assert env["RAY_SERVE_ENABLE_HA_PROXY"] == env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
            assert any(m["mountPath"] == "/etc/mlsys" for m in container["volumeMounts"])


def test_the_cluster_mode_config_keeps_nothing_on_a_nodes_disk() -> None:
    config = load_config(CLUSTER / "mlsys.cluster.yaml", environ={})
    parts = ("offline_store", "registry", "online_store", "mlflow", "ray_storage", "pipelines")
    assert config.node_local_locations(parts) == []
    assert config.mlflow.tracking_uri.startswith("postgresql://") and config.online_store.type == "redis"


# ---- ray up -----------------------------------------------------------------------------------


def ray_start(line: str) -> tuple[dict[str, str], dict[str, str]]:
    """The environment assignments and ``--flag value`` options of the ``ray start`` in a shell line."""
    for part in re.split(r"&&|;|\n", line):
        words = shlex.split(part)
        if "ray" in words and words[words.index("ray") + 1 : words.index("ray") + 2] == ["start"]:
            at = words.index("ray")
            env = dict(w.split("=", 1) for w in words[:at] if "=" in w)
            flags: dict[str, str] = {}
            rest = words[at + 2 :]
            for i, word in enumerate(rest):
                if word.startswith("--"):
                    name, eq, value = word[2:].partition("=")
                    nxt = rest[i + 1] if i + 1 < len(rest) else ""
                    flags[name] = value if eq else ("" if nxt.startswith("--") or not nxt else nxt)
            return env, flags
    raise AssertionError(f"no `ray start` in: {line}")


def documented_start() -> tuple[dict[str, str], dict[str, str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Running on a cluster") :]
    line = next(ln for ln in section.splitlines() if "ray start --head" in ln)
    return ray_start(line.split("#", 1)[0])


def test_the_launcher_passes_rays_own_schema_and_has_what_ray_up_needs() -> None:
    from ray.autoscaler._private.util import validate_config

    launcher = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    validate_config(launcher)
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "head_start_ray_commands"):
        assert launcher[key], key
    assert launcher["head_node_type"] in launcher["available_node_types"]
    assert launcher["file_mounts"]["/home/ray/ml_system"] == "."
    assert any("-c /home/ray/ml_system/constraints.txt" in c for c in launcher["setup_commands"])


def test_the_launchers_nodes_start_with_the_documented_settings() -> None:
    launcher = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    doc_env, doc_flags = documented_start()
    head_env, head = ray_start(launcher["head_start_ray_commands"][-1])
    worker_env, worker = ray_start(launcher["worker_start_ray_commands"][-1])
    for env in (head_env, worker_env):
        assert doc_env.items() <= env.items()
        assert env["RAY_AUTH_MODE"] == "token"
        assert load_config(ROOT / env["MLSYS_CONFIG"].removeprefix("/home/ray/ml_system/"), environ={})
    for flag, value in doc_flags.items():
        if flag in ("num-cpus",):  # each machine's own
            continue
        assert head.get(flag) == value, flag
    assert worker["address"] == f"$RAY_HEAD_IP:{doc_flags['port']}"
    assert worker["object-store-memory"] == doc_flags["object-store-memory"]
    assert head["metrics-export-port"] == worker["metrics-export-port"]
    script = (CLUSTER / "start_local_cluster.sh").read_text().replace("\\\n", " ")
    local_env, local = ray_start(next(ln for ln in script.splitlines() if "ray start --head" in ln))
    exported = [w for ln in script.splitlines() if ln.startswith("export ") for w in shlex.split(ln)[1:]]
    assert doc_env.items() <= {**dict(w.split("=", 1) for w in exported), **local_env}.items()
    default_port = re.search(r"HEAD_PORT=\$\{HEAD_PORT:-(\d+)\}", script)
    assert local["port"] == "$HEAD_PORT" and default_port and default_port.group(1) == doc_flags["port"]


# ---- metrics ----------------------------------------------------------------------------------


def emitted_metrics() -> set[str]:
    """Names recorded through ``ray.util.metrics`` anywhere in the platform."""
    pattern = re.compile(r"\b(?:Counter|Histogram|Gauge)\(\s*[\"']([a-z0-9_]+)[\"']")
    return {m for f in (ROOT / "ml_system").rglob("*.py") for m in pattern.findall(f.read_text())}


def test_prometheus_scrapes_rays_node_endpoints_and_the_kuberay_pods() -> None:
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    config = yaml.safe_load((CLUSTER / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (path,) = jobs["ray"]["file_sd_configs"][0]["files"]
    assert path == f"/tmp/ray/session_latest/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"
    keep_port = next(r for r in jobs["ray-kuberay"]["relabel_configs"] if "port_name" in r["source_labels"][0])
    launcher = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    _, head = ray_start(launcher["head_start_ray_commands"][-1])
    for path_ in KUBERAY:
        ports = [p for n in walk(docs(path_)) if isinstance(n, dict) for p in n.get("ports", [])]
        metrics = [p["containerPort"] for p in ports if p.get("name") == keep_port["regex"]]
        assert metrics and set(metrics) == {int(head["metrics-export-port"])}, path_.name


def test_grafana_dashboards_query_metrics_the_platform_emits() -> None:
    import json

    emitted = emitted_metrics()
    assert "mlsys_serve_requests" in emitted
    dashboards = sorted((CLUSTER / "grafana").glob("*.json"))
    assert dashboards
    for file in dashboards:
        board = json.loads(file.read_text())
        exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", []) if t.get("expr")]
        assert exprs, file.name
        for expr in exprs:
            for name in re.findall(r"\bray_(mlsys_[a-z0-9_]+)", expr):
                base = re.sub(r"_(total|bucket|sum|count)$", "", name)
                assert base in emitted, f"{file.name}: {expr} queries ray_{name}, which nothing records"


def test_rays_discovery_file_is_in_the_session_folder_prometheus_reads(ray_cluster: str) -> None:
    import json
    import time

    import ray
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    file = session / PROMETHEUS_SERVICE_DISCOVERY_FILE
    deadline = time.monotonic() + 30
    while not file.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    targets = json.loads(file.read_text())
    assert targets and targets[0]["targets"], targets


@pytest.mark.parametrize("guide", ["README.md", "docs/cluster.md"])
def test_the_guides_show_the_cluster_mode_config_as_committed(guide: str) -> None:
    text = (ROOT / guide).read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "storage_uri" in b]
    assert blocks == [yaml.safe_load((CLUSTER / "mlsys.cluster.yaml").read_text())]
