"""OpenAI's JSON dialect, by job (server/translate/protocols.py): `inbound` reads a door's
requests into protos, `replies` writes protos as OpenAI's exact shapes, `to_provider`
and `from_provider` speak to an OpenAI-compatible server (the request it is sent, the
answer it gives).

The native HTTP format is this dialect made strict: the same request shapes
(with unknown fields refused) and the same reply shapes without the
constant `object` keys, so that `json_format.ParseDict` reads them back.
"""
