"""Anthropic's Messages API, by job (server/translate/protocols.py): `inbound` (a door's
request as a proto), `replies` (protos as Anthropic's answers and stream events),
`to_provider` and `from_provider` (the `anthropic` provider kind: proto requests out,
Anthropic's answers in)."""

# Anthropic's least `thinking.budget_tokens`: the door asks for it, the upstream keeps to it
MIN_THINKING_BUDGET = 1024
