"""The prompt's estimate of a Responses request relayed as written (`responses: native`)."""

from __future__ import annotations

from server.core.estimate import estimate_relayed_prompt


def test_the_prompt_estimate_reads_texts_tools_and_media_not_ids_or_sealed_reasoning() -> None:
    body = {
        "model": "m",
        "instructions": "four words right here",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hello"}]},
            {"type": "input_image", "image_url": "data:image/png;base64," + "A" * 4000},
            {"type": "reasoning", "id": "rs_123", "encrypted_content": "B" * 4000, "summary": []},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ],
        "tools": [{"type": "web_search"}],
        "metadata": {"not": "read"},
    }
    texts = "\n".join(["four words right here", "hello", "sunny", '[{"type":"web_search"}]'])
    expected = 1000 + -(-len(texts) // 4)
    assert estimate_relayed_prompt(body) == expected
    assert estimate_relayed_prompt({"input": "a b c"}) == 3
    assert estimate_relayed_prompt({}) == 0
