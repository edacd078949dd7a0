"""~/complete_masks over real DDS (loopback): the node is a separate process running the oracle model."""
from __future__ import annotations


import numpy as np
import pytest

from tests.helpers.oracle_model import make_oracle_onnx
from tests.helpers.ros_helpers import NodeProcess, RosClient, allocate_domain, header, paint, rectangles_scene, ros_env

pytestmark = pytest.mark.ros

pytest.importorskip("rclpy")
from sensor_msgs.msg import Image  # noqa: E402
from seg_msgs.msg import SegmentArray  # noqa: E402
from seg_msgs.srv import CompleteMasks  # noqa: E402

from seg_node.processing.image_codec import image_to_numpy, numpy_to_image  # noqa: E402

NODE = "segmenter"
SEGMENTS = f"/{NODE}/segments"
SERVICE = f"/{NODE}/complete_masks"
PARAMS = {"model.processing_resolution": 0, "backend.threads": 1, "qos.image.reliability": "reliable"}
H, W = 240, 320


@pytest.fixture(scope="module")
def node_and_client(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("complete_masks")
    model = make_oracle_onnx(tmp / "oracle.onnx")
    lease = allocate_domain()
    node = NodeProcess(ros_env(lease.domain, tmp / "log"), tmp / "node.log", {"model.path": str(model), **PARAMS})
    client = RosClient(lease.domain)
    client.subscribe(SegmentArray, SEGMENTS)
    try:
        node.wait_ready()
        yield node, client
    finally:
        client.close()
        node.stop()
        lease.release()


def _request(partial: np.ndarray, known: np.ndarray | None = None, encoding: str = "mono16") -> CompleteMasks.Request:
    req = CompleteMasks.Request(labels=numpy_to_image(partial, encoding, header=header(7, 123, "robot_mask_frame")))
    if known is not None:
        req.known = numpy_to_image(known.astype(np.uint8) * 255, "mono8")
    return req


def test_completes_the_latest_frame_keeps_the_request_header_and_names_bad_input(node_and_client) -> None:
    node, c = node_and_client
    truth = rectangles_scene(H, W, [(20, 20, 100, 80), (180, 30, 90, 70), (40, 140, 120, 70), (200, 150, 80, 60)])
    partial = truth.copy()
    partial[:, 60:] = np.where(truth[:, 60:] == 1, 0, truth[:, 60:])  # most of object 1 hidden
    partial[truth == 4] = 0  # object 4 not labelled at all
    partial[truth == 2] = 11  # the caller's own ids

    early = c.call(CompleteMasks, SERVICE, _request(partial))
    assert not early.success and "no frame" in early.message  # nothing segmented yet

    pub = c.publisher(Image, "/image")
    c.wait_matched([pub], [(SEGMENTS, 1)])
    frame_header = header(50, 0)
    assert c.send_until([(pub, numpy_to_image(paint(truth), "rgb8", header=frame_header))], SEGMENTS,
                        frame_header.stamp) is not None, node.log()

    resp = c.call(CompleteMasks, SERVICE, _request(partial))
    assert resp.success, resp.message
    assert resp.labels.header.frame_id == "robot_mask_frame"
    assert (resp.labels.header.stamp.sec, resp.labels.header.stamp.nanosec) == (7, 123)
    assert (resp.frame_header.stamp.sec, resp.frame_header.frame_id) == (50, frame_header.frame_id)
    done = image_to_numpy(resp.labels)
    assert done.dtype == np.uint16 and done.shape == (H, W)
    assert np.array_equal(done[partial > 0], partial[partial > 0])
    assert np.array_equal(done == 1, truth == 1)  # the hidden part rejoined object 1
    assert list(resp.new_ids) == [12]  # above the largest known id, 11
    assert np.array_equal(done == 12, truth == 4)
    assert np.all(done[truth == 0] == 0)

    # With a known mask, a known 0 is background: object 4's pixels marked known stay 0.
    known = (partial > 0) | (truth == 4)
    resp = c.call(CompleteMasks, SERVICE, _request(partial, known))
    assert resp.success and list(resp.new_ids) == []
    assert np.all(image_to_numpy(resp.labels)[truth == 4] == 0)

    # Bad requests are answered with the field and the problem.
    rgb = CompleteMasks.Request(labels=numpy_to_image(paint(partial), "rgb8"))
    cases = [(_request(partial[:, :-8]), "the latest frame is 320×240"), (rgb, "labels must be mono16"),
             (_request(np.zeros((H, W), np.uint16)), "no pixel as known"),
             (_request(partial, np.ones((H, W - 8), bool)), "known is 312×240")]
    for req, message in cases:
        resp = c.call(CompleteMasks, SERVICE, req)
        assert not resp.success and message in resp.message, resp.message
