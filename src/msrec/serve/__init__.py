"""Export, the deployer's encoding of raw rows, and the HTTP service. `InputEncoder` is the deployer's entry."""

from msrec.serve.inputs import InputEncoder

__all__ = ["InputEncoder"]
