from services.proto.stride.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ActRequest(_message.Message):
    __slots__ = ("observations", "deterministic", "seed")
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    DETERMINISTIC_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    observations: _common_pb2.Array
    deterministic: bool
    seed: int
    def __init__(self, observations: _Optional[_Union[_common_pb2.Array, _Mapping]] = ..., deterministic: _Optional[bool] = ..., seed: _Optional[int] = ...) -> None: ...

class ActResponse(_message.Message):
    __slots__ = ("actions", "policy_version")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    actions: _common_pb2.Array
    policy_version: int
    def __init__(self, actions: _Optional[_Union[_common_pb2.Array, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class GetPolicyInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyInfo(_message.Message):
    __slots__ = ("env_id", "observation_space", "action_space", "policy_version", "source", "env_steps", "max_batch")
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_SPACE_FIELD_NUMBER: _ClassVar[int]
    ACTION_SPACE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ENV_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    env_id: str
    observation_space: _common_pb2.Space
    action_space: _common_pb2.Space
    policy_version: int
    source: str
    env_steps: int
    max_batch: int
    def __init__(self, env_id: _Optional[str] = ..., observation_space: _Optional[_Union[_common_pb2.Space, _Mapping]] = ..., action_space: _Optional[_Union[_common_pb2.Space, _Mapping]] = ..., policy_version: _Optional[int] = ..., source: _Optional[str] = ..., env_steps: _Optional[int] = ..., max_batch: _Optional[int] = ...) -> None: ...
