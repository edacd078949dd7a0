"""Fixtures of the node tests: the oracle model and node sessions (a node process and a client on a private
ROS domain)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.oracle_model import make_oracle_onnx
from tests.helpers.ros_helpers import NodeProcess, RosClient, allocate_domain, ros_env


@pytest.fixture(scope="session")
def oracle_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_oracle_onnx(tmp_path_factory.mktemp("models") / "oracle.onnx")


class Session:
    """One node process and one client on a private domain."""

    def __init__(self, tmp_path: Path, params: dict, **node_kwargs) -> None:
        self.lease = allocate_domain()
        self.env = ros_env(self.lease.domain, tmp_path / "ros_log")
        self.node = NodeProcess(self.env, tmp_path / "node.log", params, **node_kwargs)
        self.client = RosClient(self.lease.domain)

    def close(self) -> tuple[int | None, float]:
        try:
            self.client.close()
        finally:
            result = self.node.stop()
            self.lease.release()
        return result


@pytest.fixture
def session_factory(tmp_path: Path):
    sessions: list[Session] = []

    def make(params: dict, **kwargs) -> Session:
        path = tmp_path / f"s{len(sessions)}"
        path.mkdir()
        s = Session(path, params, **kwargs)
        sessions.append(s)
        return s

    yield make
    for s in sessions:
        s.close()
