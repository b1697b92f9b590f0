"""`orstream web`: the live overlay, caption, latency and questions in a browser.

One subscriber to the pipeline (hub.py) feeds any number of browser tabs over WebSocket
(server.py): each frame is JPEG-encoded once, only when a tab wants one, and a tab is sent
the newest frame whenever its page has acknowledged enough of the last ones (tabs.py), so a
slow or stalled tab costs the pipeline and the other tabs nothing. The page (static/) draws
each frame with createImageBitmap and measures capture-to-painted itself. Loopback only,
unless TLS and a token (access.py).
"""

from orstream.pipeline.web.server import WebOptions, serve

__all__ = ["WebOptions", "serve"]
