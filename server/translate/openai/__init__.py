"""OpenAI's JSON dialect, by job: `inbound` reads a door's requests into protos,
`replies` writes protos as OpenAI's exact shapes, `upstream` speaks to an
OpenAI-compatible server (the request it is sent, the answer it gives).

The native HTTP format is this dialect made strict: the same request shapes
(with unknown fields refused) and the same reply shapes without the
constant `object` keys, so that `json_format.ParseDict` reads them back.
"""
