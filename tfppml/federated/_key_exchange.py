"""Helper process for :class:`tfppml.federated.FederatedTrainer`'s ``overlap_key_exchange``.

Run as ``python -m tfppml.federated._key_exchange``: reads pickled ``(num_clients, threshold, participants,
round_id, neighbours, mask_size)`` tuples (the positional arguments of ``mask_materials``) from stdin and
writes back, for each, the pickled result of
:func:`tfppml.federated.secure_agg.mask_materials` (or the exception it raised), until stdin closes.  The parent
is its only peer (two pipes, no socket), so when the parent exits or dies the helper reads end-of-file and
exits too.  Why a fresh interpreter rather than ``multiprocessing``: its "spawn" and "forkserver" start methods
re-import the parent's ``__main__`` (running any unguarded script code again), and "fork" is unsafe in a process
that runs TFF's gRPC threads.
"""

from __future__ import annotations

import pickle
import sys


def serve(inp=None, out=None) -> None:
    from tfppml.federated.secure_agg import mask_materials

    inp = sys.stdin.buffer if inp is None else inp
    out = sys.stdout.buffer if out is None else out
    while True:
        try:
            args = pickle.load(inp)
        except EOFError:
            return
        try:
            reply = ("ok", mask_materials(*args))
        except Exception as err:  # sent back and re-raised by the parent, with its type
            reply = ("error", err)
        pickle.dump(reply, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


if __name__ == "__main__":
    serve()
