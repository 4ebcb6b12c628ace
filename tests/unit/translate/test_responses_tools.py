"""A Responses request's tools as chat functions and back, in process: custom tools as a
function of one string `input` (their grammar told), namespaced functions as
`<namespace>__<name>`, hosted tools left out, a name offered twice refused."""

from __future__ import annotations

import pytest

from server.errors import InvalidRequestError
from server.translate.responses.tools import (
    Named,
    ToolNames,
    custom_arguments,
    custom_input,
    read_tools,
)

CUSTOM = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files.",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: x"},
}
NAMESPACE = {
    "type": "namespace",
    "name": "mcp__srv",
    "tools": [
        {"type": "function", "name": "x"},
        {"type": "web_search"},
        {"type": "custom", "name": "y"},
    ],
}


def test_custom_namespace_and_hosted_tools_as_chat_functions() -> None:
    functions, names = read_tools(
        [{"type": "function", "name": "f"}, CUSTOM, NAMESPACE, {"type": "web_search"}]
    )
    assert [f["function"]["name"] for f in functions] == [
        "f",
        "apply_patch",
        "mcp__srv__x",
        "mcp__srv__y",
    ]
    custom = functions[1]["function"]
    assert custom["parameters"]["required"] == ["input"]
    assert custom["description"].startswith("Edit files.\n\n")
    assert custom["description"].endswith("lark grammar:\nstart: x")
    assert names.named("apply_patch") == Named("custom", "apply_patch")
    assert names.named("mcp__srv__x") == Named("function", "x", "mcp__srv")
    assert names.named("mcp__srv__y") == Named("custom", "y", "mcp__srv")
    assert names.named("unoffered") == Named("function", "unoffered")
    assert ToolNames.of(None).named("f") == Named("function", "f")


@pytest.mark.parametrize(
    ("tools", "param"),
    [
        (
            [
                {"type": "function", "name": "a__b"},
                {"type": "namespace", "name": "a", "tools": [{"type": "function", "name": "b"}]},
            ],
            "tools[1].tools[0].name",
        ),
        ([{"type": "custom"}], "tools[0].name"),
        ([{"type": "custom", "name": "c", "format": "lark"}], "tools[0].format"),
        ([{"type": "namespace", "name": "n", "tools": "x"}], "tools[0].tools"),
        (["x"], "tools[0]"),
    ],
)
def test_tools_that_cannot_be_read_are_refused_by_name(tools: list[object], param: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        read_tools(tools)
    assert refused.value.param == param


@pytest.mark.parametrize(
    ("arguments", "text"),
    [
        (custom_arguments('a "patch"\n'), 'a "patch"\n'),
        ("raw text, not JSON", "raw text, not JSON"),
        ('{"other": 1}', '{"other": 1}'),
    ],
)
def test_a_custom_input_from_its_arguments(arguments: str, text: str) -> None:
    assert custom_input(arguments) == text
