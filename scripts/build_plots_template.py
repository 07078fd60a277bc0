"""Write an offline HTML template for `dvc plots show/diff --html-template`.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so it renders blank without
internet. This inlines the same libraries (installed from the npm registry by `make plots`) into
the page instead. Usage: python scripts/build_plots_template.py NODE_MODULES OUTPUT_HTML
"""

import sys
from pathlib import Path

LIBRARIES = (
    "vega/build/vega.min.js",
    "vega-lite/build/vega-lite.min.js",
    "vega-embed/build/vega-embed.min.js",
)
PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>flower-model plots</title>
  {inline_scripts}
  <style>
    body {{ font-family: sans-serif; }}
    table {{ border-spacing: 15px; }}
  </style>
</head>
<body>
  {{plot_divs}}
</body>
</html>
"""


def main() -> None:
    node_modules, output = Path(sys.argv[1]), Path(sys.argv[2])
    scripts = []
    for library in LIBRARIES:
        code = (node_modules / library).read_text(encoding="utf-8")
        # A literal "</script>" inside the code would end the tag early.
        scripts.append("<script>\n" + code.replace("</script>", "<\\/script>") + "\n</script>")
    page = PAGE.format(inline_scripts="\n".join(scripts))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(output)
    print(f"wrote {output} ({output.stat().st_size // 1024} KiB, no network needed to render)")


if __name__ == "__main__":
    main()
