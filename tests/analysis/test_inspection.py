import torch

from sae_helpers import create_sae
from sae_helpers.analysis import contexts_html, top_activating_contexts
from sae_helpers.data.cache import build_cache
from tests.data.test_cache import INFO, D, fake_activations, windows


def test_top_contexts_are_the_largest_activations_with_their_tokens(tmp_path):
    build_cache(tmp_path / "c", windows(), fake_activations, 150, INFO, batch_size=3, shard_tokens=40, progress=False)
    sae = create_sae("relu", D, 3)
    with torch.no_grad():
        sae.W_enc[0, 0] = 1.0  # latent 0 reads the token id stored in dimension 0
        sae.W_enc[1, 1] = 1.0  # latent 1 reads the position
        sae.b_enc[2] = -1.0    # latent 2 never fires
    table = top_activating_contexts(sae, tmp_path / "c", [0, 1, 2], k=5, batch_size=16, progress=False)
    zero = table[table.latent == 0]
    assert list(zero["rank"]) == [0, 1, 2, 3, 4]
    assert list(zero["activation"]) == sorted(zero["activation"], reverse=True)
    assert (zero["activation"] == zero["token_id"].astype(float)).all()
    all_tokens = torch.stack(list(windows()))[:, 1:].reshape(-1)[:150]
    assert list(zero["activation"]) == sorted(all_tokens.float().tolist(), reverse=True)[:5]
    for _, row in zero.iterrows():
        assert row["context_ids"][row["focus"]] == row["token_id"]
    assert (table[table.latent == 1]["activation"] == 7.0).all()  # the last position of a window
    assert (table.latent == 2).sum() == 0

    class Tok:
        def decode(self, ids):
            return f"<{ids[0]}>"

    page = contexts_html(table, Tok())
    assert page.count("<tr>") == 1 + 10 and "<b style" in page
