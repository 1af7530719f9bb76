"""
An example third-party mediaproxy plugin, installed with pip and found through the
``mediaproxy`` entry-point group. It shows the three most common extension points:

* a transform parameter (``?grayscale=1``) that enters the cache key;
* a transform step that runs in the thread pool after the resize;
* a response header on every image response (``X-Example-Plugin: grayscale=0|1``).

Disable it without uninstalling: ``MEDIAPROXY_PLUGINS__DISABLED=example``.
"""

from mediaproxy import Param, TransformStep, hookimpl, parse_bool


def _grayscale(image, spec, request):
    # Runs in the transform thread pool: pure Pillow work only.
    alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
    gray = image.convert("L").convert("RGB")
    if alpha is not None:
        gray.putalpha(alpha)
    return gray


@hookimpl
def mediaproxy_params(config):
    return [Param("grayscale", parse_bool, False, key=lambda value: "1" if value else None,
                  aliases=("gray",), help="1 turns the image to shades of grey.")]


@hookimpl
def mediaproxy_transform_steps(image_request, spec):
    if image_request.params.get("grayscale"):
        return [TransformStep("grayscale", _grayscale, order=600)]
    return []


@hookimpl
def mediaproxy_response_headers(image_request, response, request, runtime):
    if image_request is None:
        return []
    flag = "1" if image_request.params.get("grayscale") else "0"
    return [("X-Example-Plugin", f"grayscale={flag}")]
