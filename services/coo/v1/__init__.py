"""Generated protobuf contracts of the COO bus (package coo.v1); regenerate with `make proto`."""
