#!/usr/bin/env python3
"""Every ```swift block in the DocC catalogues (Sources/*/Docs.docc) and the README must compile.

Blocks that are whole programs are kept equal to a program CI builds and runs (marked with
<!-- NAME:begin --> / <!-- NAME:end --> and checked by check-readme-example.sh). Every other
block is a fragment: it must appear, without its import lines and indented by four spaces,
in Examples/DocSnippets/Snippets.swift, inside a function (under a `// doc: FILE #N`
comment) whose parameters give the fragment's free names. That file is a target `swift build`
compiles, so a fragment that stops compiling fails the build, and one edited in the docs but
not in the file fails this check. A block that is a package manifest (it starts with
`// swift-tools-version`) is not Swift the package compiles, and is left out.
"""
import re
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
snippets_path = root / "Examples/DocSnippets/Snippets.swift"
snippets = snippets_path.read_text()
status = 0
checked = 0
for document in sorted(root.glob("Sources/*/Docs.docc/*.md")) + [root / "README.md"]:
    text = document.read_text()
    # Blocks inside a checked program marker are compared elsewhere.
    marked = [(m.start(), m.end()) for m in re.finditer(r"<!-- [\w-]+:begin -->.*?<!-- [\w-]+:end -->", text, re.S)]
    for number, block in enumerate(re.finditer(r"^```swift\n(.*?)^```", text, re.S | re.M), start=1):
        if any(start <= block.start() < end for start, end in marked):
            continue
        if block.group(1).startswith("// swift-tools-version"):
            continue
        name = f"{document.relative_to(root)} #{number}"
        body = [line for line in block.group(1).splitlines() if not line.startswith("import ")]
        while body and not body[0].strip():
            body.pop(0)
        expected = "\n".join(("    " + line) if line.strip() else "" for line in body)
        marker = f"// doc: {name}\n"
        at = snippets.find(marker)
        if at < 0:
            print(f"check-doc-snippets: {name} is not in {snippets_path.relative_to(root)}", file=sys.stderr)
            status = 1
            continue
        if expected not in snippets[at:]:
            print(f"check-doc-snippets: {name} differs from its copy in {snippets_path.relative_to(root)}:", file=sys.stderr)
            print(expected, file=sys.stderr)
            status = 1
            continue
        checked += 1
print(f"check-doc-snippets: {checked} fragments match their compiled copies")
sys.exit(status)
