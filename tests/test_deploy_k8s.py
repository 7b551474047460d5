"""The Kubernetes manifests in deploy/k8s, rendered by ``kubectl kustomize`` (offline) for
every overlay, against what agentd needs: probes, a grace period that covers the drain,
containers consistent with the config they mount, secrets referenced, and autoscalers
reading metrics that a real agentd exports."""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentd.config import Config, load

from .deploy_tools import DEPLOY, METRIC_NAME, run, scraped_series
from .procs import AgentdProcess, RedisServer, http_get

K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
# Seconds a pod may need beyond its preStop sleep, drain delay and shutdown timeout.
MARGIN_S = 5
# The labels by which the interactive and the job workers' pods differ.
PER_DEPLOYMENT = {"app.kubernetes.io/component", "agentd.io/partition"}

Manifest = dict[str, Any]


@functools.cache
def render(overlay: str) -> tuple[Manifest, ...]:
    result = run("kubectl", "kustomize", str(K8S / "overlays" / overlay))
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(docs: tuple[Manifest, ...], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    (doc,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def agentd_deployments(docs: tuple[Manifest, ...]) -> list[Manifest]:
    return [
        d
        for d in of_kind(docs, "Deployment")
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == "agentd"
    ]


def container(deployment: Manifest) -> Manifest:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def config_of(docs: tuple[Manifest, ...], deployment: Manifest, tmp_path: Path) -> Config:
    """The agentd config the deployment mounts, read and validated by agentd itself."""
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    (cm_name,) = [v["configMap"]["name"] for v in volumes if "configMap" in v]
    path = tmp_path / "config.toml"
    path.write_text(named(docs, "ConfigMap", cm_name)["data"]["config.toml"])
    return load(path, environ={})


def mounts(deployment: Manifest) -> dict[str, Manifest]:
    """mountPath -> the volume mounted there."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container(deployment)["volumeMounts"]}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_there_is_a_dev_and_a_production_overlay() -> None:
    assert {"dev", "production"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_agentd_container_matches_the_config_it_mounts(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    deployments = agentd_deployments(docs)
    assert {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments} == {
        "api",
        "jobs",
    }
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        config = config_of(docs, deployment, tmp_path)
        c = container(deployment)
        pod = deployment["spec"]["template"]["spec"]
        config_dir = next(p for p, v in mounts(deployment).items() if "configMap" in v)
        partitions = {p.name for p in config.all_partitions()}

        # The command: serve the mounted config, consuming one named partition.
        argv = c["command"] + c["args"]
        assert argv[:4] == ["agentd", "serve", "-c", f"{config_dir}/config.toml"], name
        assert argv[4] == "--partitions" and argv[5] in partitions, (name, argv)
        assert len(argv) == 6, argv

        # The port agentd binds is the one probed and exposed.
        (port,) = c["ports"]
        assert port == {"name": "http", "containerPort": int(config.server.bind.rsplit(":")[1])}
        assert config.server.bind.startswith("0.0.0.0:"), "a pod must listen beyond loopback"
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}

        # The kubelet waits for the whole graceful removal before SIGKILL.
        sleep = c["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep[0] == "sleep"
        needed = (
            float(sleep[1]) + config.server.drain_delay_s + config.server.shutdown_timeout
        ) + MARGIN_S
        assert pod["terminationGracePeriodSeconds"] >= needed, (name, needed)
        assert config.server.drain_delay_s > 0, "behind Services and ingresses: fail /readyz first"

        # One worker per requested core ("auto" would count the node's CPUs).
        assert config.server.workers == cpus(c["resources"]["requests"]["cpu"]), name
        assert "memory" in c["resources"]["limits"]

        # Locked down, with writable room only where agentd writes.
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert c["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        writable = {p for p, v in mounts(deployment).items() if "emptyDir" in v}
        assert "/tmp" in writable  # the workers' shared metrics directory
        assert str(Path(config.cache.disk_path).parent) in writable

        # One pod per node where possible, by the pod's own labels.
        (term,) = pod["affinity"]["podAntiAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        own = deployment["spec"]["template"]["metadata"]["labels"]
        assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= own.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= own.items()

        # Every instance tells clients the same models.
        assert all(agent.created for agent in config.agents), "agents need a fixed `created`"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_by_the_names_the_config_reads(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    for deployment in agentd_deployments(docs):
        config = config_of(docs, deployment, tmp_path)
        env = {e["name"]: e for e in container(deployment)["env"]}
        needed = [config.auth.admin_key_env, config.auth.tokens.secret_env]
        needed += [b.api_key_env for b in config.backends if b.api_key_env]
        assert config.auth.mode == "keys"
        for variable in needed:
            ref = env[variable]["valueFrom"]["secretKeyRef"]
            secrets = [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == ref["name"]]
            if secrets:  # generated by the overlay: the key is there
                assert ref["key"] in secrets[0]["data"], (variable, ref)
            else:  # created out of band (production): say so in the overlay
                text = (K8S / "overlays" / overlay / "kustomization.yaml").read_text()
                assert ref["name"] in text, f"{overlay} does not say where {ref['name']} comes from"
        # No secret value in the config or in plain env.
        assert all("value" not in e for e in env.values() if e["name"] in needed)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_two_deployments_run_the_same_pod_but_for_partition_and_labels(
    overlay: str,
) -> None:
    api, jobs = sorted(
        agentd_deployments(render(overlay)),
        key=lambda d: d["metadata"]["labels"]["app.kubernetes.io/component"],
    )

    def normalized(value: Any) -> Any:
        """The value without the labels that tell the two apart, and no partition name."""
        if isinstance(value, dict):
            return {k: normalized(v) for k, v in value.items() if k not in PER_DEPLOYMENT}
        if isinstance(value, list):
            return [normalized(v) for v in value]
        return value

    api_pod, jobs_pod = (normalized(d["spec"]["template"]["spec"]) for d in (api, jobs))
    for pod in (api_pod, jobs_pod):
        args = pod["containers"][0]["args"]
        args[args.index("--partitions") + 1] = "PARTITION"
    assert api_pod == jobs_pod


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_budget_and_hpa_target_the_interactive_pods(overlay: str) -> None:
    docs = render(overlay)
    deployments = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in agentd_deployments(docs)
    }
    api_labels = deployments["api"]["spec"]["template"]["metadata"]["labels"]
    jobs_labels = deployments["jobs"]["spec"]["template"]["metadata"]["labels"]
    service = named(docs, "Service", "agentd")
    assert selects(service["spec"]["selector"], api_labels)
    assert not selects(service["spec"]["selector"], jobs_labels)
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], api_labels)
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployments["api"]["metadata"]["name"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2, "one instance left after a disruption"
    assert "replicas" not in deployments["api"]["spec"], "the HPA owns the count"


def _scaled_object(docs: tuple[Manifest, ...]) -> tuple[Manifest, Manifest, str]:
    """The ScaledObject, the Deployment it scales, and that Deployment's partition."""
    (scaled,) = of_kind(docs, "ScaledObject")
    target = named(docs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    args = container(target)["args"]
    return scaled, target, args[args.index("--partitions") + 1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_a_partitions_workers_on_its_queue(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    scaled, target, partition = _scaled_object(docs)
    assert target["metadata"]["labels"]["app.kubernetes.io/component"] == "jobs"
    assert "replicas" not in target["spec"], "KEDA owns the count"
    config = config_of(docs, target, tmp_path)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    names = set(METRIC_NAME.findall(query))
    assert names and names <= {"agentd_jobs_queued", "agentd_jobs_running"}, query
    # Each of its series is that partition's.
    assert query.count(f'{{partition="{partition}"}}') == len(METRIC_NAME.findall(query))
    # Every instance reports the cluster's whole queue: aggregate with max, never sum.
    assert query.startswith("max(") and "sum" not in query
    # The threshold is what one pod runs at once.
    (part,) = [p for p in config.all_partitions() if p.name == partition]
    assert float(trigger["metadata"]["threshold"]) == part.concurrency * config.server.workers
    assert scaled["spec"]["minReplicaCount"] == 0


def test_the_dev_redis_urls_name_the_dev_redis_cluster_pods(tmp_path: Path) -> None:
    docs = render("dev")
    (sts,) = of_kind(docs, "StatefulSet")
    service = named(docs, "Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    config = config_of(docs, agentd_deployments(docs)[0], tmp_path)
    assert config.redis.cluster
    hosts = {urllib.parse.urlsplit(u).netloc for u in config.redis.urls}
    name = sts["metadata"]["name"]
    assert hosts == {
        f"{name}-{i}.{service['metadata']['name']}:6379" for i in range(sts["spec"]["replicas"])
    }


def test_a_real_agentd_on_the_dev_config_exports_what_keda_reads(
    agentd_instance: Callable[..., AgentdProcess], redis_standalone: RedisServer, tmp_path: Path
) -> None:
    docs = render("dev")
    scaled, target, partition = _scaled_object(docs)
    volumes = target["spec"]["template"]["spec"]["volumes"]
    (cm_name,) = [v["configMap"]["name"] for v in volumes if "configMap" in v]
    # The shipped config as is, but for what the test machine provides: its own Redis,
    # a cache file in its directory, the secrets, and no drain delay at the end.
    env = {
        "AGENTD_SERVER__DRAIN_DELAY_S": "0",
        "AGENTD_REDIS__URLS": f'["{redis_standalone.url}"]',
        "AGENTD_REDIS__CLUSTER": "false",
        "AGENTD_CACHE__DISK_PATH": "cache/responses.sqlite",
        "AGENTD_ADMIN_KEY": "test-admin-key",
        "AGENTD_TOKEN_SECRET": "test-token-secret-" + "0" * 32,
    }
    proc = agentd_instance(named(docs, "ConfigMap", cm_name)["data"]["config.toml"], env=env)
    status, _, body = http_get(proc.url + "/metrics")
    assert status == 200
    text = body.decode()
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    for name in METRIC_NAME.findall(query):
        assert name in scraped_series(text)
        assert f'{name}{{partition="{partition}"}}' in text, name
