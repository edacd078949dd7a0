"""The managed segmenter (``segmenter_lifecycle``) driven through its lifecycle from a separate client process over
real DDS: a configure that fails names the file and leaves the node unconfigured and retryable; configure loads the
model without touching topics; activate wires them; deactivate stops processing but keeps the model; cleanup and
shutdown free everything."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.ros_helpers import VENV_BIN, NodeProcess, RosClient, allocate_domain, header, paint, rectangles_scene, ros_env
from tests.ros.test_node import ORACLE, SEGMENTS

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy")
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from seg_msgs.msg import SegmentArray  # noqa: E402

from seg_node.processing.image_codec import numpy_to_image  # noqa: E402

NODE = "segmenter"


def lifecycle_command() -> list[str]:
    exe = VENV_BIN / "segmenter_lifecycle"
    return [str(exe)] if exe.exists() else [str(VENV_BIN / "python"), "-m", "seg_node.ros.lifecycle"]


def state(c: RosClient) -> str:
    return c.call(GetState, f"/{NODE}/get_state", GetState.Request()).current_state.label


def transition(c: RosClient, transition_id: int) -> bool:
    return c.call(ChangeState, f"/{NODE}/change_state",
                  ChangeState.Request(transition=Transition(id=transition_id)), timeout=60).success


def test_lifecycle_transitions_over_dds(tmp_path: Path, oracle_model: Path) -> None:
    lease = allocate_domain()
    missing = tmp_path / "no_such_model.onnx"
    node = NodeProcess(ros_env(lease.domain, tmp_path / "log"), tmp_path / "node.log",
                       {"model.path": str(missing), **ORACLE, "qos.image.reliability": "reliable"},
                       command=lifecycle_command())
    c = RosClient(lease.domain)
    try:
        node.wait_ready(text="waiting for configure")
        assert state(c) == "unconfigured"
        assert c.node.count_publishers(SEGMENTS) == 0

        # A failed configure: back to unconfigured, the file and the reason in the log.
        assert not transition(c, Transition.TRANSITION_CONFIGURE)
        assert state(c) == "unconfigured"
        assert "configure failed" in node.log() and "no_such_model.onnx" in node.log() and "does not exist" in node.log()

        # Start-up-only parameters may change while unconfigured; configure then loads the model, no topics yet.
        (res,) = c.set_parameters(NODE, {"model.path": str(oracle_model)})
        assert res.successful, res.reason
        assert transition(c, Transition.TRANSITION_CONFIGURE) and state(c) == "inactive"
        assert "model loaded" in node.log() and c.node.count_publishers(SEGMENTS) == 0
        (res,) = c.set_parameters(NODE, {"model.path": "/other.onnx"})
        assert not res.successful and "restart" in res.reason  # loaded: locked until cleanup

        # Activate: topics wired, frames segmented.
        c.subscribe(SegmentArray, SEGMENTS)
        pub = c.publisher(Image, "/image")
        assert transition(c, Transition.TRANSITION_ACTIVATE) and state(c) == "active"
        c.wait_matched([pub], [(SEGMENTS, 1)])
        hdr = header(5, 0, "active")
        msg = numpy_to_image(paint(rectangles_scene()), "rgb8", header=hdr)
        answer = c.send_until([(pub, msg)], SEGMENTS, hdr.stamp)
        assert answer is not None and len(answer.segments) == 4, node.log()

        # Deactivate: no topics, no processing; the model stays (activating again needs no load).
        assert transition(c, Transition.TRANSITION_DEACTIVATE) and state(c) == "inactive"
        assert c.wait_for(lambda: c.node.count_publishers(SEGMENTS) == 0, 10)
        assert "model kept" in node.log()
        assert transition(c, Transition.TRANSITION_ACTIVATE) and state(c) == "active"
        c.wait_matched([pub], [(SEGMENTS, 1)])
        hdr2 = header(6, 0, "active again")
        msg2 = numpy_to_image(paint(rectangles_scene()), "rgb8", header=hdr2)
        assert c.send_until([(pub, msg2)], SEGMENTS, hdr2.stamp) is not None, node.log()
        assert node.log().count("model loaded") == 1

        # Deactivate, cleanup (model released), shutdown.
        assert transition(c, Transition.TRANSITION_DEACTIVATE)
        assert transition(c, Transition.TRANSITION_CLEANUP) and state(c) == "unconfigured"
        assert "model released" in node.log()
        assert transition(c, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN) and state(c) == "finalized"
    finally:
        c.close()
        rc, _ = node.stop()
        lease.release()
    assert rc == 0, node.log()
