"""The latent browser page in a real headless Chromium: it loads without console errors, the
tree renders, clicking opens nodes and shows a latent's contexts, and a link to a latent opens
the tree down to it. Skipped, saying so, where Chromium is not installed (`make test` installs
Debian's when it can)."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from chromium import Chromium
from msae.evals.latent_summaries import SummaryConfig, TextSample, summarise_latents
from msae.evals.latent_trees import Node, matryoshka_tree
from msae.experiments.latent_trees import TreeView
from msae.plots.latent_browser import PAGE_CONTEXTS, find_chromium, save_browser, screenshot
from test_latent_trees import planted_levels

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium; make test installs it "
                             "when it can): the latent browser page was not tested in a browser")

# token texts that must reach the page as text, not markup
AWKWARD = ["</script>", "<b>bold</b>", "&amp;", '"quoted"', "\n", " tab\t", "ü", "'"]


def planted_view(seed) -> TreeView:
    rng = np.random.default_rng(seed)
    levels, _ = planted_levels(rng, n_tokens=3000, depth=3)
    codes = np.concatenate(levels, axis=1)
    n_ctx, ctx = 100, 30
    tokens = torch.from_numpy(rng.integers(0, 40, size=(n_ctx, ctx)))
    keep = torch.ones(n_ctx, ctx, dtype=torch.bool)
    sample = TextSample(tokens, keep, torch.zeros(n_ctx * ctx, 1))
    strings = {i: AWKWARD[i] if i < len(AWKWARD) else f" w{i}" for i in range(40)}
    ends = list(np.cumsum([level.shape[1] for level in levels]))
    tree = matryoshka_tree(sp.csr_matrix(codes), ends)
    groups = [g + 1 for g, level in enumerate(levels) for _ in range(level.shape[1])]
    logits = tuple(np.tile(np.arange(3), (codes.shape[1], 1)) if i % 2 == 0 else np.ones((codes.shape[1], 3))
                   for i in range(4))
    summaries = summarise_latents(sp.csr_matrix(codes), sample, range(codes.shape[1]), strings,
                                  SummaryConfig(n_contexts=PAGE_CONTEXTS + 2), logits, groups)
    keys = {r.key for r in tree.roots()} | {n.key for n in tree.parent}
    return TreeView("Planted <tree>", tree, {k: summaries[Node.from_key(k).latent] for k in keys}, ["x"] * 3, sample.n_tokens)


@pytest.fixture(scope="module")
def browser():
    chromium = Chromium(CHROMIUM)
    yield chromium
    chromium.close()


def test_page_loads_renders_and_clicks(tmp_path, seed, browser):
    view = planted_view(seed)
    page = save_browser(view, tmp_path / "tree.html")
    browser.open(page)
    assert browser.errors() == []
    assert browser.evaluate("document.title") == "Planted <tree>"
    with_children = [r for r in view.tree.roots() if view.tree.children(r)]
    assert browser.evaluate("document.querySelectorAll('#tree > li').length") == len(with_children)

    # open the largest root with a click on its triangle: its children appear, most similar first
    root = max(with_children, key=lambda r: (len(view.tree.descendants(r)), -r.latent))
    browser.click(f'#tree > li[data-key="{root.key}"] > .toggle')
    shown = browser.evaluate(f"""[...document.querySelectorAll('#tree > li[data-key="{root.key}"] > ul > li')].map(li => li.dataset.key)""")
    assert shown == [c.key for c in view.tree.children(root)]

    # click a child's name: the right pane shows that latent, its parent and its contexts
    child = view.tree.children(root)[0]
    browser.click(f'.node[data-key="{child.key}"]')
    assert browser.evaluate("document.querySelector('#detail h1').textContent") == f"Latent {child.latent} (group 2)"
    shown = min(len(view.summaries[child.key]["contexts"]), PAGE_CONTEXTS)
    assert browser.evaluate("document.querySelectorAll('#detail .context').length") == shown
    parent_text = browser.evaluate("document.querySelector('#detail a.jump').textContent")
    assert parent_text.startswith(f"#{root.latent} ")
    # token texts are shown as text: no element was made from one
    assert browser.evaluate("document.querySelectorAll('#detail b').length") == 0
    shown_tokens = browser.evaluate("[...document.querySelectorAll('#detail .context')[0].querySelectorAll('.tok')].map(t => t.textContent)")
    assert shown_tokens == [t.replace("\n", "\u21b5") for t in view.summaries[child.key]["contexts"][0]["tokens"]]
    assert browser.errors() == []

    # the parent link goes back up
    browser.click("#detail a.jump")
    assert browser.evaluate("document.querySelector('#detail h1').textContent") == f"Latent {root.latent} (group 1)"

    # roots without children appear on request
    browser.click("#lonely")
    assert browser.evaluate("document.querySelectorAll('#tree > li').length") == len(view.tree.roots())
    png = browser.screenshot(tmp_path / "page.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert browser.errors() == []


def test_a_link_opens_the_tree_down_to_a_latent(tmp_path, seed, browser):
    view = planted_view(seed)
    page = save_browser(view, tmp_path / "tree.html")
    grandchild = next(n for n in view.tree.parent if n.level == 2)
    browser.open(page, f"#latent={grandchild.key}")
    assert browser.errors() == []
    assert browser.evaluate("document.querySelector('.node.selected').dataset.key") == grandchild.key
    assert browser.evaluate("document.querySelector('#detail h1').textContent") == f"Latent {grandchild.latent} (group 3)"

    # the same link as a screenshot from the command line
    png = screenshot(page, tmp_path / "shot.png", node=grandchild.key, browser=CHROMIUM)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
