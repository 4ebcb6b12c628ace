"""The HTTP bridge: REST + SSE doors onto the same data plane as gRPC."""
