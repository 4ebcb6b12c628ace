"""The gRPC door: the services (services.py), the wrapper every method goes through
(rpc.py), the request decoder that never raises (decode.py), and the gRPC spelling of
the error model (errors.py)."""

from server.grpc_door.services import SERVICE_NAMES, build_grpc_server

__all__ = ["SERVICE_NAMES", "build_grpc_server"]
