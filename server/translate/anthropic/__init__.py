"""Anthropic's Messages API, by job: `inbound` (a door's request as a proto),
`replies` (protos as Anthropic's answers and stream events), `upstream` (the
`anthropic` provider kind: proto requests out, Anthropic's answers in)."""
