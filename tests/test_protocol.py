"""The protocol's declarations agree with each other: every message type has one Struct, every Struct a schema,
and a bad frame or body is refused with an error that names its field."""
from __future__ import annotations

import msgspec
import pytest

from runtime.protocol import ROUTES, Api, ErrorKind, Event, Msg, RelayError, api, wire
from runtime.protocol.wire import decode_manager_frame, decode_node_frame, encode_bytes, schemas


def _tags(union: object) -> list[str]:
    return [t.__struct_config__.tag for t in union.__args__]  # type: ignore[attr-defined]


def test_every_message_type_has_one_struct() -> None:
    tags = _tags(wire.NodeFrame) + _tags(wire.ManagerFrame)
    assert sorted(set(tags)) == sorted(m.value for m in Msg)
    assert sorted(_tags(wire.AnyEvent)) == sorted(e.value for e in Event)


def test_every_message_has_a_json_schema() -> None:
    defs = schemas()["$defs"]
    for union in (wire.NodeFrame, wire.ManagerFrame, wire.AnyEvent):
        for struct in union.__args__:  # type: ignore[attr-defined]
            assert struct.__name__ in defs, struct


def test_every_route_documents_body_and_reply() -> None:
    doc = api.openapi()
    for r in ROUTES:
        op = doc["paths"][r.path.value][r.method.lower()]
        assert r.reply.__name__ in str(op["responses"]["200"]), r
        assert {"400", "401", "413"} <= set(op["responses"]), r
    assert Api.EVENTS.value in doc["paths"]


@pytest.mark.parametrize(("frame", "field"), [
    (b'{"type":"task_result","task_id":"t","result":5}', "result"),
    (b'{"type":"approval_expired"}', "approval_id"),
    (b'{"type":"task_ack","task_id":7}', "task_id"),
])
def test_a_bad_frame_names_its_field(frame: bytes, field: str) -> None:
    with pytest.raises(RelayError) as info:
        decode_node_frame(frame)
    assert info.value.kind == ErrorKind.INVALID_REQUEST and f"`{field}`" in info.value.error


def test_unknown_message_type_is_named() -> None:
    with pytest.raises(RelayError, match="unknown message type"):
        decode_manager_frame(b'{"type":"no_such_type"}')


def test_timeout_zero_is_refused_not_defaulted() -> None:
    with pytest.raises(msgspec.ValidationError, match="timeout"):
        msgspec.json.decode(b'{"node_id":"n","prompt":"p","timeout":0}', type=api.DispatchBody)


def test_a_call_without_params_is_relayed_without_params() -> None:
    sent = encode_bytes(wire.AppserverRequest(request_id="r", method="account/read", timeout=1))
    assert b"params" not in sent
    assert decode_manager_frame(sent) == wire.AppserverRequest(request_id="r", method="account/read", timeout=1)
