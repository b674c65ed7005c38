from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HandshakeRequest(_message.Message):
    __slots__ = ("camera_id", "artifact_id", "client_version")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    artifact_id: str
    client_version: str
    def __init__(self, camera_id: _Optional[str] = ..., artifact_id: _Optional[str] = ..., client_version: _Optional[str] = ...) -> None: ...

class HandshakeReply(_message.Message):
    __slots__ = ("artifact_id", "model", "cut", "server_version", "last_seq")
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CUT_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    artifact_id: str
    model: str
    cut: str
    server_version: str
    last_seq: int
    def __init__(self, artifact_id: _Optional[str] = ..., model: _Optional[str] = ..., cut: _Optional[str] = ..., server_version: _Optional[str] = ..., last_seq: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("camera_id", "seq", "capture_time_us", "artifact_id", "tensor")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    seq: int
    capture_time_us: int
    artifact_id: str
    tensor: bytes
    def __init__(self, camera_id: _Optional[str] = ..., seq: _Optional[int] = ..., capture_time_us: _Optional[int] = ..., artifact_id: _Optional[str] = ..., tensor: _Optional[bytes] = ...) -> None: ...

class FrameResult(_message.Message):
    __slots__ = ("camera_id", "seq", "score", "is_anomaly", "status", "duplicate")
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    IS_ANOMALY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    camera_id: str
    seq: int
    score: float
    is_anomaly: bool
    status: Status
    duplicate: bool
    def __init__(self, camera_id: _Optional[str] = ..., seq: _Optional[int] = ..., score: _Optional[float] = ..., is_anomaly: _Optional[bool] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...
