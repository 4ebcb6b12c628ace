"""Translation between the proto types and each dialect's JSON: one pure package per
dialect, each with the same jobs under the same names (`protocols.py`)."""
