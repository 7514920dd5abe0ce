"""The party operations, registered with `tfppml.mpc.dispatch.party_op` by importing these modules:

- `data`: set-up, sharing inputs, public values, reveal, free, stats, cancel.
- `local`: communication-free steps (add, reshape, sums, indexing, window sums).
- `interactive`: products, truncation, comparisons, pooling, argmax.
- `programs`: served programs and their queries.
"""

from tfppml.mpc.party_ops import data, interactive, local, programs  # noqa: F401 - registration

__all__ = ["data", "interactive", "local", "programs"]
