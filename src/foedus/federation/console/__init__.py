"""The federation's web console, served by the coordinator under ``/console/`` (docs/console.md).

* :mod:`.sessions`: a user's token exchanged for a session cookie, and the CSRF token that
  goes with it;
* :mod:`.views`: what each page shows, read from the coordinator's store;
* :mod:`.routes`: the pages, the login, the model download and the middleware that lets the
  pages' scripts call the coordinator's own HTTP API with the session instead of a token;
* ``templates/`` (Jinja2) and ``static/`` (plain CSS and JavaScript, and uPlot for the charts,
  vendored with its licence: no CDN, no build step).
"""

from __future__ import annotations

from foedus.federation.console.routes import mount

__all__ = ["mount"]
