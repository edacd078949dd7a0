"""seg_node.ros.params: typed node parameters, one parameter table for node + Segmenter, params files, run-time
rules; and every config/*.yaml profile accepted by the real node (rcl's own YAML parser)."""
from __future__ import annotations

from pathlib import Path

import pytest

from seg_node.config import ConfigError, SegmenterConfig, flatten
from seg_node.ros.params import (
    ALL_DEFAULTS,
    CONFIG_DEFAULTS,
    NODE_DEFAULTS,
    NodeParams,
    load_params_file,
    node_params_from_dict,
    params_from_flat,
    runtime_change_problem,
    unknown_parameters,
)

REPO = Path(__file__).resolve().parents[2]
PROFILES = sorted((REPO / "config").glob("*.yaml"))


def test_one_table_for_node_and_segmenter() -> None:
    assert set(ALL_DEFAULTS) == set(flatten(NodeParams())) | set(flatten(SegmenterConfig()))
    assert not set(NODE_DEFAULTS) & set(CONFIG_DEFAULTS)
    node, config = params_from_flat({})
    assert node == NodeParams() and config == SegmenterConfig()
    # Names rclpy can declare: no empty lists (their type would be unknown).
    assert all(not isinstance(v, list) or v for v in ALL_DEFAULTS.values())


def test_values_map_onto_the_typed_objects() -> None:
    node, config = params_from_flat({"sync.slop": 1, "input.use_depth": True, "qos.image.reliability": "reliable",
                                     "model.path": "/m.onnx", "instances.min_area": 50, "tracking.enabled": False})
    assert node.sync.slop == 1.0 and isinstance(node.sync.slop, float)
    assert node.input.use_depth and node.qos.image.reliability == "reliable" and node.qos.image.depth == 5
    assert config.model.path == "/m.onnx" and config.instances.min_area == 50 and not config.tracking.enabled


@pytest.mark.parametrize("values, message", [
    ({"sync.mode": "sometimes"}, "sync.mode must be one of exact, approximate, got 'sometimes'"),
    ({"sync.slop": -1.0}, "sync.slop must be in"),
    ({"qos.image.depth": 0}, "qos.image.depth must be in [1, 1000]"),
    ({"qos.outputs.reliability": "maybe"}, "qos.outputs.reliability must be one of"),
    ({"input.use_depth": "yes"}, "input.use_depth: expected bool"),
    ({"input.transport": "theora"}, "input.transport must be one of raw, compressed"),
    ({"instances.min_area": 0}, "instances.min_area"),
    ({"model.mode": "fast"}, "model.mode"),
    ({"sync.slpo": 0.1}, "sync.slpo: unknown parameter"),
    ({"depth.max_dept": 2.0}, "depth.max_dept: unknown parameter"),
])
def test_bad_values_name_the_parameter(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        params_from_flat(values)
    assert message in str(err.value)


def test_node_params_from_nested_dict() -> None:
    p = node_params_from_dict({"sync": {"mode": "exact"}, "qos": {"depth_image": {"reliability": "reliable"}}})
    assert p.sync.mode == "exact" and p.qos.depth_image.reliability == "reliable"


def test_runtime_rules() -> None:
    for name in ("instances.min_area", "prompting.tau", "depth.max_depth", "tracking.enabled", "sync.slop",
                 "processing.on_demand", "diagnostics.warn_period"):
        assert runtime_change_problem(name) is None, name
    for name in ("model.path", "backend.device", "input.use_depth", "qos.image.reliability", "sync.mode"):
        reason = runtime_change_problem(name)
        assert reason and name in reason and "restart" in reason
    assert runtime_change_problem("use_sim_time") is None
    assert unknown_parameters(["use_sim_time", "model.path", "other_node_param"]) == ["other_node_param"]


@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
def test_profiles_parse_into_the_config(profile: Path, tmp_path: Path) -> None:
    model = tmp_path / "test.onnx"
    node, config = load_params_file(profile, overrides={"model.path": str(model)})
    assert config.model.path == str(model)
    assert node.input.max_pixels >= 1920 * 1080
    assert "segmenter:" in profile.read_text()


def test_params_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("segmenter:\n  ros__parameters:\n    instances: {min_area: -1}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: instances\.min_area"):
        load_params_file(bad)
    bad.write_text("other_node:\n  ros__parameters: {x: 1}\n")
    with pytest.raises(ConfigError, match="no 'segmenter:'"):
        load_params_file(bad)
    bad.write_text("segmenter: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params_file(bad)
    # /** applies to every node; the node's own section wins.
    both = tmp_path / "both.yaml"
    both.write_text("/**:\n  ros__parameters:\n    sync: {slop: 0.5}\n    instances: {min_area: 7}\n"
                    "segmenter:\n  ros__parameters:\n    sync: {slop: 0.1}\n")
    node, config = load_params_file(both)
    assert node.sync.slop == 0.1 and config.instances.min_area == 7


@pytest.mark.ros
@pytest.mark.parametrize("profile", PROFILES, ids=[p.name for p in PROFILES])
def test_real_node_accepts_each_profile(profile: Path, tmp_path: Path) -> None:
    """rcl parses the file (its YAML rules are stricter than PyYAML's) and the node validates it at start-up; the
    model is the test oracle on CPU, as this machine has no GPU."""
    pytest.importorskip("rclpy")
    from tests.helpers.oracle_model import make_oracle_onnx
    from tests.helpers.ros_helpers import NodeProcess, allocate_domain, ros_env

    model = make_oracle_onnx(tmp_path / "oracle.onnx")
    lease = allocate_domain()
    try:
        node = NodeProcess(ros_env(lease.domain, tmp_path / "log"), tmp_path / "node.log",
                           {"model.path": str(model), "backend.name": "onnxruntime", "backend.device": "cpu",
                            "backend.precision": "fp32"},
                           params_file=profile)
        ok = node.wait_for_log("segmenting ", 60)
        log = node.log()
        rc, _ = node.stop()
    finally:
        lease.release()
    assert ok, log
    assert rc == 0, log
    assert "ignoring parameters" not in log
