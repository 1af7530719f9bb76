"""
Decode, transform and encode images with Pillow: pure functions, bytes in, bytes out.

Everything here runs in the transform thread pool. Nothing touches the reactor, the plugin
manager or a logger, and there is no module state besides an LRU cache of placeholders, so
any number of threads may call :func:`render` at once. The one shared object a render may be
given is a :class:`~.decoded.DecodedCache` (``cache=``): decoded sources kept, under a lock,
for the next sizes of the same source (:mod:`.decoded`).

The package's modules, each with one job: :mod:`.errors` (:class:`ImageError` and its
kinds), :mod:`.formats` (format tables, :func:`output_format`), :mod:`.decode` (the decode
guard and budgets, :func:`probe`, orientation, shrink-on-load), :mod:`.geometry`
(:func:`fit_geometry`, gravity), :mod:`.crop` (trim, smart crops), :mod:`.colour` (working
modes, sRGB, flattening), :mod:`.encode` (encoding), :mod:`.rendering` (:func:`render`),
:mod:`.placeholders` (:func:`placeholder`), :mod:`.negotiation` (the output format for
``fmt=auto``), :mod:`.scans` (a JPEG's scan count), :mod:`.frames` (frame sizes from a file's
structure) and :mod:`.budget` (the deadline, the memory estimate; docs/imaging.md). This module re-exports the public names; import them from here.

The pipeline of :func:`render`
------------------------------
1. **Open** the bytes with Pillow, restricted to the allowed formats (JPEG, PNG, WebP, GIF,
   AVIF, HEIF when a plugin provides it, TIFF, BMP); read the header only.
2. **Check limits** from the header: frames > ``spec.max_frames`` gives 422
   ``too_many_frames``; width x height x frames > ``spec.max_source_pixels`` gives 422
   ``image_too_large``. Pillow's own guard (``Image.MAX_IMAGE_PIXELS``, left at the
   application's setting) stays on as a backstop and is reported the same way. Then, still
   before decoding: a JPEG with more than ``spec.max_jpeg_scans`` scans gives 422
   ``too_many_scans``; an output over ``spec.max_output_*`` 400 ``output_too_large``; and
   :func:`estimate_bytes` over ``spec.max_transform_bytes`` 422 ``over_memory_budget`` (the
   frames' real sizes are checked again as they are reached). ``spec.deadline`` is checked
   from here to the encode: past it, :class:`TransformTimeout` (503).
3. **Decode**. A JPEG is decoded at 1/2, 1/4 or 1/8 scale (``draft``) when the output is
   small enough: the decoded image is never smaller than the scaled source times
   ``spec.reducing_gap``, so quality matches a full decode followed by ``reduce``. Truncated
   or corrupt data is an error (``LOAD_TRUNCATED_IMAGES`` is never set): 422 ``corrupt_image``.
   With a decoded cache, a still is decoded once for many sizes: the cache's pixels are used
   at this render's scale (reduced from a finer decode), and a large source's first decode is
   one scale step finer, for the larger sizes that follow (:mod:`.decoded`).
4. **Orient** by the EXIF Orientation tag (all eight values, the same table as
   ``ImageOps.exif_transpose``), and bring the pixels to 8-bit L, LA, RGB or RGBA
   (16-bit samples are divided by 256; palette transparency becomes alpha).
5. **Steps** from plugins with ``order`` < 500 (:class:`~mediaproxy.models.TransformStep`).
   They see the decoded, oriented image, already converted to sRGB. A JPEG may have been
   decoded at reduced scale, so a step that works in source pixels must scale by
   ``image.size`` against the source size.
6. **Resize** (the built-in step, order 500): trim, then fit (see below), then convert to sRGB
   when no earlier step needed it (converting after shrinking is much cheaper), then pad
   (``contain``).
7. **Steps** with ``order`` >= 500, in order (a step of order 500 runs after the resize).
8. **Encode** without any metadata: no EXIF, ICC profile, XMP or comment is written. An
   image with alpha is flattened onto ``spec.background`` for JPEG; PNG, WebP, AVIF, TIFF
   keep alpha; GIF keeps binary transparency (alpha < 128 is transparent).

Geometry (sharp's semantics)
----------------------------
``spec.width``/``spec.height`` 0 leave that axis free: with one axis given, every fit keeps
the aspect ratio from that axis; with both 0 the size is kept (after ``trim``, which applies alone too) and the image
re-encoded. The geometry is always decided on the source's own size (after EXIF orientation):
a JPEG decoded at reduced scale (step 3) only changes the pixels resampled, never the output
size.

``inside``
    Keep the aspect ratio and fit within the box (both sides <= the box).
``outside``
    Keep the aspect ratio and cover the box (both sides >= the box); nothing is cropped.
``cover``
    Keep the aspect ratio, fill the box exactly and crop the overflow at ``spec.position``.
``contain``
    Keep the aspect ratio, fit within the box and pad to exactly the box with
    ``spec.background``, the image placed at ``spec.position``.
``fill``
    Stretch to exactly the box.

Without ``spec.enlarge`` (the default) nothing is ever scaled up:

* ``inside``, ``outside`` and one-axis requests cap the scale factor at 1, so a source
  smaller than the request is returned at its own size;
* ``cover``, ``contain`` and ``fill`` keep the *shape* of the box: a box that does not fit
  inside the source is shrunk, keeping its aspect ratio, until it does, and the mode is
  applied to that box. ``cover`` of a 100x100 source into 300x200 gives 100x67.

Positions: ``centre``, ``north``, ``south``, ``east``, ``west``, ``northeast``,
``northwest``, ``southeast``, ``southwest`` choose the crop window of ``cover`` and the
placement of ``contain``. ``entropy`` (the window whose greyscale histogram has the highest
Shannon entropy) and ``attention`` (the window with the most edges, saturated colour and
skin tones) choose the crop window of ``cover`` from the picture itself; for ``contain``
they centre the image.

Trim (``spec.trim`` 1-100) removes the border that differs from the top-left pixel by at
most ``trim * 2.55`` in every channel, before fitting.

Animation
---------
Animated GIF, WebP, PNG (APNG) and AVIF sources keep every frame, each transformed the same
way (the trim box and smart crop are decided on the first frame), with their durations and
loop count, when the output is GIF, WebP or PNG (APNG). JPEG, AVIF and TIFF outputs get the
first frame only, unless ``spec.animated_format`` names the format animations take instead
(``fmt=auto`` sets it: WebP when the client accepts it, else GIF; see :mod:`.negotiation`). The frame and pixel limits always count every frame of the source.
"""

from .decode import ImageInfo, probe
from .errors import (
    BudgetExceeded, CorruptImage, ImageError, ImageTooLarge, InvalidTransform, OutputTooLarge,
    OverMemoryBudget, TooManyFrames, TooManyScans, TransformTimeout, UnsupportedFormat,
    UnsupportedImage,
)
from .formats import CONTENT_TYPES, output_format, split_format
from .geometry import FITS, POSITIONS, Geometry, fit_geometry
from .placeholders import placeholder
from .rendering import RESIZE_ORDER, Estimate, estimate, estimate_bytes, render

__all__ = [
    "CONTENT_TYPES", "FITS", "POSITIONS", "RESIZE_ORDER",
    "Geometry", "ImageInfo",
    "ImageError", "UnsupportedImage", "CorruptImage", "UnsupportedFormat", "ImageTooLarge",
    "TooManyFrames", "InvalidTransform", "OutputTooLarge",
    "BudgetExceeded", "TooManyScans", "OverMemoryBudget", "TransformTimeout",
    "Estimate", "estimate", "estimate_bytes", "fit_geometry", "output_format", "placeholder", "probe", "render", "split_format",
]
