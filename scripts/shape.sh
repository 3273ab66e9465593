#!/usr/bin/env bash
# Prints the shape figures that issue 21 set targets for, so that the next person can keep them
# honest: function lengths in src/ (median, p90, max, how many over 60 lines, the longest ones),
# files over 400 lines before their unit tests, README's length, and the import cycles between
# modules (from `use crate::…` and `crate::…` paths). Reads the tree only; no build.
#
#   scripts/shape.sh            # figures for the working tree
#   scripts/shape.sh --all      # also list every function over 60 lines and every file over 400
#
# How it counts (rustfmt'd code makes this exact enough): a function runs from its `fn` line to
# the first later line that closes a brace at the `fn` line's indentation; functions inside
# `#[cfg(test)] mod tests` and declarations without a body are left out. A file's length "before
# its unit tests" stops at its `#[cfg(test)]` line followed by `mod tests`. A module is a file
# (`a/mod.rs` is `a`); `use crate::a::b::C` ties the file to `a/b.rs` if that exists, else to
# `a.rs` or `a/mod.rs`. A cycle is a strongly connected set of two or more modules.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 - "$@" <<'PY'
import os, re, statistics, sys

SHOW_ALL = "--all" in sys.argv[1:]
FN = re.compile(r'^(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?(?:extern\s+"[^"]*"\s+)?fn\s+(\w+)')
IMPL = re.compile(r'^(\s*)impl\b(?:<[^{]*?>)?\s+(?:[\w:<>, ]+\s+for\s+)?([\w:]+)')

def rust_files():
    for root, _, files in os.walk("src"):
        for f in sorted(files):
            if f.endswith(".rs"):
                yield os.path.join(root, f)

def tests_start(lines):
    """Index of the `#[cfg(test)]` line that opens `mod tests`, or len(lines)."""
    for i, line in enumerate(lines):
        if line.strip() == "#[cfg(test)]":
            nxt = next((l for l in lines[i + 1:] if l.strip()), "")
            if re.match(r'\s*(pub(\(\w+\))?\s+)?mod\s+tests\b', nxt):
                return i
    return len(lines)

def functions(path, lines, end):
    """(name, length) of every function with a body before `end`."""
    impl_name, impl_indent = None, -1
    out = []
    for i in range(end):
        m = IMPL.match(lines[i])
        if m:
            impl_name, impl_indent = m.group(2).split("::")[-1], len(m.group(1))
        elif impl_name and lines[i].startswith(" " * impl_indent + "}") and len(lines[i]) - len(lines[i].lstrip()) == impl_indent:
            impl_name = None
        m = FN.match(lines[i])
        if not m:
            continue
        indent = m.group(1)
        # Find the body's opening: the signature ends at the first line ending in `{` or `;`.
        j = i
        while j < end and not lines[j].rstrip().endswith(("{", ";", "}")):
            j += 1
        if j >= end or lines[j].rstrip().endswith(";"):
            continue  # a declaration (trait method without a default)
        if lines[j].rstrip().endswith("}") and "{" in lines[j]:
            length = j - i + 1  # one-liner
        else:
            k = j + 1
            while k < end and lines[k].rstrip() != indent + "}":
                k += 1
            length = k - i + 1
        owner = impl_name if impl_name and len(indent) > impl_indent else None
        name = f"{owner}::{m.group(2)}" if owner else m.group(2)
        module = path[len("src/"):-len(".rs")].replace("/mod", "").replace("/", "::")
        out.append((f"{module}: {name}", length))
    return out

def module_of(path):
    p = path[len("src/"):-len(".rs")]
    if p.endswith("/mod"):
        p = p[:-len("/mod")]
    return "crate" if p in ("lib", "main") else p.replace("/", "::")

def resolve(segments, modules):
    """The longest module path that `segments` (after `crate::`) starts with."""
    for n in range(len(segments), 0, -1):
        cand = "::".join(segments[:n])
        if cand in modules:
            return cand
    return None

def use_paths(text):
    """Every `crate::a::b…` path, with `use crate::{a, b::c}` groups expanded one level."""
    text = re.sub(r'//[^\n]*', '', text)
    paths = []
    for m in re.finditer(r'\bcrate::((?:\w+::)*)\{([^;]*?)\}', text, re.S):
        base = m.group(1)
        for part in re.split(r',', m.group(2)):
            part = part.strip().lstrip("{")
            if part:
                paths.append((base + part).split("::"))
    for m in re.finditer(r'\bcrate::((?:\w+)(?:::\w+)*)', text):
        paths.append(m.group(1).split("::"))
    return paths

def cycles(graph):
    """Strongly connected components of size > 1 (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]; counter[0] += 1
        stack.append(start); on.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]; counter[0] += 1
                    stack.append(nxt); on.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out

fns, big_files, graph = [], [], {}
paths = list(rust_files())
modules = {module_of(p) for p in paths}
for path in paths:
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    end = tests_start(lines)
    fns += functions(path, lines, end)
    if end > 400:
        big_files.append((path, end))
    me = module_of(path)
    deps = set()
    for segs in use_paths("\n".join(lines[:end])):
        target = resolve(segs, modules)
        if target and target != me and not me.startswith(target + "::") and target != "crate":
            deps.add(target)
    graph[me] = deps

lengths = sorted(l for _, l in fns)
over = sorted((l, n) for n, l in fns if l > 60)
p90 = lengths[int(0.9 * (len(lengths) - 1))]
with open("README.md", encoding="utf-8") as f:
    readme = sum(1 for _ in f)
cyc = cycles(graph)

print(f"functions in src/ (outside unit tests): {len(lengths)}")
print(f"  length median {statistics.median(lengths):g}, p90 {p90}, max {lengths[-1]}, over 60 lines: {len(over)}")
for l, n in reversed(over if SHOW_ALL else over[-5:]):
    print(f"    {l:4}  {n}")
print(f"files in src/ over 400 lines before their unit tests: {len(big_files)}")
for p, n in sorted(big_files, key=lambda x: -x[1]):
    print(f"    {n:4}  {p}")
print(f"README.md: {readme} lines")
print(f"import cycles between modules: {len(cyc)}")
for c in cyc:
    print("    " + " <-> ".join(c))
PY
