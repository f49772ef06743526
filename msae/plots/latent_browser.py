"""A latent browser: one self-contained HTML page per tree view, and a static picture of a tree.

The page needs no server and no network: the data sits in the page as JSON, the script is plain
JavaScript. On the left, the tree (roots with children first, largest first; click the triangle
to open a node); on the right, the latent clicked: its frequency, the histogram of its
activations, the tokens it promotes and suppresses, and its top contexts with every token
shaded by the latent's activation. :func:`notebook_view` shows the same page inside Jupyter.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from ..evals.latent_trees import Node

CONTEXT_DIGITS = 2  # activations in the page: enough to shade and read, small enough to keep pages light
PAGE_CONTEXTS = 5  # top contexts per latent in the page (the cached summaries keep more)


def _act(value: float) -> float | int:
    return 0 if value == 0 else round(value, CONTEXT_DIGITS)


def browser_payload(view, max_contexts: int = PAGE_CONTEXTS) -> dict[str, Any]:
    """The page's data: a string table (every token text once) and one record per node, with at
    most ``max_contexts`` top contexts each."""
    tree = view.tree
    strings: dict[str, int] = {}

    def sid(text: str) -> int:
        return strings.setdefault(text, len(strings))

    nodes = {}
    for key, summary in view.summaries.items():
        node = Node.from_key(key)
        children = [c.key for c in tree.children(node)]
        top = summary["contexts"][0] if summary["contexts"] else None
        nodes[key] = {
            "latent": summary["latent"], "level": node.level, "group": summary.get("group"),
            "frequency": summary["frequency"], "max": summary["max"],
            "histogram": summary["histogram"]["counts"],
            "peak": top["tokens"][top["peak"]] if top else "",
            "contexts": [[[sid(t) for t in c["tokens"]], [_act(a) for a in c["acts"]], c["peak"]]
                         for c in summary["contexts"][:max_contexts]],
            "promoted": [[sid(t), round(v, 3)] for t, v in summary.get("promoted", [])],
            "suppressed": [[sid(t), round(v, 3)] for t, v in summary.get("suppressed", [])],
            "children": children,
            "descendants": len(tree.descendants(node)),
            "parent": tree.parent[node].key if node in tree.parent else None,
            "score": round(tree.score[node], 4) if node in tree.score else None,
        }
    roots = sorted((r.key for r in tree.roots() if r.key in nodes), key=lambda k: (-nodes[k]["descendants"], nodes[k]["latent"]))
    return {"title": view.title, "threshold": tree.threshold, "level_names": tree.level_names,
            "n_tokens": view.n_tokens, "strings": list(strings), "nodes": nodes, "roots": roots}


def browser_html(view) -> str:
    """The whole page as a string."""
    data = json.dumps(browser_payload(view), separators=(",", ":"), ensure_ascii=True).replace("</", "<\\/")
    return (_PAGE.replace("__TITLE__", html.escape(view.title)).replace("__DATA__", data))


def save_browser(view, path: str | Path) -> Path:
    """Write the page to ``path`` (``.html``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(browser_html(view), encoding="utf-8")
    return path


def find_chromium() -> str | None:
    """The path of an installed Chromium (or Chrome), or None."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def screenshot(page: str | Path, png: str | Path, node: str | None = None, size: tuple[int, int] = (1280, 760),
               browser: str | None = None) -> Path:
    """A PNG of the page (opened at ``node``, a key "level:latent", when given) taken by headless
    Chromium; raises ``FileNotFoundError`` when no Chromium is installed."""
    import subprocess
    import tempfile

    browser = browser or find_chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found (Debian: apt-get install chromium)")
    url = Path(page).resolve().as_uri() + (f"#latent={node}" if node else "")
    png = Path(png).resolve()
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", f"--screenshot={png}", url],
                       check=True, capture_output=True, timeout=120)
    return png


def notebook_view(view, height: int = 620):
    """The page inside a Jupyter output (an iframe, so its script and style stay its own)."""
    from IPython.display import HTML

    page = html.escape(browser_html(view), quote=True)
    return HTML(f'<iframe srcdoc="{page}" style="width:100%;height:{height}px;border:1px solid #ccc"></iframe>')


def plot_tree(view, root: Node, ax=None, max_children: int = 5, max_depth: int = 3, label_chars: int = 12) -> plt.Figure:
    """One tree drawn top-down: each node is its latent, its top context's peak token and
    (below the root) its similarity to its parent. At most ``max_children`` children per node,
    the most similar first, and ``max_depth`` levels below the root."""
    tree = view.tree
    fig = ax.figure if ax is not None else plt.figure(figsize=(11, 4.5))
    ax = ax or fig.add_subplot()
    positions: dict[Node, tuple[float, int]] = {}
    next_leaf = [0.0]

    def place(node: Node, depth: int) -> float:
        kids = tree.children(node)[:max_children] if depth < max_depth else []
        if not kids:
            x = next_leaf[0]
            next_leaf[0] += 1
        else:
            xs = [place(k, depth + 1) for k in kids]
            x = (xs[0] + xs[-1]) / 2
        positions[node] = (x, depth)
        return x

    place(root, 0)
    for node, (x, depth) in positions.items():
        if node in tree.parent and tree.parent[node] in positions:
            px, pdepth = positions[tree.parent[node]]
            ax.plot([px, x], [-pdepth, -depth], color="#999", lw=1, zorder=1)
    for node, (x, depth) in positions.items():
        summary = view.summaries.get(node.key, {})
        top = summary.get("contexts") or [None]
        token = top[0]["tokens"][top[0]["peak"]] if top[0] else ""
        token = repr(token.strip() or token)[1:-1][:label_chars]
        score = f"\nsim {tree.score[node]:.2f}" if node in tree.score else ""
        ax.text(x, -depth, f"#{node.latent}\n“{token}”{score}", ha="center", va="center", fontsize=7,
                bbox={"boxstyle": "round,pad=0.3", "fc": "#fff5e6" if depth == 0 else "white", "ec": "#c60"}, zorder=2)
    names = tree.level_names
    for depth in range(max(d for _, d in positions.values()) + 1):
        level = root.level + depth
        ax.text(-0.7, -depth, names[level] if level < len(names) else f"level {level}", ha="right", va="center",
                fontsize=8, color="#555")
    ax.set_xlim(-1.0 - 0.12 * max(next_leaf[0], 4), max(next_leaf[0], 1) - 0.3)
    ax.set_ylim(-max(d for _, d in positions.values()) - 0.6, 0.6)
    ax.axis("off")
    ax.set_title(f"{view.title}: latent {root.latent} and its descendants", fontsize=10)
    return fig


def plot_largest_trees(views: dict, **kwargs) -> plt.Figure:
    """One panel per view: its root with the most descendants, drawn by :func:`plot_tree`."""
    fig, axes = plt.subplots(len(views), 1, figsize=(11, 3.6 * len(views)), squeeze=False)
    for ax, view in zip(axes[:, 0], views.values()):
        largest = view.largest_roots(1)
        if largest:
            plot_tree(view, largest[0], ax=ax, **kwargs)
        else:
            ax.axis("off")
            ax.set_title(f"{view.title}: no latent attached to a parent", fontsize=10)
    fig.tight_layout()
    return fig


_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;display:flex;height:100vh;color:#222}
#left{width:38%;overflow:auto;border-right:1px solid #ddd;padding:8px 10px;box-sizing:border-box}
#right{flex:1;overflow:auto;padding:10px 16px;box-sizing:border-box}
h1{font-size:15px;margin:4px 0 6px} .meta{font-size:12px;color:#555;margin-bottom:8px}
ul.tree{list-style:none;padding-left:16px;margin:0} ul.tree.top{padding-left:0}
li{margin:1px 0;white-space:nowrap;font-size:13px}
.toggle{display:inline-block;width:14px;cursor:pointer;color:#777;user-select:none}
.node{cursor:pointer;padding:0 3px;border-radius:3px} .node:hover{background:#eef}
.node.selected{background:#fde2b8} .count{color:#888;font-size:11px} .sim{color:#06c;font-size:11px}
.tok{white-space:pre;border-radius:2px;font-family:ui-monospace,monospace;font-size:12px}
.peak{outline:1px solid #c60} .context{margin:3px 0;padding:3px;border-bottom:1px solid #f0f0f0;line-height:1.7}
table.logits{border-collapse:collapse;font-size:12px;margin-right:18px} table.logits td{padding:1px 6px}
.pos{color:#070} .neg{color:#a00} .flex{display:flex;align-items:flex-start;gap:12px}
a.jump{color:#06c;cursor:pointer;text-decoration:underline}
</style></head><body>
<div id="left"><h1>__TITLE__</h1><div class="meta" id="meta"></div>
<label class="meta"><input type="checkbox" id="lonely"> show roots without children</label>
<ul class="tree top" id="tree"></ul></div>
<div id="right"><div id="detail" class="meta">Click a latent on the left.</div></div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const S = D.strings;
function el(tag, cls, text){const e=document.createElement(tag); if(cls) e.className=cls; if(text!==undefined) e.textContent=text; return e;}
function show(t){return JSON.stringify(t).slice(1,-1);}
function label(key){
  const n = D.nodes[key];
  const span = el("span", "node", "#" + n.latent + " " + show(n.peak));
  span.dataset.key = key;
  span.addEventListener("click", () => select(key));
  return span;
}
function item(key){
  const n = D.nodes[key], li = el("li");
  li.dataset.key = key;
  const toggle = el("span", "toggle", n.children.length ? "\u25b8" : "");
  li.appendChild(toggle); li.appendChild(label(key));
  if(n.children.length) li.appendChild(el("span", "count", " " + n.descendants + " below"));
  if(n.score !== null) li.appendChild(el("span", "sim", " sim " + n.score.toFixed(2)));
  if(n.children.length){
    toggle.addEventListener("click", () => {
      let ul = li.querySelector(":scope > ul");
      if(ul){ ul.hidden = !ul.hidden; }
      else { ul = el("ul", "tree"); n.children.forEach(c => ul.appendChild(item(c))); li.appendChild(ul); }
      toggle.textContent = ul.hidden ? "\u25b8" : "\u25be";
    });
  }
  return li;
}
function renderTree(){
  const ul = document.getElementById("tree"); ul.textContent = "";
  const all = document.getElementById("lonely").checked;
  D.roots.filter(k => all || D.nodes[k].children.length).forEach(k => ul.appendChild(item(k)));
}
function histogram(counts){
  const w = 240, h = 60, max = Math.max(1, ...counts), bw = w / counts.length;
  const ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h + 14);
  counts.forEach((c, i) => {
    const r = document.createElementNS(ns, "rect"), bh = c ? Math.max(1, h * Math.log1p(c) / Math.log1p(max)) : 0;
    r.setAttribute("x", i * bw + 1); r.setAttribute("width", bw - 2); r.setAttribute("y", h - bh); r.setAttribute("height", bh);
    r.setAttribute("fill", "#e08a2c"); svg.appendChild(r);
  });
  const t = document.createElementNS(ns, "text"); t.setAttribute("x", 0); t.setAttribute("y", h + 12);
  t.setAttribute("font-size", "10"); t.textContent = "0 to max activation (log counts)"; svg.appendChild(t);
  return svg;
}
function logits(title, pairs, cls){
  const t = el("table", "logits"), head = el("tr"); head.appendChild(el("th", "", title)); t.appendChild(head);
  pairs.forEach(([s, v]) => { const r = el("tr"); r.appendChild(el("td", "tok", show(S[s]))); r.appendChild(el("td", cls, v.toFixed(2))); t.appendChild(r); });
  return t;
}
function select(key){
  const n = D.nodes[key];
  document.querySelectorAll(".node.selected").forEach(e => e.classList.remove("selected"));
  document.querySelectorAll('.node[data-key="' + key + '"]').forEach(e => e.classList.add("selected"));
  const d = document.getElementById("detail"); d.textContent = ""; d.className = "";
  d.appendChild(el("h1", "", "Latent " + n.latent + " (" + (D.level_names[n.level] || "level " + n.level) + ")"));
  const meta = el("div", "meta");
  meta.textContent = "fires on " + (100 * n.frequency).toFixed(3) + "% of " + D.n_tokens.toLocaleString() +
    " tokens; max activation " + n.max.toFixed(2) + (n.group ? "; Matryoshka group " + n.group : "");
  d.appendChild(meta);
  if(n.parent){
    const p = el("div", "meta"); p.appendChild(document.createTextNode("parent: "));
    const a = el("a", "jump", "#" + D.nodes[n.parent].latent + " " + show(D.nodes[n.parent].peak)); a.addEventListener("click", () => select(n.parent));
    p.appendChild(a); p.appendChild(document.createTextNode(" (similarity " + n.score.toFixed(2) + ")")); d.appendChild(p);
  }
  if(n.children.length){
    const c = el("div", "meta"); c.appendChild(document.createTextNode("children: "));
    n.children.forEach((k, i) => { const a = el("a", "jump", "#" + D.nodes[k].latent); a.addEventListener("click", () => select(k)); if(i) c.appendChild(document.createTextNode(", ")); c.appendChild(a); });
    d.appendChild(c);
  }
  const row = el("div", "flex"); row.appendChild(histogram(n.histogram));
  if(n.promoted.length) row.appendChild(logits("promotes", n.promoted, "pos"));
  if(n.suppressed.length) row.appendChild(logits("suppresses", n.suppressed, "neg"));
  d.appendChild(row);
  d.appendChild(el("h1", "", "Top contexts"));
  if(!n.contexts.length) d.appendChild(el("div", "meta", "never fires on the sample"));
  n.contexts.forEach(([toks, acts, peak]) => {
    const c = el("div", "context");
    toks.forEach((s, i) => {
      const t = el("span", "tok" + (i === peak ? " peak" : ""), S[s].replace(/\n/g, "\u21b5"));
      const a = n.max > 0 ? acts[i] / n.max : 0;
      if(a > 0) t.style.background = "rgba(224,138,44," + (0.15 + 0.85 * a).toFixed(3) + ")";
      t.title = acts[i].toFixed(3); c.appendChild(t);
    });
    d.appendChild(c);
  });
}
document.getElementById("meta").textContent = D.roots.length + " roots; a latent hangs under the latent of the level above it" +
  " most similar to it (directed masked cosine >= " + D.threshold + "); levels: " + D.level_names.join(", ");
function reveal(key){
  // open the tree down to ``key`` and select it (a page opened as page.html#latent=<level>:<latent>)
  const path = []; for(let k = key; k; k = D.nodes[k].parent) path.unshift(k);
  if(!D.nodes[path[0]].children.length && !document.getElementById("lonely").checked){
    document.getElementById("lonely").checked = true; renderTree();
  }
  let scope = document.getElementById("tree");
  for(const k of path.slice(0, -1)){
    const li = scope.querySelector(':scope > li[data-key="' + k + '"]');
    const ul = li.querySelector(":scope > ul");
    if(!ul || ul.hidden) li.querySelector(".toggle").click();
    scope = li.querySelector(":scope > ul");
  }
  select(key);
  const target = document.querySelector('.node[data-key="' + key + '"]');
  if(target) target.scrollIntoView({block: "center"});
}
document.getElementById("lonely").addEventListener("change", renderTree);
renderTree();
const wanted = new URLSearchParams(location.hash.slice(1)).get("latent");
if(wanted && D.nodes[wanted]) reveal(wanted);
</script></body></html>
"""
