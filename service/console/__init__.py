"""The web console at ``/ui``: static HTML, CSS and ES modules served by the app itself.

The page is a client of the public API like any other: it holds one API key (in
``sessionStorage``) and has exactly that key's rights. Nothing here reads the gallery.
"""

from service.console.router import router

__all__ = ["router"]
