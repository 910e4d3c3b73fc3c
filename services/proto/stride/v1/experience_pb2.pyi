from services.proto.stride.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrajectoryFragment(_message.Message):
    __slots__ = ("obs", "actions", "logp", "rewards", "terminated", "truncated", "final_obs", "policy_version", "actor_name", "episode_returns", "episode_lengths", "truncated_final_obs", "episode_ended_by")
    OBS_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    LOGP_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    FINAL_OBS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_NAME_FIELD_NUMBER: _ClassVar[int]
    EPISODE_RETURNS_FIELD_NUMBER: _ClassVar[int]
    EPISODE_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FINAL_OBS_FIELD_NUMBER: _ClassVar[int]
    EPISODE_ENDED_BY_FIELD_NUMBER: _ClassVar[int]
    obs: _common_pb2.Array
    actions: _common_pb2.Array
    logp: _common_pb2.Array
    rewards: _common_pb2.Array
    terminated: _common_pb2.Array
    truncated: _common_pb2.Array
    final_obs: _common_pb2.Array
    policy_version: int
    actor_name: str
    episode_returns: _containers.RepeatedScalarFieldContainer[float]
    episode_lengths: _containers.RepeatedScalarFieldContainer[int]
    truncated_final_obs: _common_pb2.Array
    episode_ended_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, obs: _Optional[_Union[_common_pb2.Array, _Mapping]] = ..., actions: _Optional[_Union[_common_pb2.Array, _Mapping]] = ..., logp: _Optional[_Union[_common_pb2.Array, _Mapping]] = ..., rewards: _Optional[_Union[_common_pb2.Array, _Mapping]] = ..., terminated: _Optional[_Union[_common_pb2.Array, _Mapping]] = ..., truncated: _Optional[_Union[_common_pb2.Array, _Mapping]] = ..., final_obs: _Optional[_Union[_common_pb2.Array, _Mapping]] = ..., policy_version: _Optional[int] = ..., actor_name: _Optional[str] = ..., episode_returns: _Optional[_Iterable[float]] = ..., episode_lengths: _Optional[_Iterable[int]] = ..., truncated_final_obs: _Optional[_Union[_common_pb2.Array, _Mapping]] = ..., episode_ended_by: _Optional[_Iterable[str]] = ...) -> None: ...

class PushSummary(_message.Message):
    __slots__ = ("accepted", "dropped_stale", "learner_version")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_STALE_FIELD_NUMBER: _ClassVar[int]
    LEARNER_VERSION_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    dropped_stale: int
    learner_version: int
    def __init__(self, accepted: _Optional[int] = ..., dropped_stale: _Optional[int] = ..., learner_version: _Optional[int] = ...) -> None: ...

class GetWeightsRequest(_message.Message):
    __slots__ = ("known_version",)
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    known_version: int
    def __init__(self, known_version: _Optional[int] = ...) -> None: ...

class WeightsChunk(_message.Message):
    __slots__ = ("version", "index", "count", "total_bytes", "data")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    version: int
    index: int
    count: int
    total_bytes: int
    data: bytes
    def __init__(self, version: _Optional[int] = ..., index: _Optional[int] = ..., count: _Optional[int] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
