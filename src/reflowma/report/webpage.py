"""The report's Markdown as self-contained web pages (``tables/all.html``, ``claims.html``):
what ``snakemake --report`` shows on its page (it shows HTML, and offers other text files only
as downloads). CommonMark with GitHub tables (markdown-it-py), one small style sheet, no
scripts and nothing fetched from elsewhere."""

from __future__ import annotations

import html

from markdown_it import MarkdownIt

STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f2f2f2; padding: 0 3px; }
h1, h2, h3 { margin-top: 1.4em; }
li { margin: 0.2em 0; }
"""

_MD = MarkdownIt("commonmark", {"html": False}).enable("table")  # raw HTML shown as text


def page(markdown_text: str, title: str) -> str:
    """An HTML page of ``markdown_text`` under ``title``."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + _MD.render(markdown_text) + "</body>\n</html>\n")
