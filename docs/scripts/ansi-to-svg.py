#!/usr/bin/env python3
"""Draw a terminal capture with colours (`tmux capture-pane -e -p`) as an SVG.

Usage: docs/scripts/ansi-to-svg.py CAPTURE.ansi OUT.svg [COLUMNS ROWS]

Only what the capture holds is drawn: each cell's character with its foreground and
background colour (SGR 256-colour, true-colour, the 16 basic colours, bold, dim, reverse).
Block characters (full, half and eighth blocks, shades) are drawn as rectangles so the
attention map and the bars tile without gaps; every other character is text in a
monospace font. Python's standard library only.
"""
import sys
import unicodedata
from xml.sax.saxutils import escape

CW, CH = 8.4, 17.0  # cell size in px (a 14 px monospace font)
BASE16 = [
    (0, 0, 0), (205, 49, 49), (13, 188, 121), (229, 229, 16),
    (36, 114, 200), (188, 63, 188), (17, 168, 205), (229, 229, 229),
    (102, 102, 102), (241, 76, 76), (35, 209, 139), (245, 245, 67),
    (59, 142, 234), (214, 112, 214), (41, 184, 219), (255, 255, 255),
]
DEFAULT_FG, DEFAULT_BG = (220, 220, 220), (24, 24, 24)


def xterm256(n):
    if n < 16:
        return BASE16[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return (steps[n // 36], steps[(n // 6) % 6], steps[n % 6])
    g = 8 + 10 * (n - 232)
    return (g, g, g)


def hexc(c):
    return "#%02x%02x%02x" % c


def parse(text):
    """Returns rows of cells: (char, fg, bg, bold, dim)."""
    rows = []
    fg, bg, bold, dim, rev = None, None, False, False, False
    for line in text.split("\n"):
        cells = []
        i = 0
        while i < len(line):
            ch = line[i]
            if ch == "\x1b" and i + 1 < len(line) and line[i + 1] == "[":
                j = i + 2
                while j < len(line) and not line[j].isalpha():
                    j += 1
                if j < len(line) and line[j] == "m":
                    params = [int(p) if p else 0 for p in line[i + 2:j].split(";")]
                    k = 0
                    while k < len(params):
                        p = params[k]
                        if p == 0:
                            fg, bg, bold, dim, rev = None, None, False, False, False
                        elif p == 1:
                            bold = True
                        elif p == 2:
                            dim = True
                        elif p == 22:
                            bold = dim = False
                        elif p == 7:
                            rev = True
                        elif p == 27:
                            rev = False
                        elif p in (38, 48) and k + 1 < len(params):
                            if params[k + 1] == 5 and k + 2 < len(params):
                                c = xterm256(params[k + 2])
                                k += 2
                            elif params[k + 1] == 2 and k + 4 < len(params):
                                c = tuple(params[k + 2:k + 5])
                                k += 4
                            else:
                                c = None
                            if p == 38:
                                fg = c
                            else:
                                bg = c
                        elif p == 39:
                            fg = None
                        elif p == 49:
                            bg = None
                        elif 30 <= p <= 37:
                            fg = BASE16[p - 30]
                        elif 90 <= p <= 97:
                            fg = BASE16[p - 90 + 8]
                        elif 40 <= p <= 47:
                            bg = BASE16[p - 40]
                        elif 100 <= p <= 107:
                            bg = BASE16[p - 100 + 8]
                        k += 1
                i = j + 1
                continue
            f, b = fg or DEFAULT_FG, bg or DEFAULT_BG
            if rev:
                f, b = b, f
            if dim:
                f = tuple(int(x * 0.6 + y * 0.4) for x, y in zip(f, b))
            cells.append((ch, f, b, bold))
            if unicodedata.east_asian_width(ch) in ("W", "F"):
                cells.append(("", f, b, bold))
            i += 1
        rows.append(cells)
    while rows and not rows[-1]:
        rows.pop()
    return rows


# Block elements: (fraction of the cell from the top where the fg part starts, end).
BLOCKS = {"█": (0, 1), "▀": (0, 0.5), "▄": (0.5, 1)}
for n, ch in enumerate("▁▂▃▄▅▆▇", start=1):
    BLOCKS.setdefault(ch, (1 - n / 8, 1))
SHADES = {"░": 0.25, "▒": 0.5, "▓": 0.75}


def main():
    src, out = sys.argv[1], sys.argv[2]
    rows = parse(open(src, encoding="utf-8").read())
    ncols = int(sys.argv[3]) if len(sys.argv) > 3 else max(len(r) for r in rows)
    nrows = int(sys.argv[4]) if len(sys.argv) > 4 else len(rows)
    w, h = ncols * CW, nrows * CH
    o = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" '
        f'viewBox="0 0 {w:.1f} {h:.1f}" font-family="DejaVu Sans Mono, Menlo, Consolas, '
        f'monospace" font-size="14">',
        f'<rect width="100%" height="100%" fill="{hexc(DEFAULT_BG)}"/>',
    ]
    for y, cells in enumerate(rows[:nrows]):
        top = y * CH
        # Backgrounds, merged into runs of one colour.
        x = 0
        while x < len(cells):
            b = cells[x][2]
            e = x
            while e < len(cells) and cells[e][2] == b:
                e += 1
            if b != DEFAULT_BG:
                o.append(f'<rect x="{x * CW:.1f}" y="{top:.1f}" width="{(e - x) * CW:.1f}" '
                         f'height="{CH:.1f}" fill="{hexc(b)}"/>')
            x = e
        # Foreground: blocks as rectangles, text in runs of one style.
        x = 0
        while x < len(cells):
            ch, f, b, bold = cells[x]
            if ch in BLOCKS:
                a, z = BLOCKS[ch]
                o.append(f'<rect x="{x * CW:.1f}" y="{top + a * CH:.1f}" width="{CW:.1f}" '
                         f'height="{(z - a) * CH:.1f}" fill="{hexc(f)}"/>')
                x += 1
                continue
            if ch in SHADES:
                o.append(f'<rect x="{x * CW:.1f}" y="{top:.1f}" width="{CW:.1f}" '
                         f'height="{CH:.1f}" fill="{hexc(f)}" fill-opacity="{SHADES[ch]}"/>')
                x += 1
                continue
            if ch in (" ", ""):
                x += 1
                continue
            e = x
            while (e < len(cells) and cells[e][1] == f and cells[e][3] == bold
                   and cells[e][0] not in BLOCKS and cells[e][0] not in SHADES
                   and cells[e][0] != ""):
                e += 1
            run = "".join(c[0] for c in cells[x:e]).rstrip(" ")
            n = len(run)
            weight = ' font-weight="bold"' if bold else ""
            o.append(f'<text x="{x * CW:.1f}" y="{top + CH * 0.78:.1f}" fill="{hexc(f)}"'
                     f'{weight} textLength="{n * CW:.1f}" lengthAdjust="spacingAndGlyphs" '
                     f'xml:space="preserve">{escape(run)}</text>')
            x = e
    o.append("</svg>")
    with open(out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(o) + "\n")


if __name__ == "__main__":
    main()
