"""tfppml's own error types.

Input mistakes are plain `ValueError` / `TypeError` naming the argument; these classes are for failures of the
domain itself, so that callers can catch them precisely.
"""


class TfppmlError(Exception):
    """Base class of tfppml's domain errors."""


class KernelLibraryError(TfppmlError, ImportError):
    """A compiled kernel library is missing or failed to load (never silently replaced by a fallback)."""


class ProtocolError(TfppmlError):
    """A secure-computation protocol step failed or received something it did not expect."""


class PartyUnavailableError(TfppmlError):
    """A party, worker or server did not answer within its timeout."""


class PolicyDenied(TfppmlError, PermissionError):
    """A data owner's policy refused a request."""


class QuotaExceeded(PolicyDenied):
    """A serving period's quota (counted in input rows) or a per-identity limit is spent."""


class FixedPointOverflowError(TfppmlError, ArithmeticError):
    """A fixed-point value or product would leave the range the ring encoding represents exactly."""


class QueryCancelled(ProtocolError):
    """A peer or the dispatcher cancelled the computation this step belonged to."""
