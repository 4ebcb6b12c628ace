"""Tandem: the canonical gRPC service, the domain core, and the process around them."""
