#!/usr/bin/env python3
"""Checks the vmm crate's rooms (docs/design.md, "The vmm crate").

Reads every module's `crate::` and `super::` paths (test modules and comments left out) and
the room table in vmm/src/lib.rs, then fails when
  - a room calls a room listed above it in that table (rooms on one line are one level and
    may not call each other either), or
  - any two modules depend on each other, directly or through others (a module cycle).

  vmm-rooms.py        check, print the rooms' arrows
  vmm-rooms.py -v     also every module's arrows
"""
import glob
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..')
SRC = os.path.join(ROOT, 'vmm', 'src')


def modules():
    mods = {}
    for path in glob.glob(os.path.join(SRC, '**', '*.rs'), recursive=True):
        rel = os.path.relpath(path, SRC)[:-3]
        if rel in ('lib', 'main'):
            continue
        if rel.endswith('/mod'):
            rel = rel[:-4]
        mods['::'.join(rel.split('/'))] = path
    return mods


def module_deps(mods):
    def resolve(path):
        parts = path.split('::')
        for n in range(len(parts), 0, -1):
            name = '::'.join(parts[:n])
            if name in mods:
                return name
        return None

    deps = {m: set() for m in mods}
    for m, path in mods.items():
        with open(path) as f:
            text = f.read()
        text = re.sub(r'#\[cfg\(test\)\]\s*mod tests \{.*', '', text, flags=re.S)
        text = re.sub(r'//.*', '', text)
        for p in re.findall(r'\bcrate::((?:[a-z_]+::)*[a-z_]+)', text):
            r = resolve(p)
            if r and r != m:
                deps[m].add(r)
        parent = m if path.endswith('mod.rs') else (m.rsplit('::', 1)[0] if '::' in m else '')
        for p in re.findall(r'\bsuper::((?:[a-z_]+::)*[a-z_]+)', text):
            r = resolve(f'{parent}::{p}' if parent else p)
            if r and r != m:
                deps[m].add(r)
    return deps


def room_levels():
    """Room name -> level (0 = top) from the ```text block of lib.rs's doc."""
    with open(os.path.join(SRC, 'lib.rs')) as f:
        doc = [l[3:].strip() if l.startswith('//!') else None for l in f]
    block = doc[doc.index('```text') + 1:]
    block = block[:block.index('```')]
    levels = {}
    for level, line in enumerate(l for l in block if l):
        names = re.split(r'\s{2,}', line)[0]
        for name in re.split(r',\s*', names):
            levels[name.strip()] = level
    return levels


def cycles(graph):
    found, seen = {}, set()

    def walk(node, stack):
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack:
                cycle = stack[stack.index(nxt):] + [nxt]
                found.setdefault(frozenset(cycle), cycle)
            elif (node, nxt) not in seen:
                seen.add((node, nxt))
                walk(nxt, stack + [nxt])

    for node in sorted(graph):
        walk(node, [node])
    return list(found.values())


def main():
    mods = modules()
    deps = module_deps(mods)
    room = lambda m: m.split('::')[0]
    rooms = {}
    for m, ds in deps.items():
        rooms.setdefault(room(m), set())
        for d in ds:
            if room(d) != room(m):
                rooms[room(m)].add(room(d))
    levels = room_levels()
    if '-v' in sys.argv:
        for m in sorted(deps):
            print(f'  {m} -> {" ".join(sorted(deps[m]))}')
    print(f'vmm: {len(mods)} modules in {len(rooms)} rooms')
    errors = []
    for r, ds in sorted(rooms.items()):
        print(f'  {r} -> {" ".join(sorted(ds))}')
        if r not in levels:
            errors.append(f'room {r} is not in lib.rs\'s room table')
            continue
        for d in sorted(ds):
            if d in levels and levels[d] <= levels[r]:
                errors.append(f'room {r} calls {d}, which lib.rs lists above it or beside it')
    for cycle in cycles(deps):
        errors.append('module cycle: ' + ' -> '.join(cycle))
    for e in errors:
        print('error:', e, file=sys.stderr)
    print('rooms and modules: ' + ('no cycle, every arrow downwards' if not errors else f'{len(errors)} error(s)'))
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
