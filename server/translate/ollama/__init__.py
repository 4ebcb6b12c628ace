"""Ollama's JSON dialect, by job: `inbound` reads the door's requests (`/api/*`) into
protos, `replies` writes protos as Ollama's answers, `upstream` speaks to an Ollama
server (the `ollama` provider kind)."""
