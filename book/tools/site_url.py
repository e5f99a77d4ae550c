"""The published site's address, derived from the repository's (``repository.url`` in _config.yml)."""

from __future__ import annotations

import re

__all__ = ["pages_url"]

_GITHUB = re.compile(r"^https://github\.com/(?P<owner>[A-Za-z0-9-]+)/(?P<repo>[A-Za-z0-9._-]+?)(?:\.git)?/?$")


def pages_url(repository_url: str) -> str:
    """GitHub Pages' address of a repository: ``https://OWNER.github.io/REPO/``.

    A repository named ``OWNER.github.io`` is served at the root, ``https://OWNER.github.io/``.
    """
    match = _GITHUB.match(repository_url.strip())
    if match is None:
        raise ValueError(
            f"_config.yml: repository.url {repository_url!r} is not https://github.com/OWNER/REPO; "
            "set html.baseurl in _config.yml to the site's address by hand")
    owner, repo = match["owner"], match["repo"]
    if repo.lower() == f"{owner.lower()}.github.io":
        return f"https://{owner.lower()}.github.io/"
    return f"https://{owner.lower()}.github.io/{repo}/"
