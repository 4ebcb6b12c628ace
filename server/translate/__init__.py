"""Translation between the proto types and each dialect's JSON: one pure module per dialect."""
