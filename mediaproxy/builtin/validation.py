"""
Validation, first in the check chain (``tryfirst``): what the parsed parameters cannot check one
by one, and the source path.

* **Parameters**: the built-in ones are typed and ranged again whatever route (or plugin) built
  the request: ``w``/``h`` whole numbers within ``limits.max_width``/``max_height``, their
  product within ``limits.max_output_pixels``, ``q`` 1-100, ``trim`` 0-100, ``fit``, ``pos``,
  ``fmt`` among the known names, ``bg`` an RGBA tuple, ``enlarge`` a bool. With
  ``validation.unknown_params = "reject"`` a query parameter no plugin registered is a 400.
* **Output budget**: when one axis is free or ``enlarge`` is on, the output size depends on the
  source. The transform checks it from the header before decoding (``TransformSpec``'s
  ``max_output_*``, with the memory budget that counts every frame, see docs/imaging.md); a
  transform step (order 1, before the resize) checks it again on the decoded image against the
  per-axis caps and the pixel budget, and the intermediate image of ``cover`` against
  ``limits.max_source_pixels`` (for what only the pixels say: a plugin's earlier step).
* **Path**: at most ``validation.max_path_length`` bytes; absolute; no NUL, backslash or control
  character; no ``..`` segment (also not as ``..;``); no scheme or ``//`` host; no
  percent-encoded ``.``, ``/``, ``\\`` or control character left after the route's decoding,
  however deep (``%2e``, ``%252e``: double encoding; a literal ``%`` followed by anything else
  is part of a storage name), nor an encoded ``/`` or ``\\`` in the raw path of a non-compat
  route; nothing that NFKC-normalises into one of those (full-width dots);
  and under an allowed prefix (``validation.source_prefixes``, else ``routes.prefixes``), else
  404.

Every refusal is a :class:`~mediaproxy.models.Rejection` naming the parameter (the pipeline
answers it as a 400 JSON and counts it as a ``rejection`` event).
"""

from __future__ import annotations

import re
import unicodedata

import attrs

from .. import hookimpl
from ..imaging import ImageError, fit_geometry
from ..memo import MAX_KEY_CHARS, Memo
from ..models import Rejection, TransformStep
from ..parsing import FITS, FORMATS, POSITIONS
from ..runtime import Runtime
from .routing import unsafe_path_reason
from .signing import EXPIRES_PARAM, SIG_PARAM

#: Query parameters that belong to signed URLs, never unknown.
RESERVED_PARAMS = frozenset({SIG_PARAM, EXPIRES_PARAM})

#: A ``.``, ``/``, ``\\`` or control character still encoded after the route's decoding, at any
#: depth (``%2e``, ``%252e``, ``%25252e``...): what a backend that decodes once more would
#: turn into a separator. A literal ``%`` followed by anything else (``100%.jpg``,
#: ``100%25.jpg``, ``a%41.jpg``) is part of a storage name and is fetched as it is.
_ENCODED_UNSAFE = re.compile(r"%(?:25)*(2e|2f|5c|[01][0-9a-f]|7f)", re.IGNORECASE)
_RAW_SEPARATOR = re.compile(r"%(2f|5c)", re.IGNORECASE)
_CANONICAL_POSITIONS = frozenset(POSITIONS.values())
_FORMAT_NAMES = frozenset(FORMATS.values())


def path_refusal(path: str, max_length: int) -> str | None:
    """Why a decoded source path may not be fetched, or None."""
    if len(path) > max_length or len(path.encode("utf-8", "surrogatepass")) > max_length:
        return f"the path is longer than {max_length} bytes"
    reason = _form_refusal(path)
    if reason:
        return reason
    if not path.isascii():
        normal = unicodedata.normalize("NFKC", path)
        if normal != path and _form_refusal(normal):
            return "the path contains characters that normalise to a separator or '..'"
    return None


def _form_refusal(path: str) -> str | None:
    reason = unsafe_path_reason(path)
    if reason:
        return reason
    if "%" in path and _ENCODED_UNSAFE.search(path):
        return "the path contains an encoded separator, dot or control character"
    if ".." in path and any(s.split(";", 1)[0] == ".." for s in path.split("/")):
        return "the path must not contain '..' segments"
    return None


def _bad(parameter: str, message: str) -> Rejection:
    return Rejection(400, "invalid_parameter", message, parameter=parameter)


def _whole(value, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def param_refusal(params, limits) -> Rejection | None:
    """Type and range of the built-in parameters present in ``params``."""
    w, h = params.get("w", 0), params.get("h", 0)
    if not _whole(w, 0, limits.max_width):
        return _bad("w", f"width must be a whole number from 0 to {limits.max_width}")
    if not _whole(h, 0, limits.max_height):
        return _bad("h", f"height must be a whole number from 0 to {limits.max_height}")
    if w * h > limits.max_output_pixels:
        return _bad("w", f"width x height must be at most {limits.max_output_pixels} pixels")
    q = params.get("q", 80)
    if not _whole(q, 1, 100):
        return _bad("q", "quality must be a whole number from 1 to 100")
    if not _whole(params.get("trim", 0), 0, 100):
        return _bad("trim", "trim must be a whole number from 0 to 100")
    if params.get("fit", "inside") not in FITS:
        return _bad("fit", f"fit must be one of {', '.join(FITS)}")
    if params.get("pos", "centre") not in _CANONICAL_POSITIONS:
        return _bad("pos", "position is not a known position")
    fmt = params.get("fmt")
    if fmt is not None and fmt not in _FORMAT_NAMES:
        return _bad("fmt", "format is not a known format")
    bg = params.get("bg", (255, 255, 255, 255))
    if not (isinstance(bg, tuple) and len(bg) == 4 and all(_whole(c, 0, 255) for c in bg)):
        return _bad("bg", "background must be an RGBA colour")
    if type(params.get("enlarge", False)) is not bool:
        return _bad("enlarge", "enlarge must be 0 or 1")
    return None


class OverBudget(ImageError):
    """The output (or the intermediate image of a ``cover``) would be over the budget."""

    status = 400
    error = "output_too_large"


def _budget_step(max_width: int, max_height: int, max_pixels: int):
    def check_output(image, spec, request):
        geometry = fit_geometry(image.width, image.height, spec)
        if (geometry.width > max_width or geometry.height > max_height
                or geometry.width * geometry.height > max_pixels):
            raise OverBudget(
                f"The output would be {geometry.width}x{geometry.height} pixels; at most "
                f"{max_width}x{max_height} and {max_pixels} pixels are allowed.")
        if geometry.scaled_width * geometry.scaled_height > spec.max_source_pixels:
            raise OverBudget("The transform would need an image larger than allowed.")
        return image
    return check_output


@attrs.define(eq=False)
class Validator:
    """The validation plugin instance: settings copied from the config, refreshed on reload."""

    runtime: Runtime
    known: frozenset = frozenset()
    prefixes: tuple = ()
    reject_unknown: bool = False
    max_path_length: int = 1024
    _step: TransformStep | None = None
    #: (route, source path, raw path, query) -> (params, refusal or None): what
    #: :meth:`check` answered, a pure function of those, the configuration and the registered
    #: parameters (:mod:`mediaproxy.memo`); emptied on reload
    _memo: Memo = attrs.field(factory=Memo)

    def __attrs_post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        config = self.runtime.config
        self.known = frozenset(
            spelling for name, param in self.runtime.params.items()
            for spelling in (name, *param.aliases)) | RESERVED_PARAMS
        self.prefixes = tuple(config.validation.source_prefixes or config.routes.prefixes)
        self.reject_unknown = config.validation.unknown_params == "reject"
        self.max_path_length = config.validation.max_path_length
        limits = config.limits
        self._step = TransformStep(
            "output_budget",
            _budget_step(limits.max_width, limits.max_height, limits.max_output_pixels), order=1)
        self._memo.clear()

    @hookimpl(tryfirst=True)
    def mediaproxy_check_request(self, image_request, request, runtime):
        """:meth:`check`, remembered by URI for the same parsed parameters (the object the
        route's memo gives again for the same URI; any other object is checked afresh)."""
        path, query = request.path, request.query
        size = len(path) + len(image_request.source_path)
        for name, value in query:
            size += len(name) + len(value) + 2
        if size > MAX_KEY_CHARS:
            return self.check(image_request, request, runtime)
        table = self._memo.table(runtime.config, runtime.params,
                                 getattr(runtime.pm, "generation", None))
        key = (image_request.route, image_request.source_path, path, query)
        found = table.get(key)
        if found is not None and found[0] is image_request.params:
            return found[1]
        refusal = self.check(image_request, request, runtime)
        self._memo.put(key, (image_request.params, refusal))
        return refusal

    def check(self, image_request, request, runtime) -> Rejection | None:
        """The path, the parameters' types and ranges, and (``validation.unknown_params =
        "reject"``) the query's names."""
        path = image_request.source_path
        reason = path_refusal(path, self.max_path_length)
        raw = request.path
        if (reason is None and image_request.route != "compat" and "%" in raw
                and _RAW_SEPARATOR.search(raw)):
            reason = "the path contains an encoded separator"
        if reason:
            return Rejection(400, "invalid_path", reason, parameter="path")
        if not path.startswith(self.prefixes) and not image_request.source_origin:
            return Rejection(404, "not_found", "no image route serves this path",
                             parameter="path")
        rejection = param_refusal(image_request.params, runtime.config.limits)
        if rejection is not None:
            return rejection
        if self.reject_unknown:
            for name, _ in request.query:
                if name not in self.known:
                    return Rejection(400, "unknown_parameter",
                                     f"{name!r} is not a parameter of this service",
                                     parameter=name[:64])
        return None

    @hookimpl
    def mediaproxy_transform_steps(self, image_request, spec):
        if spec.width and spec.height and not spec.enlarge and spec.fit != "outside":
            return None   # bounded by the box, already checked against the budget
        return [self._step]

    @hookimpl
    def mediaproxy_config_reloaded(self, runtime, old, new):
        self.refresh()


@hookimpl
def mediaproxy_configure(runtime):
    runtime.pm.register(Validator(runtime), "mediaproxy.builtin.validation.instance")
