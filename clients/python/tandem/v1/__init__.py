"""Generated stubs of the tandem.v1 API (see protos/tandem/v1/)."""
