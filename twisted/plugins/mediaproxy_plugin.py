# The twistd plugin: `twistd -n mediaproxy [--config FILE] [--listen ENDPOINT ...]`.
# No __init__.py beside this file: twisted/plugins is a namespace Twisted extends itself.
from twisted.application.service import ServiceMaker

mediaproxy = ServiceMaker(
    "mediaproxy", "mediaproxy.tap", "Image edge proxy in front of a web backend", "mediaproxy")
