"""One operation's view of its party: the share store (with ownership and the query's scope), message tags, and
the correlated randomness of the session it runs under.  The sub-protocols (`tfppml.mpc.primitives`) are mixed
into `OpContext`, so an operation handler calls `ctx.multiply(...)`, `ctx.relu(...)` and so on.

Scopes: every tag and every PRG draw of an operation is namespaced by its scope, "<caller>/<op_id>", so that two
identities can never collide (a client cannot choose an operation id that reuses the owner's masks), and a
query's steps add their step number ("<caller>/<op_id>|<k>/<label>").  A served query's intermediates live in a
`QueryScope` that only the query's own steps can address; they are not in the party's store, belong to no
identity, and go when the query ends.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from tfppml import ops
from tfppml.errors import PolicyDenied, ProtocolError
from tfppml.mpc.primitives.binary import Binary
from tfppml.mpc.primitives.bit_injection import BitInjection
from tfppml.mpc.primitives.fss import FunctionSecretSharing
from tfppml.mpc.primitives.resharing import Resharing
from tfppml.mpc.shares import NUM_PARTIES, Share, ShareKind, as_array, bxor, rsub

if TYPE_CHECKING:
    from tfppml.mpc.dispatch import PartyRuntime, Session
    from tfppml.mpc.scope import QueryScope

#: Share ids chosen by drivers: short identifiers.  No "|" (it separates a tag's scope) and no "$" (a query's
#: scope-local names start with it).
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:/-]{1,200}$")

#: Masks of at least this many elements are drawn with the multi-threaded TF kernel instead of the direct call.
_PRG_KERNEL_MIN_SIZE = 1 << 18
#: Key words are little-endian whatever the machine (read-only views of the digest are fine: the PRG only reads).
_SEED_DTYPE = np.dtype("<u8")


class OpContext(Resharing, Binary, BitInjection, FunctionSecretSharing):
    """Per-operation helpers: the store, message tags, derived PRG keys and (mixed in) the sub-protocols.

    Args:
        party: the party runtime.
        scope_id: "<caller>/<op_id>": the namespace of this operation's tags and PRG draws.
        caller: the authenticated identity that sent the command.
        session: the session (owner and keys) the operation's randomness comes from; None for operations that
            draw none.
        step: inside a query, the step number (tags become "<scope_id>|<step>/<label>").
        query: inside a query, its scope: "$input" and "$k" name its values, and the program owner's shares
            (its weights) are readable.
    """

    def __init__(
        self,
        party: "PartyRuntime",
        scope_id: str,
        caller: str,
        session: "Session | None" = None,
        *,
        step: int | None = None,
        query: "QueryScope | None" = None,
    ) -> None:
        self.party = party
        self.scope_id = scope_id
        self.i = party.index
        self.caller = caller
        self.session = session
        self.query = query
        self._prefix = f"{scope_id}|" if step is None else f"{scope_id}|{step}/"
        # Whose shares this operation may read: the caller's own, or inside a query the program owner's weights.
        self.reader = query.program.owner if query is not None else caller

    # --- the share store, with ownership ----------------------------------------------------------------
    def get(self, share_id: Any, kind: ShareKind | None = ShareKind.ARITH) -> Share:
        if isinstance(share_id, str) and share_id.startswith("$"):
            if self.query is None:
                raise ProtocolError(f"shared tensor id {share_id!r}: names starting with '$' exist only inside a query")
            share = self.query.get(share_id)
        else:
            store = self.party.store
            share = store.get(share_id) if isinstance(share_id, str) else None
            if share is None:
                raise ProtocolError(f"party {self.party.names[self.i]} holds no shared tensor {share_id!r}")
            if share.owner != self.reader:
                raise PolicyDenied(
                    f"{self.caller!r} may not use shared tensor {share_id!r}: it belongs to another identity"
                )
        if kind is not None and share.kind != kind:
            raise ProtocolError(f"shared tensor {share_id!r} is a {share.kind.value} sharing, expected {kind.value}")
        return share

    def get_additive(self, share_id: Any) -> Share:
        """`get` for operations that also take a product's unshared terms (ShareKind.TERMS): add, reshape, window
        sums, relu and a program's output."""
        share = self.get(share_id, kind=None)
        if share.kind not in (ShareKind.ARITH, ShareKind.TERMS):
            raise ProtocolError(f"shared tensor {share_id!r} is a {share.kind.value} sharing, expected arith")
        return share

    def put(self, share_id: Any, share: Share) -> dict:
        """Stores a result: in the query's scope inside a query, else in the store as the caller's."""
        self.party.limits.check_bytes(share.nbytes, "a result")
        if self.query is not None:
            self.query.put(share_id, share)
            return {"shape": share.shape}
        if not isinstance(share_id, str) or not ID_PATTERN.match(share_id):
            raise ProtocolError(f"shared tensor ids must be short identifier strings, got {share_id!r:.80}")
        self.party.store_put(self.caller, share_id, share)
        return {"shape": share.shape}

    def check_elements(self, shape: Any, what: str) -> list[int]:
        """`shape` if a tensor of that shape (two uint64 components) fits the party's per-result bound; checked
        before anything of that size is allocated."""
        dims = [int(d) for d in shape]
        if any(d < 0 for d in dims):
            raise ProtocolError(f"{what}: negative dimension in {dims}")
        self.party.limits.check_bytes(16 * math.prod(dims), what)
        return dims

    # --- messages -------------------------------------------------------------------------------------------
    def tag(self, label: str) -> str:
        return self._prefix + label

    def send(self, to: int, label: str, value: np.ndarray) -> None:
        if self.query is not None:
            self.query.await_admission()
        array = np.asarray(value)
        self.party.channel.send(self.party.names[to % NUM_PARTIES], self.tag(label), array)
        self.party.count("messages_sent")
        self.party.count("bytes_sent", array.nbytes)

    def recv(self, frm: int, label: str, timeout: float | None = None) -> np.ndarray:
        if self.query is not None:
            self.query.await_admission()
        array = self.party.channel.recv(self.party.names[frm % NUM_PARTIES], self.tag(label), timeout)
        self.party.count("messages_received")
        if array.dtype != np.uint64:
            raise ProtocolError(f"message {label!r} from party {frm % NUM_PARTIES} is {array.dtype}, expected uint64")
        return array

    # --- randomness -----------------------------------------------------------------------------------------
    def prg(self, key: int, label: str, shape: list[int]) -> np.ndarray:
        """ChaCha20 output under the session's key k_key, held by parties key-1 and key; only they can call this."""
        key %= NUM_PARTIES
        keys = self.session.keys if self.session is not None else None
        if keys is None or key not in keys:
            raise ProtocolError(f"party {self.i} does not hold key {key} (the operation runs under no session)")
        digest = hashlib.sha256(keys[key] + f"|{self._prefix}{label}".encode()).digest()
        seed = np.frombuffer(digest, dtype=_SEED_DTYPE)
        if _SEED_DTYPE != np.uint64:  # a big-endian machine: the kernel reads native words
            seed = seed.astype(np.uint64)
        # Small masks (every round of a comparison draws some) skip the TF op dispatch, which cost more than
        # the keystream itself; large ones use the kernel, which shards across cores.  Same words either way.
        if math.prod(shape) < _PRG_KERNEL_MIN_SIZE:
            return ops.prg_uniform_numpy(seed, list(shape))
        return as_array(ops.prg_uniform(seed, list(shape)))

    def zero_share(self, label: str, shape: list[int]) -> np.ndarray:
        """This party's term of a three-way additive sharing of zero."""
        return rsub(self.prg(self.i, label, shape), self.prg(self.i + 1, label, shape))

    def zero_share_xor(self, label: str, shape: list[int]) -> np.ndarray:
        return bxor(self.prg(self.i, label, shape), self.prg(self.i + 1, label, shape))
