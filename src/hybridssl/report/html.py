"""A minimal HTML builder for self-contained pages: every text escaped, images inline, no external resources.

`Markup` marks strings that are already HTML; everything else passed to these helpers is escaped, so
a config value or a file name can never inject markup into a report.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Sequence
from typing import Any


class Markup(str):
    """A string of trusted HTML (built by these helpers)."""


def esc(value: Any) -> Markup:
    return value if isinstance(value, Markup) else Markup(html.escape(str(value), quote=True))


def tag(name: str, content: Any = "", **attrs: Any) -> Markup:
    """<name attrs>content</name>; attribute names use _ for - and a trailing _ for Python keywords."""
    rendered = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None)
    body = "".join(esc(c) for c in content) if isinstance(content, list) else esc(content)
    return Markup(f"<{name}{rendered}>{body}</{name}>")


def png_img(png: bytes, alt: str, **attrs: Any) -> Markup:
    data = base64.b64encode(png).decode("ascii")
    return Markup(f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}"' + "".join(f' {k}="{esc(v)}"' for k, v in attrs.items()) + ">")


def figure(png: bytes, caption: str, class_: str | None = None) -> Markup:
    return tag("figure", [png_img(png, caption), tag("figcaption", caption)], class_=class_)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], class_: str | None = None) -> Markup:
    head = tag("thead", tag("tr", [tag("th", h) for h in headers]))
    body = tag("tbody", [tag("tr", [tag("td", c) for c in row]) for row in rows])
    return tag("table", [head, body], class_=class_)


def details(summary: str, content: Any) -> Markup:
    return tag("details", [tag("summary", summary), content])


def pre(text: str) -> Markup:
    return tag("pre", text)


def json_block(value: Any) -> Markup:
    return pre(json.dumps(value, indent=2, sort_keys=False, default=str))


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 76rem;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.88rem; }
th, td { border: 1px solid #d0d0d0; padding: 0.25rem 0.55rem; text-align: left; vertical-align: top; }
th { background: #f2f2f4; } tr:nth-child(even) td { background: #fafafa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f8; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; max-height: 28rem; }
figure { display: inline-block; margin: 0.5rem 1rem 0.5rem 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #e3e3e3; }
figure.narrow { max-width: 34rem; } figure.narrow img { width: 100%; }
code { background: #f2f2f4; padding: 0.1rem 0.3rem; font-size: 0.82rem; word-break: break-all; }
figcaption { font-size: 0.82rem; color: #555; }
.note { color: #8a5300; font-size: 0.88rem; }
.meta { color: #555; font-size: 0.88rem; }
.ngrid { display: grid; gap: 0.6rem; margin: 0.8rem 0; }
.nq { display: flex; gap: 0.8rem; align-items: flex-start; border-top: 1px solid #eee; padding-top: 0.5rem; }
.nsets { display: grid; gap: 0.35rem; } .nrow { display: flex; flex-wrap: wrap; gap: 0.3rem; align-items: flex-start; }
.nset { flex: none; width: 8rem; font-size: 0.8rem; overflow-wrap: anywhere; }
figure.nb { margin: 0; flex: none; width: min-content; text-align: center; }
figure.nb img { display: block; max-width: none; border: 3px solid #e3e3e3; image-rendering: pixelated; }
figure.nb figcaption { font-size: 0.72rem; overflow-wrap: anywhere; } figure.nb figcaption span { display: block; }
figure.same img { border-color: #2e9d49; } figure.other img { border-color: #d0412f; } figure.query img { border-color: #333; }
.same .mark { color: #1f7a37; } .other .mark { color: #b0301f; }
.pairsets { display: grid; grid-template-columns: repeat(auto-fit, minmax(16rem, 1fr)); gap: 1rem; }
.pair { display: flex; gap: 0.4rem; align-items: flex-start; margin: 0.4rem 0; } .pair p { margin: 0; font-size: 0.8rem; }
"""


def page(title: str, body: Sequence[Any]) -> str:
    """A complete HTML5 document; the only style is inline, nothing is fetched."""
    head = (
        '<meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; style-src \'unsafe-inline\'">'
        f"<title>{esc(title)}</title><style>{STYLE}</style>"
    )
    return f"<!DOCTYPE html>\n<html lang=\"en\"><head>{head}</head><body>{''.join(esc(b) for b in body)}</body></html>\n"
