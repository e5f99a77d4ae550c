import pytest

from book.tools.site_url import pages_url


@pytest.mark.parametrize(("repository", "site"), [
    ("https://github.com/sae-book/sae-book", "https://sae-book.github.io/sae-book/"),
    ("https://github.com/Some-Org/my.book.git", "https://some-org.github.io/my.book/"),
    ("https://github.com/owner/repo/", "https://owner.github.io/repo/"),
    ("https://github.com/Owner/owner.github.io", "https://owner.github.io/"),
])
def test_pages_url(repository: str, site: str) -> None:
    assert pages_url(repository) == site


@pytest.mark.parametrize("repository", ["https://gitlab.com/a/b", "github.com/a/b", "https://github.com/a", ""])
def test_pages_url_rejects_other_hosts(repository: str) -> None:
    with pytest.raises(ValueError, match="html.baseurl"):
        pages_url(repository)
