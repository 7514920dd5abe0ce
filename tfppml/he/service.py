"""Encrypted inference served from its own process: the "ckks" worker service and its driver.

A model owner registers a compiled `HEModel` (plaintext weights as arrays, the layer structure as JSON; never
pickle, nothing secret) at a worker started with `--service ckks`, and opens serving periods with a quota of input
rows (a `tfppml.serving.ServingPeriod`, the same as MPC serving's: a query of a batch of 100 rows spends 100, and a
model that declares its batch size accepts queries of exactly that many rows).
A client sends its *public* context (serialized without the secret key) and its encrypted input; the worker runs
the program on the ciphertexts and returns the encrypted output, which only the client can decrypt.

What the worker holds: the owners' plaintext programs, and a small cache of clients' public contexts (so that a
client sends its keys once, not with every query). A serialized context that carries a secret key is refused
before it is parsed, and every context is checked again after parsing: the serving process never holds a secret
key, so it could not decrypt anything even if it tried (`MissingKeyError`).

Operations (request meta "op"; the caller is the TLS identity, never a field of the message):

- "register" (anyone; the caller becomes the owner, an existing name of another owner is refused): meta
  "name" and "program" (see `program_to_wire`), tensors = the program's weights.
- "serve" / "stop" / "status" (owner only): open a serving period of meta "num_requests" input rows (refused
  while one is open: stop it first) / end it (queries already admitted finish) / read {"serving", "quota",
  "started", "served"} (rows; see `tfppml.serving`).
- "info" (anyone): input/output sizes, depth and the CKKS parameters a client's key set needs, per layout.
- "query" (anyone, while serving): meta "name", "context_id" (sha256 of the serialized public context); tensors
  "input" (serialized CipherTensor, uint8) and, unless the worker already holds that context for this caller,
  "context" (serialized public context, uint8). Returns tensor "output" (serialized CipherTensor). The query
  spends one row of the quota per encrypted input row: shape (b, input_dim) spends b, a single vector
  (input_dim,) spends 1, any leading axes all count.
- "contexts" (anyone): what the worker holds for the caller: [{"context_id", "key_id", "has_secret_key"}].

Example:
    >>> cluster = tfppml.Cluster(tfppml.Worker("127.0.0.1:0"), service="ckks").start()    # doctest: +SKIP
    >>> owner = CKKSServing(cluster, "model_owner")                                      # doctest: +SKIP
    >>> owner.register("mlp", compile_model(keras_model)); owner.serve("mlp", 10)  # 10 rows  # doctest: +SKIP
    >>> client = CKKSServing(cluster, "client")                                          # doctest: +SKIP
    >>> ctx = CKKSContext(**client.info("mlp")["context_parameters"]["vector"])           # doctest: +SKIP
    >>> y = ctx.decrypt(client.query("mlp", ctx, ctx.encrypt(x)))                         # doctest: +SKIP
"""

from __future__ import annotations

import collections
import hashlib
import re
import struct
import threading
from typing import Any, Mapping

import numpy as np

from tfppml.errors import PolicyDenied, ProtocolError
from tfppml.he.ckks import LAYOUTS, CipherTensor, CKKSContext
from tfppml.he.model import HEModel
from tfppml.serving import ServingPeriod

__all__ = [
    "CKKSService",
    "CKKSServing",
    "context_id",
    "make_service",
    "program_from_wire",
    "program_to_wire",
    "serialized_context_has_secret_key",
]

WIRE_FORMAT = "tfppml.he.HEModel/1"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_MAX_STEPS = 256
_MAX_POLY_DEGREE = 64
_DEFAULT_MAX_CONTEXTS = 8  # public contexts cached by the worker (least recently used goes first)
_DEFAULT_QUERY_TIMEOUT = 300.0

# Header of a serialized context (cc/he/cipher_tensor.cc, Context::Serialize): magic "TFPPMLHE", u32 format
# version, u32 kind (1 = context), f64 scale, 2 x u64 key id, u32 flags (bit 0 = secret key), little endian.
_MAGIC = b"TFPPMLHE"
_KIND_CONTEXT = 1
_FLAG_SECRET_KEY = 1
_HEADER = struct.Struct("<8sIIdQQI")


def serialized_context_has_secret_key(data: bytes) -> bool:
    """Whether serialized context bytes declare a secret key, read from the header without parsing any key.

    Args:
        data: `CKKSContext.serialize(...)` output.

    Returns:
        True if the secret-key flag is set.

    Raises:
        ValueError: if `data` is too short or is not a serialized tfppml context.

    Example:
        >>> ctx = CKKSContext(galois_steps=[])                                   # doctest: +SKIP
        >>> serialized_context_has_secret_key(ctx.public_context().serialize())  # doctest: +SKIP
        False
    """
    if len(data) < _HEADER.size:
        raise ValueError(
            f"argument `context` must be a serialized tfppml.he context, got {len(data)} bytes (less than its "
            f"{_HEADER.size}-byte header)"
        )
    magic, _version, kind, _scale, _id0, _id1, flags = _HEADER.unpack_from(data)
    if magic != _MAGIC or kind != _KIND_CONTEXT:
        raise ValueError(
            "argument `context` must be a serialized tfppml.he context (CKKSContext.public_context().serialize()), "
            f"got data starting with {bytes(data[:12])!r}"
        )
    return bool(flags & _FLAG_SECRET_KEY)


def context_id(data: bytes) -> str:
    """The id under which a worker caches a serialized public context: its SHA-256, hex."""
    return hashlib.sha256(data).hexdigest()


# -- the program on the wire ------------------------------------------------------------------------------


def program_to_wire(program: HEModel) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An `HEModel` as JSON structure plus named float64 arrays (what "register" sends; no pickle).

    Args:
        program: the compiled model.

    Returns:
        `(structure, tensors)`: structure {"format", "input_dim", "output_dim", "batch_size" (int or None: the
        declared batch size), "steps": [{"kind": "matmul" | "add", "tensor": name} | {"kind": "square"} |
        {"kind": "poly", "coeffs": [...]}]}.

    Raises:
        TypeError: if `program` is not an HEModel.

    Example:
        >>> structure, tensors = program_to_wire(compile_model(model))           # doctest: +SKIP
        >>> program_from_wire(structure, tensors).depth == compile_model(model).depth   # doctest: +SKIP
        True
    """
    if not isinstance(program, HEModel):
        raise TypeError(f"program_to_wire: argument `program` must be an HEModel, got {type(program).__name__}")
    steps: list[dict[str, Any]] = []
    tensors: dict[str, np.ndarray] = {}
    for index, step in enumerate(program.steps):
        kind = step[0]
        if kind in ("matmul", "add"):
            name = f"{kind}{index}"
            tensors[name] = np.ascontiguousarray(step[1], dtype=np.float64)
            steps.append({"kind": kind, "tensor": name})
        elif kind == "square":
            steps.append({"kind": "square"})
        elif kind == "poly":
            steps.append({"kind": "poly", "coeffs": [float(c) for c in np.asarray(step[1]).reshape(-1)]})
        else:
            raise ValueError(f"program_to_wire: step {index} has unknown kind {kind!r}")
    structure = {
        "format": WIRE_FORMAT,
        "input_dim": int(program.input_dim),
        "output_dim": int(program.output_dim),
        "batch_size": None if program.batch_size is None else int(program.batch_size),
        "steps": steps,
    }
    return structure, tensors


def _int_field(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an int in [{low}, {high}], got {value!r:.100}")
    return value


def program_from_wire(structure: Any, tensors: Mapping[str, np.ndarray]) -> HEModel:
    """Checks and rebuilds what `program_to_wire` made (on the worker: the data comes from the network).

    Args:
        structure: the JSON structure.
        tensors: the named weight arrays.

    Returns:
        The HEModel.

    Raises:
        ValueError: naming the first malformed field, step or tensor (unknown kind, wrong shape or dtype,
            non-finite values, unused or missing tensors, widths that do not chain).
    """
    if not isinstance(structure, dict) or structure.get("format") != WIRE_FORMAT:
        raise ValueError(
            f"argument `program` must be a dict with format {WIRE_FORMAT!r}, got "
            f"{structure.get('format') if isinstance(structure, dict) else type(structure).__name__!r}"
        )
    input_dim = _int_field(structure.get("input_dim"), "program input_dim", 1, 1 << 20)
    output_dim = _int_field(structure.get("output_dim"), "program output_dim", 1, 1 << 20)
    batch_size = structure.get("batch_size")
    if batch_size is not None:
        batch_size = _int_field(batch_size, "program batch_size", 1, 1 << 20)
    raw_steps = structure.get("steps")
    if not isinstance(raw_steps, list) or not 1 <= len(raw_steps) <= _MAX_STEPS:
        raise ValueError(f"program steps must be a list of 1..{_MAX_STEPS} steps, got {type(raw_steps).__name__}")
    steps: list = []
    used: set[str] = set()
    width = input_dim
    saw_matmul = False
    for index, raw in enumerate(raw_steps):
        kind = raw.get("kind") if isinstance(raw, dict) else None
        if kind in ("matmul", "add"):
            name = raw.get("tensor")
            if not isinstance(name, str) or name not in tensors or name in used:
                raise ValueError(f"program step {index} ({kind}) names tensor {name!r}, which was not sent once")
            used.add(name)
            array = tensors[name]
            if array.dtype != np.float64 or not np.all(np.isfinite(array)):
                raise ValueError(f"program tensor {name!r} must hold finite float64 values, got dtype {array.dtype}")
            if kind == "matmul":
                if array.ndim != 2 or array.shape[0] != width or array.shape[1] < 1:
                    raise ValueError(
                        f"program step {index} (matmul) needs a [{width}, m] matrix, got shape {array.shape}"
                    )
                width = int(array.shape[1])
                saw_matmul = True
            elif array.shape != (width,):
                raise ValueError(f"program step {index} (add) needs a bias of shape ({width},), got {array.shape}")
            steps.append((kind, np.array(array, dtype=np.float64)))
        elif kind == "square":
            steps.append(("square",))
        elif kind == "poly":
            coeffs = raw.get("coeffs")
            if (
                not isinstance(coeffs, list)
                or not 1 <= len(coeffs) <= _MAX_POLY_DEGREE + 1
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coeffs)
                or not np.all(np.isfinite(np.asarray(coeffs, dtype=np.float64)))
            ):
                raise ValueError(
                    f"program step {index} (poly) needs 1..{_MAX_POLY_DEGREE + 1} finite coefficients, got "
                    f"{coeffs!r:.100}"
                )
            steps.append(("poly", np.asarray(coeffs, dtype=np.float64)))
        else:
            raise ValueError(
                f"program step {index} has kind {kind!r}; expected one of 'matmul', 'add', 'square', 'poly'"
            )
    if not saw_matmul:
        raise ValueError("a program needs at least one matmul step")
    if width != output_dim:
        raise ValueError(f"program output_dim is {output_dim} but its steps end with width {width}")
    unused = sorted(set(tensors) - used)
    if unused:
        raise ValueError(f"program tensors {unused} are not used by any step")
    return HEModel(steps=steps, input_dim=input_dim, output_dim=output_dim, batch_size=batch_size)


# -- the worker side --------------------------------------------------------------------------------------


class _Served:
    """A registered program, its owner and its serving period (counted in input rows)."""

    def __init__(self, name: str, owner: str, program: HEModel) -> None:
        self.owner = owner
        self.program = program
        self.period = ServingPeriod(name, batch_size=program.batch_size)


def _rows(shape: tuple[int, ...]) -> int:
    """Input rows of an encrypted input: every axis but the last (features) counts; a vector is one row."""
    rows = 1
    for dim in shape[:-1]:
        rows *= int(dim)
    return rows


def _bytes_tensor(tensors: Mapping[str, np.ndarray], key: str) -> bytes:
    array = tensors.get(key)
    if array is None:
        raise ValueError(f"query: tensor {key!r} is missing; expected the serialized bytes as a uint8 array")
    if array.dtype != np.uint8 or array.ndim != 1:
        raise ValueError(
            f"query: tensor {key!r} must be a 1-D uint8 array of serialized bytes, got {array.dtype} of shape "
            f"{array.shape}"
        )
    return array.tobytes()


def _name_arg(meta: Mapping[str, Any], op: str) -> str:
    name = meta.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{op}: meta 'name' must be a model name of 1-64 letters, digits, '_.-', got {name!r:.80}")
    return name


class CKKSService:
    """The "ckks" worker service (see the module docstring for its operations).

    Args:
        name: this worker's party name.
        max_contexts: public contexts kept (least recently used are dropped first).

    Example:
        >>> service = CKKSService("server0")
        >>> service.handle("model_owner", {"op": "serve", "name": "none", "num_requests": 1}, {})
        Traceback (most recent call last):
        ...
        LookupError: serve: no model named 'none' is registered
    """

    def __init__(self, name: str, max_contexts: int = _DEFAULT_MAX_CONTEXTS) -> None:
        if isinstance(max_contexts, bool) or not isinstance(max_contexts, int) or max_contexts < 1:
            raise ValueError(f"CKKSService: argument `max_contexts` must be a positive int, got {max_contexts!r}")
        self.name = name
        self._max_contexts = max_contexts
        self._lock = threading.Lock()
        self._models: dict[str, _Served] = {}
        # (caller, context_id) -> public CKKSContext
        self._contexts: collections.OrderedDict[tuple[str, str], CKKSContext] = collections.OrderedDict()

    # -- inspection (tests, operators) -------------------------------------------------------------------
    def held_contexts(self) -> list[CKKSContext]:
        """Every context this service holds (all public: a secret key is refused on arrival)."""
        with self._lock:
            return list(self._contexts.values())

    def handle(
        self, caller: str, meta: dict[str, Any], tensors: dict[str, np.ndarray]
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Answers one call (see the module docstring).

        Raises:
            PolicyDenied: a non-owner controls a model, or a query's rows differ from the declared batch size.
            tfppml.errors.QuotaExceeded: (a PolicyDenied) a query arrives outside a serving period or has more
                rows than are left of its quota.
            ProtocolError: "serve" while a serving period is open.
            LookupError: no such model; an unknown "context_id" (send the context itself).
            ValueError: malformed requests, a context with a secret key, a context whose depth is too small,
                ciphertexts of another key set or of the wrong shape.
        """
        op = meta.get("op")
        handler = {
            "register": self._register,
            "serve": self._serve,
            "stop": self._stop,
            "status": self._status,
            "info": self._info,
            "query": self._query,
            "contexts": self._list_contexts,
        }.get(op)
        if handler is None:
            raise ValueError(
                f"ckks service: meta 'op' must be one of register, serve, stop, status, info, query, contexts; "
                f"got {op!r:.80}"
            )
        return handler(caller, meta, tensors)

    def _owned(self, caller: str, meta: Mapping[str, Any], op: str) -> tuple[str, _Served]:
        name = _name_arg(meta, op)
        served = self._models.get(name)
        if served is None:
            raise LookupError(f"{op}: no model named {name!r} is registered")
        if served.owner != caller:
            raise PolicyDenied(f"{op}: only the owner of model {name!r} may control it, not {caller!r}")
        return name, served

    def _register(self, caller: str, meta: dict, tensors: dict) -> tuple[dict, dict]:
        name = _name_arg(meta, "register")
        program = program_from_wire(meta.get("program"), tensors)
        with self._lock:
            existing = self._models.get(name)
            if existing is not None and existing.owner != caller:
                raise PolicyDenied(f"register: model {name!r} belongs to another identity")
            self._models[name] = _Served(name, caller, program)
        return {"depth": program.depth}, {}

    def _serve(self, caller: str, meta: dict, tensors: dict) -> tuple[dict, dict]:
        with self._lock:
            _, served = self._owned(caller, meta, "serve")
        served.period.open(meta.get("num_requests"))
        return {}, {}

    def _stop(self, caller: str, meta: dict, tensors: dict) -> tuple[dict, dict]:
        with self._lock:
            _, served = self._owned(caller, meta, "stop")
        return {"served": served.period.stop()}, {}

    def _status(self, caller: str, meta: dict, tensors: dict) -> tuple[dict, dict]:
        with self._lock:
            _, served = self._owned(caller, meta, "status")
        return served.period.status(), {}

    def _info(self, caller: str, meta: dict, tensors: dict) -> tuple[dict, dict]:
        name = _name_arg(meta, "info")
        with self._lock:
            served = self._models.get(name)
        if served is None:
            raise LookupError(f"info: no model named {name!r} is registered")
        program = served.program
        return {
            "input_dim": program.input_dim,
            "output_dim": program.output_dim,
            "depth": program.depth,
            "context_parameters": {layout: program.context_parameters(layout) for layout in LAYOUTS},
        }, {}

    def _list_contexts(self, caller: str, meta: dict, tensors: dict) -> tuple[dict, dict]:
        with self._lock:
            held = [(cid, ctx) for (who, cid), ctx in self._contexts.items() if who == caller]
        return {
            "contexts": [
                {"context_id": cid, "key_id": f"{ctx.key_id:032x}", "has_secret_key": ctx.has_secret_key}
                for cid, ctx in held
            ]
        }, {}

    def _context(self, caller: str, meta: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> CKKSContext:
        if "context" in tensors:
            data = _bytes_tensor(tensors, "context")
            # Refused before any key is parsed: the secret key never becomes an object in this process.
            if serialized_context_has_secret_key(data):
                raise ValueError(
                    "query: tensor 'context' holds a secret key; the ckks service only accepts public contexts "
                    "(send context.public_context().serialize(), keep the secret key on the client)"
                )
            context = CKKSContext.deserialize(data)
            if context.has_secret_key:  # defence in depth: never keep a context that could decrypt
                raise ValueError("query: tensor 'context' holds a secret key; only public contexts are accepted")
            cid = context_id(data)
            with self._lock:
                self._contexts[(caller, cid)] = context
                self._contexts.move_to_end((caller, cid))
                while len(self._contexts) > self._max_contexts:
                    self._contexts.popitem(last=False)
            return context
        cid = meta.get("context_id")
        if not isinstance(cid, str):
            raise ValueError("query: send tensor 'context' (a serialized public context) or meta 'context_id'")
        with self._lock:
            context = self._contexts.get((caller, cid))
            if context is not None:
                self._contexts.move_to_end((caller, cid))
        if context is None:
            raise LookupError(
                f"query: unknown context_id {cid[:16]!r}... for {caller!r}; send the serialized public context "
                "as tensor 'context'"
            )
        return context

    def _query(self, caller: str, meta: dict, tensors: dict) -> tuple[dict, dict]:
        name = _name_arg(meta, "query")
        with self._lock:
            served = self._models.get(name)
        if served is None:
            raise LookupError(f"query: no model named {name!r} is registered")
        program = served.program
        context = self._context(caller, meta, tensors)
        if context.depth < program.depth:
            raise ValueError(
                f"query: the context has multiplicative depth {context.depth}, model {name!r} needs "
                f"{program.depth}; make the key set with the parameters of its 'info'"
            )
        cipher = context.deserialize_cipher(_bytes_tensor(tensors, "input"))
        if cipher.shape[-1] != program.input_dim or (cipher.layout == "batch" and len(cipher.shape) < 2):
            raise ValueError(
                f"query: tensor 'input' must encrypt shape (batch, {program.input_dim}), got {cipher.shape} "
                f"({cipher.layout} layout)"
            )
        # Admitted only once the input is known to be well formed: garbage does not use up the quota. The quota
        # counts the encrypted rows, so one query of many rows cannot stand for one request.
        with served.period.admit(_rows(cipher.shape)):
            output = program(cipher).serialize()
        return {}, {"output": np.frombuffer(output, dtype=np.uint8)}


def make_service(name: str, config: Any, channel: Any, options: Mapping[str, str] | None = None) -> CKKSService:
    """Factory of the "ckks" worker service (`tfppml worker --service ckks [--option max_contexts=N]`).

    Args:
        name: this worker's party name.
        config: the cluster configuration (unused: the service talks to drivers only).
        channel: the peer channel (unused).
        options: "max_contexts" = public contexts to cache (default 8).

    Returns:
        The service.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - {"max_contexts"})
    if unknown:
        raise ValueError(f"ckks service: unknown options {unknown}; expected 'max_contexts'")
    raw = options.get("max_contexts", str(_DEFAULT_MAX_CONTEXTS))
    try:
        max_contexts = int(raw)
    except ValueError:
        raise ValueError(f"ckks service: option max_contexts must be an int, got {raw!r}") from None
    return CKKSService(name, max_contexts=max_contexts)


# -- the driver side --------------------------------------------------------------------------------------


class CKKSServing:
    """A driver's connection to a "ckks" worker, as a model owner or as a client.

    Its `serve` / `stop_serving` / `program_status` mirror `tfppml.mpc.ABY3`'s, so the Keras hooks drive both
    alike.

    Args:
        cluster: a started `tfppml.Cluster` whose worker runs the "ckks" service (or anything with `remote`).
        identity: this driver's certificate identity.
        worker: the worker's party name (default: the cluster's first worker).
        timeout: seconds a query may take.

    Raises:
        TypeError: if `cluster` is not a cluster.

    Example:
        >>> owner = CKKSServing(cluster, "model_owner")                    # doctest: +SKIP
        >>> owner.register("mlp", compile_model(model)); owner.serve("mlp", 3)  # doctest: +SKIP
    """

    def __init__(
        self, cluster: Any, identity: str, worker: str | None = None, timeout: float = _DEFAULT_QUERY_TIMEOUT
    ) -> None:
        if cluster is None or not hasattr(cluster, "remote") or not hasattr(cluster, "names"):
            raise TypeError(
                f"CKKSServing: argument `cluster` must be a started tfppml.Cluster running the 'ckks' service, got "
                f"{type(cluster).__name__}"
            )
        names = list(cluster.names)
        worker = names[0] if worker is None else worker
        if worker not in names:
            raise ValueError(f"CKKSServing: argument `worker` must be one of {names}, got {worker!r}")
        self.worker = worker
        self.identity = identity
        self._remote = cluster.remote(worker, identity)
        self._timeout = float(timeout)
        self._sent: set[str] = set()  # context ids the worker was sent (it may have dropped them since)
        self._public: dict[int, tuple[bytes, str]] = {}  # key id -> (serialized public context, its id)

    def close(self) -> None:
        """Closes the connection."""
        self._remote.close()

    def _call(self, meta: dict, tensors: dict | None = None) -> tuple[dict, dict]:
        return self._remote.call(meta, tensors, timeout=self._timeout)

    def register(self, name: str, program: HEModel) -> int:
        """Registers `program` as `name` (this identity becomes its owner); returns its depth."""
        structure, tensors = program_to_wire(program)
        return int(self._call({"op": "register", "name": name, "program": structure}, tensors)[0]["depth"])

    def serve(self, name: str, num_requests: int) -> None:
        """Opens a serving period of `num_requests` input rows (owner only; refused while one is open)."""
        if isinstance(num_requests, bool) or not isinstance(num_requests, int) or num_requests < 1:
            raise ValueError(
                f"CKKSServing.serve: argument `num_requests` must be a positive int, got {num_requests!r}"
            )
        self._call({"op": "serve", "name": name, "num_requests": num_requests})

    def stop_serving(self, name: str) -> int:
        """Ends the serving period (queries already admitted finish); returns how many rows were answered."""
        return int(self._call({"op": "stop", "name": name})[0]["served"])

    def program_status(self, name: str) -> dict[str, Any]:
        """{"serving": bool, "quota": rows or None, "started", "served": rows} of the serving period (owner only)."""
        meta = self._call({"op": "status", "name": name})[0]
        quota = meta["quota"]
        return {
            "serving": bool(meta["serving"]),
            "quota": None if quota is None else int(quota),
            "started": int(meta["started"]),
            "served": int(meta["served"]),
        }

    def info(self, name: str) -> dict[str, Any]:
        """{"input_dim", "output_dim", "depth", "context_parameters": {layout: CKKSContext kwargs}}."""
        return self._call({"op": "info", "name": name})[0]

    def held_contexts(self) -> list[dict[str, Any]]:
        """What the worker holds for this identity: [{"context_id", "key_id", "has_secret_key"}]."""
        return self._call({"op": "contexts"})[0]["contexts"]

    def query(self, name: str, context: CKKSContext, cipher: CipherTensor) -> CipherTensor:
        """Sends `cipher` (and, the first time, `context`'s public part) and returns the encrypted output.

        Args:
            name: the served model.
            context: the client's own context (the secret key is stripped before anything is sent).
            cipher: the encrypted input, shape (batch, input_dim).

        Returns:
            The encrypted output under `context`'s key set.

        Raises:
            PolicyDenied: the model is not serving, fewer rows than `cipher` has are left of its quota (each row
                of the batch counts), or `cipher`'s rows differ from the model's declared batch size.
            tfppml.net.transport.RemoteError: the worker refused the input (its type and message inside).
        """
        if not isinstance(context, CKKSContext):
            raise TypeError(
                f"CKKSServing.query: argument `context` must be a CKKSContext, got {type(context).__name__}"
            )
        if not isinstance(cipher, CipherTensor):
            raise TypeError(
                f"CKKSServing.query: argument `cipher` must be a CipherTensor, got {type(cipher).__name__}"
            )
        cached = self._public.get(context.key_id)
        if cached is None:
            public = context.public_context().serialize()
            cached = self._public[context.key_id] = (public, context_id(public))
        public, cid = cached
        payload = {"input": np.frombuffer(cipher.serialize(), dtype=np.uint8)}
        meta = {"op": "query", "name": name, "context_id": cid}
        if cid in self._sent:
            try:
                _, reply = self._call(meta, payload)
                return context.deserialize_cipher(_bytes_tensor(reply, "output"))
            except ProtocolError as err:
                if getattr(err, "remote_type", None) != "LookupError" or "context_id" not in str(err):
                    raise
                self._sent.discard(cid)  # the worker dropped it: send it again
        _, reply = self._call(meta, {**payload, "context": np.frombuffer(public, dtype=np.uint8)})
        self._sent.add(cid)
        return context.deserialize_cipher(_bytes_tensor(reply, "output"))
