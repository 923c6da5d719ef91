"""The resource groups as Kueue objects, for teams that share a Kubernetes cluster through KubeRay.

On Kubernetes, Kueue admits RayJobs and RayClusters on quotas the way our admission queue admits
Ray work on one cluster, with the same vocabulary: a team's quota is a ``ClusterQueue``'s
*nominal* quota, teams that may lend and borrow share a ``Cohort``, borrowed quota is reclaimed by
preemption. ``resource_groups.yaml`` stays the one place quotas are written; the Kueue objects are
generated from it (``mlsys groups export-kueue``) and a test keeps the committed copy equal to the
generator's output, so the two can never drift.

Mapping, field by field:

- ``quota`` -> ``nominalQuota`` of one ``ResourceFlavor`` (the cluster's nodes, undifferentiated)
  for ``cpu``, ``memory`` (``memory_gb`` GiB) and ``nvidia.com/gpu``; a resource is covered when
  any team has a quota of it, and a team without one gets 0 of it, as in the admission queue
  (work that asks for a resource the team has no quota of is not admitted).
- ``can_borrow`` -> ``borrowingLimit``: what the other lending teams could lend at most (their
  nominal quotas), or 0.
- ``can_lend`` -> ``lendingLimit``: 0 when the team lends nothing; omitted (all of it) otherwise.
- Give-back -> ``preemption.reclaimWithinCohort: Any``: an owner takes its nominal quota back from
  any borrower, as ``give_back_s`` promises here.
- ``priority`` -> a ``WorkloadPriorityClass`` per distinct priority (``mlsys-priority-<value>``);
  a team's RayJobs name theirs in the ``kueue.x-k8s.io/priority-class`` label.
- A ``LocalQueue`` per team, named after it, in the namespace its jobs run in: a RayJob joins
  its team's queue with the ``kueue.x-k8s.io/queue-name`` label.

What does not carry over: Kueue admits whole RayJobs and RayClusters (their pods' requests), not
the Tune trials and tasks inside one; inside an admitted Ray cluster our admission queue still
divides the work.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from ml_system.errors import TeamError
from ml_system.teams.groups import ResourceGroups

API_VERSION = "kueue.x-k8s.io/v1beta2"
"""The version Kueue stores (``v1beta1`` is served but deprecated)."""
COHORT = "mlsys"
FLAVOR = "mlsys-nodes"
NAMESPACE = "ml-system"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
GPU = "nvidia.com/gpu"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HEADER = (
    "# Generated from cluster/resource_groups.yaml by `mlsys groups export-kueue`; do not edit by hand.\n"
    "# kubectl apply -f cluster/kueue/kueue.yaml   (Kueue {api}; docs/cluster.md)\n"
)


def priority_class_name(priority: int) -> str:
    return f"mlsys-priority-{priority}"


def _cpu(value: float) -> int | str:
    """Kubernetes' quantity for CPUs: whole CPUs as an integer, else millicores."""
    if value == int(value):
        return int(value)
    millis = value * 1000
    if millis != int(millis):
        raise TeamError(f"a CPU quota of {value:g} is finer than Kubernetes' millicores")
    return f"{int(millis)}m"


def _memory(gib: float) -> int | str:
    if gib == 0:
        return 0
    mib = gib * 1024
    if mib != int(mib):
        raise TeamError(f"a memory quota of {gib:g} GiB is not a whole number of MiB")
    return f"{int(gib)}Gi" if gib == int(gib) else f"{int(mib)}Mi"


def _gpu(value: float, team: str) -> int:
    if value != int(value):
        raise TeamError(f"team '{team}': Kubernetes counts GPUs whole; a quota of {value:g} GPU cannot be exported")
    return int(value)


def _covered(groups: ResourceGroups) -> list[tuple[str, str]]:
    """(Kubernetes resource, quota field) for each resource some team has a quota of."""
    fields = [("cpu", "cpu"), ("memory", "memory_gb"), (GPU, "gpu")]
    return [(name, field) for name, field in fields if any(getattr(t.quota, field) > 0 for t in groups.teams.values())]


def _quantity(resource: str, amount: float, team: str) -> int | str:
    if resource == "cpu":
        return _cpu(amount)
    if resource == "memory":
        return _memory(amount)
    return _gpu(amount, team)


def _cluster_queue(name: str, groups: ResourceGroups, covered: list[tuple[str, str]]) -> dict[str, Any]:
    spec = groups.teams[name]
    lenders = [other for key, other in groups.teams.items() if key != name and other.can_lend]
    resources = []
    for resource, field in covered:
        nominal = _quantity(resource, getattr(spec.quota, field), name)
        entry: dict[str, Any] = {"name": resource, "nominalQuota": nominal}
        borrowable = sum(getattr(other.quota, field) for other in lenders) if spec.can_borrow else 0.0
        entry["borrowingLimit"] = _quantity(resource, borrowable, name)
        if not spec.can_lend:
            entry["lendingLimit"] = 0
        resources.append(entry)
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterQueue",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "ml-system"}},
        "spec": {
            "cohortName": COHORT,
            "namespaceSelector": {},
            "queueingStrategy": "BestEffortFIFO",
            "preemption": {"reclaimWithinCohort": "Any", "withinClusterQueue": "LowerPriority"},
            "resourceGroups": [
                {"coveredResources": [r for r, _ in covered], "flavors": [{"name": FLAVOR, "resources": resources}]}
            ],
        },
    }


def kueue_objects(groups: ResourceGroups, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """ResourceFlavor, Cohort, WorkloadPriorityClasses, then a ClusterQueue and LocalQueue per team."""
    if not DNS_LABEL.match(namespace):
        raise TeamError(f"namespace '{namespace}' is not a Kubernetes namespace name (lowercase, digits, '-')")
    covered = _covered(groups)
    if not covered:  # pragma: no cover - a QuotaSpec always has one resource above 0
        raise TeamError("no team has a quota to export")
    objects: list[dict[str, Any]] = [
        {"apiVersion": API_VERSION, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}, "spec": {}},
        {"apiVersion": API_VERSION, "kind": "Cohort", "metadata": {"name": COHORT}, "spec": {}},
    ]
    for priority in sorted({team.priority for team in groups.teams.values()}):
        if priority > 2**31 - 1:  # pragma: no cover - TeamSpec bounds it far lower
            raise TeamError(f"priority {priority} does not fit Kueue's int32")
        objects.append(
            {
                "apiVersion": API_VERSION,
                "kind": "WorkloadPriorityClass",
                "metadata": {"name": priority_class_name(priority)},
                "value": priority,
                "description": "team priority from resource_groups.yaml: higher borrows first, gives back last",
            }
        )
    for name in sorted(groups.teams):
        objects.append(_cluster_queue(name, groups, covered))
    for name in sorted(groups.teams):
        objects.append(
            {
                "apiVersion": API_VERSION,
                "kind": "LocalQueue",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"clusterQueue": name},
            }
        )
    return objects


def export_kueue(groups: ResourceGroups, namespace: str = NAMESPACE) -> str:
    """The objects as one multi-document YAML file, deterministic so a committed copy can be compared."""
    objects = kueue_objects(groups, namespace)
    docs = [yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=120) for obj in objects]
    return _HEADER.format(api=API_VERSION) + "---\n" + "---\n".join(docs)


__all__ = ["PRIORITY_LABEL", "QUEUE_LABEL", "export_kueue", "kueue_objects", "priority_class_name"]
