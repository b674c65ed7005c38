"""The edge's channel retries its unary calls inside gRPC (service config retryPolicy): a cloud that
comes up a moment after the first attempt still gets the Handshake, within the one call."""

from __future__ import annotations

import json
import threading
from concurrent import futures

import grpc
import pytest

from edge.link import CHANNEL_OPTIONS, SERVICE_CONFIG
from protos import infocut_pb2 as pb
from protos import infocut_pb2_grpc as pb_grpc
from tests.conftest import free_port


class Cloud(pb_grpc.IngestServicer):
    def Handshake(self, request, context):
        return pb.HandshakeReply(artifact_id=request.artifact_id, last_seq=7)


def serve_later(port: int, delay_s: float) -> tuple[threading.Thread, list[grpc.Server]]:
    """Start a Handshake-only server on `port` after `delay_s`."""
    started: list[grpc.Server] = []

    def run() -> None:
        server = grpc.server(futures.ThreadPoolExecutor(2))
        pb_grpc.add_IngestServicer_to_server(Cloud(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        started.append(server)

    t = threading.Timer(delay_s, run)
    t.start()
    return t, started


def test_the_service_config_is_valid_and_retries_only_unary_calls_on_unavailable():
    options = dict(CHANNEL_OPTIONS)
    assert options["grpc.enable_retries"] == 1
    assert json.loads(options["grpc.service_config"]) == SERVICE_CONFIG
    (method,) = SERVICE_CONFIG["methodConfig"]
    assert {n["method"] for n in method["name"]} == {"Handshake", "Submit"}
    policy = method["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"] and 2 <= policy["maxAttempts"] <= 5


@pytest.mark.parametrize("retries", [True, False])
def test_handshake_reaches_a_cloud_that_comes_up_after_the_first_attempt(retries):
    port = free_port()
    timer, started = serve_later(port, 0.5)
    options = CHANNEL_OPTIONS if retries else [o for o in CHANNEL_OPTIONS if o[0] != "grpc.enable_retries"] + [
        ("grpc.enable_retries", 0)]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
            call = lambda: pb_grpc.IngestStub(ch).Handshake(pb.HandshakeRequest(artifact_id="a"), timeout=10)  # noqa: E731
            if retries:
                assert call().last_seq == 7, "one call, retried by gRPC until the cloud answered"
            else:
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, "without the policy the first failure is final"
    finally:
        timer.join()
        for s in started:
            s.stop(0)

