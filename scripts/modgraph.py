#!/usr/bin/env python3
"""Checks that the modules of each crate under src/ form a DAG: no module imports a module that
imports it back, directly or through others.

A module is a file (src/engine/create.rs is `crate::engine::create`; a `mod.rs` is its
directory's module). Module A depends on module B when A's code, outside its `#[cfg(test)]`
modules, names an item defined in B: through a `use` (re-exports included) or a path such as
`super::hooks::run` or `crate::engine::Error`. Paths are resolved the way rustc does for the
cases rpfs uses: `crate`, `super`, `self`, child modules, and `pub use` re-exports (followed to
the module that defines the item). Declaring a child (`mod x;`) is not a dependency.

The library (src/lib.rs) and the binary (src/main.rs) are separate crates; the binary's paths
into the library (`rpfs::...`) cannot close a cycle and are not followed.

Usage: scripts/modgraph.py [--edges]   exit 1 and print each cycle when there is one.
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def strip(src):
    """The code of `src` with comments, string and char literals blanked out."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif re.match(r'b?r#*"', src[i:i + 8]) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            m = re.match(r'b?r(#*)"', src[i:])
            end = '"' + m.group(1)
            j = src.find(end, i + m.end())
            i = n if j < 0 else j + len(end)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'":
            m = re.match(r"'(\\.|\\u\{[0-9a-fA-F]+\}|[^'\\\n])'", src[i:])
            if m:
                i += m.end()
                out.append("' '")
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def without_tests(code):
    """`code` without its `#[cfg(test)]` items (test modules and test-only functions)."""
    out = []
    i = 0
    for m in re.finditer(r"#\[cfg\(test\)\]", code):
        if m.start() < i:
            continue
        out.append(code[i:m.start()])
        j = m.end()
        # The item ends at its matching closing brace, or at a `;` before any brace.
        depth = 0
        while j < len(code):
            ch = code[j]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            elif ch == ";" and depth == 0:
                j += 1
                break
            j += 1
        i = j
    out.append(code[i:])
    return "".join(out)


def parse_use_tree(text, prefix=()):
    """Paths named by a use tree: a list of (segments, alias or None, is_glob)."""
    text = text.strip()
    out = []
    # Split at the top-level `::{`.
    depth = 0
    for k, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                head = text[:k].rstrip(":").strip()
                inner = text[k + 1:text.rindex("}")]
                segs = prefix + tuple(s for s in head.split("::") if s)
                for part in split_top(inner):
                    out.extend(parse_use_tree(part, segs))
                return out
            depth += 1
        elif ch == "}":
            depth -= 1
    m = re.match(r"(.*?)\s+as\s+(\w+)$", text)
    alias = None
    if m:
        text, alias = m.group(1), m.group(2)
    segs = prefix + tuple(s.strip() for s in text.split("::") if s.strip())
    if segs and segs[-1] == "*":
        return [(segs[:-1], None, True)]
    if segs and segs[-1] == "self":
        segs = segs[:-1]
        alias = alias or (segs[-1] if segs else None)
    return [(segs, alias, False)]


def split_top(text):
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


class Module:
    def __init__(self, path, file):
        self.path = path          # tuple of segments, () for the crate root
        self.file = file
        code = without_tests(strip(open(file).read()))
        self.children = set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", code, re.M))
        self.items = set(re.findall(
            r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:unsafe\s+)?(?:async\s+)?"
            r"(?:fn|struct|enum|trait|type|const|static|union)\s+(\w+)", code, re.M))
        self.items |= set(re.findall(r"macro_rules!\s+(\w+)", code))
        self.uses = []            # (segments, alias, glob, public)
        for m in re.finditer(r"^\s*(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", code, re.M):
            for segs, alias, glob in parse_use_tree(m.group(2)):
                self.uses.append((segs, alias, glob, bool(m.group(1))))
        body = re.sub(r"^\s*(pub(?:\([^)]*\))?\s+)?use\s+[^;]+;", "", code, flags=re.M)
        self.inline = [tuple(p.split("::")) for p in
                       re.findall(r"(?<![\w:])((?:crate|super|self|\w+)(?:::\w+)+)", body)]

    def __repr__(self):
        return "::".join(("crate",) + self.path)


def load(root_file):
    mods = {}

    def visit(path, file):
        m = Module(path, file)
        mods[path] = m
        base = os.path.dirname(file) if os.path.basename(file) in ("mod.rs", "lib.rs", "main.rs") \
            else os.path.splitext(file)[0]
        for child in sorted(m.children):
            for cand in (os.path.join(base, child + ".rs"), os.path.join(base, child, "mod.rs")):
                if os.path.exists(cand):
                    visit(path + (child,), cand)
                    break
    visit((), root_file)
    return mods


def resolve(mods, here, segs, depth=0):
    """The module that defines what `segs` names from module `here`, or None (outside)."""
    if not segs or depth > 20:
        return None
    cur = here
    first, rest = segs[0], list(segs[1:])
    if first == "crate":
        cur = ()
    elif first == "super":
        cur = here[:-1]
        while rest and rest[0] == "super":
            cur, rest = cur[:-1], rest[1:]
    elif first == "self":
        cur = here
    elif first in mods[here].children:
        cur = here + (first,)
    else:
        # A name this module imported: follow its use.
        for useg, alias, glob, _ in mods[here].uses:
            if not glob and (alias or (useg[-1] if useg else None)) == first and useg:
                target = resolve(mods, here, useg, depth + 1)
                if target is None:
                    return None
                if rest and useg[-1] in mods[target[:-1] if target else ()].children \
                        and target[-1:] == (useg[-1],):
                    return resolve(mods, target, ["self"] + rest, depth + 1)
                return target
        return None
    for k, seg in enumerate(rest):
        m = mods.get(cur)
        if m is None:
            return None
        if seg in m.children:
            cur = cur + (seg,)
            continue
        if seg in m.items:
            return cur
        for useg, alias, glob, public in m.uses:
            name = alias or (useg[-1] if useg else None)
            if not glob and name == seg:
                return resolve(mods, cur, useg, depth + 1)
        return cur
    return cur


def edges(mods):
    out = {p: set() for p in mods}
    for path, m in mods.items():
        names = [segs for segs, _, glob, _ in m.uses] + m.inline
        for segs in names:
            if not segs:
                continue
            target = resolve(mods, path, segs)
            if target is not None and target != path and target in mods:
                out[path].add(target)
    return out


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)
    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def name(crate, path):
    return "::".join((crate,) + path)


def main():
    show = "--edges" in sys.argv
    failed = False
    for crate, root in (("rpfs", "lib.rs"), ("rpfs(bin)", "main.rs")):
        mods = load(os.path.join(ROOT, root))
        graph = edges(mods)
        if show:
            for v in sorted(graph):
                print(f"{name(crate, v)} -> {', '.join(name(crate, w) for w in sorted(graph[v]))}")
        for comp in cycles(graph):
            failed = True
            members = sorted(comp)
            print(f"cycle in {crate}: " + " <-> ".join(name(crate, p) for p in members))
            for v in members:
                back = sorted(w for w in graph[v] if w in comp)
                print(f"  {name(crate, v)} imports {', '.join(name(crate, w) for w in back)}")
        print(f"{crate}: {len(mods)} modules, {sum(len(e) for e in graph.values())} imports, "
              f"{'cycles found' if failed else 'no cycles'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
