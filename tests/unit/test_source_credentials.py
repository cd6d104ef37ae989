"""A token in a git source URL (``https://user:TOKEN@host/…``) reaches no log line, no source error
and so no ``/status``, history or notification: the URL is shown without its credentials."""

from __future__ import annotations

import io
import logging

import pytest

from reconciler.adapters.gitsource import GitCheckout, without_credentials
from reconciler.daemon.logs import ROOT, configure_logging
from reconciler.errors import SourceError

TOKEN = "ghp_s3cr3tT0ken"


def test_the_credentials_of_every_url_in_a_text_are_replaced():
    text = f"fetch https://ci:{TOKEN}@git.example.com/infra.git and ssh://git@host/x, not git@host:org/x"
    assert without_credentials(text) == (
        "fetch https://***@git.example.com/infra.git and ssh://***@host/x, not git@host:org/x"
    )


def test_a_failed_fetch_names_the_source_without_its_token(tmp_path):
    checkout = GitCheckout(f"https://ci:{TOKEN}@127.0.0.1:9/infra.git", "main", tmp_path / "clone")
    with pytest.raises(SourceError) as raised:
        checkout.update()
    assert TOKEN not in str(raised.value)
    assert str(raised.value).startswith("git https://***@127.0.0.1:9/infra.git (main): ")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_log_line_carries_a_urls_credentials(fmt):
    logger = logging.getLogger(ROOT)
    handlers, level = list(logger.handlers), logger.level
    stream = io.StringIO()
    try:
        configure_logging(stream, fmt=fmt)
        try:
            raise RuntimeError(f"cannot reach https://{TOKEN}@git.example.com/infra.git")
        except RuntimeError:
            logging.getLogger("virt_reconcile.daemon.loop").exception("fetch https://ci:%s@host/x", TOKEN)
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
    assert TOKEN not in stream.getvalue()
    assert "https://***@host/x" in stream.getvalue() and "https://***@git.example.com" in stream.getvalue()
