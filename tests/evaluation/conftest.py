"""The tiny model, its tokens and the no-network guard of tests/models, for the splicing tests."""

from tests.models.conftest import model, no_network, tokens  # noqa: F401 (fixtures)
