"""The link over a real gRPC stream: it asks the encoder for a key frame when it reconnects (the cloud may lack
the reference of the frames coded next), and not on its first stream, which starts with a key frame anyway."""

from __future__ import annotations

import threading
from concurrent import futures
from types import SimpleNamespace

import grpc

from edge.link import Link
from edge.metrics import CameraStats
from edge.outbox import Outbox
from edge.spool import Spool
from protos import infocut_pb2 as pb
from protos import infocut_pb2_grpc as pb_grpc
from tests.conftest import free_port


class Cloud(pb_grpc.IngestServicer):
    """Acks each frame; its first stream ends after one frame, as a cloud restarting would."""

    def __init__(self) -> None:
        self.streams: list[list[int]] = []

    def Handshake(self, request, context):
        return pb.HandshakeReply(artifact_id=request.artifact_id, last_seq=-1)

    def Stream(self, request_iterator, context):
        seqs: list[int] = []
        self.streams.append(seqs)
        for frame in request_iterator:
            seqs.append(frame.seq)
            yield pb.FrameResult(camera_id=frame.camera_id, seq=frame.seq, status=pb.Status(code=0))
            if len(self.streams) == 1:
                return


def test_the_link_asks_for_a_key_frame_on_a_reconnect_not_on_its_first_stream(tmp_path):
    port, cloud = free_port(), Cloud()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_IngestServicer_to_server(cloud, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    spool = Spool(tmp_path / "spool")
    outbox = Outbox(spool, memory_frames=8)
    stats = CameraStats("cam", outbox)
    asked: list[int] = []
    link = Link("cam", f"127.0.0.1:{port}", SimpleNamespace(id="artifact"), outbox, stats, threading.Event(),
                max_inflight=1, backoff=(0.05, 0.1), request_key=lambda: asked.append(len(cloud.streams)))
    try:
        for seq in range(3):
            assert outbox.put(seq, 0, seq, b"frame %d" % seq)
        link.run(finished=lambda: True)
    finally:
        server.stop(0)
        outbox.close()
    assert cloud.streams == [[0], [1, 2]]
    assert stats.acked == 3 and stats.reconnects == 1
    assert asked == [1], "one key frame asked for: on the second stream's handshake, none on the first"
