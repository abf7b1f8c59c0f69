"""The fault tests on the three-broker cluster (deploy/local/stack.sh cluster-up), with the
single-node stack's PostgreSQL. `make test` starts the cluster for them and runs them in a
pytest run of their own (`-m cluster`), after the single-node suite; they fail, never
skip, when the cluster is down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.settings import Settings, load_settings
from tests.cluster.cluster import DESCRIPTION, Cluster
from tests.cluster.harness import Run
from tests.integration.conftest import answering


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster/test_faults.py" in str(item.fspath).replace("\\", "/"):  # (test_checker.py needs nothing)
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    if not DESCRIPTION.exists():
        pytest.fail(f"{DESCRIPTION} is missing: start the cluster first (deploy/local/stack.sh cluster-up)")
    return Cluster.described()


@pytest.fixture(scope="session")
def cluster_settings(cluster: Cluster) -> Settings:
    return answering(load_settings().derive(bootstrap_servers=cluster.bootstrap),
                     "start the cluster (deploy/local/stack.sh cluster-up) and PostgreSQL (make up)")


@pytest.fixture
def run(cluster: Cluster, cluster_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Run]:
    """A run on a healthy cluster (every node up, no toxic, fully replicated), left healthy."""
    cluster.healthy(cluster_settings)
    r = Run(cluster, cluster_settings, tmp_path, request.node.name, seed=len(request.node.name))
    passed = False
    try:
        yield r
        passed = True
    finally:
        try:
            r.close(clean=passed)
        finally:
            cluster.healthy(cluster_settings)
