"""Ollama's JSON dialect, by job (server/translate/protocols.py): `inbound` reads the
door's requests (`/api/*`) into protos, `replies` writes protos as Ollama's answers,
`to_provider` and `from_provider` speak to an Ollama server (the `ollama` provider
kind)."""

# the sampling options Ollama and the proto name alike (`num_predict` and `stop` differ)
SAMPLING_OPTIONS = (
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "presence_penalty",
    "frequency_penalty",
)
