#!/usr/bin/env python3
"""kconfig_check.py TREE: checks the Kconfig files of the BR2_EXTERNAL tree
TREE (buildroot/) with kconfiglib, against kconfig/stub.Config.in, which
stands in for Buildroot's own symbols.

Fails (exit 1, one line per problem on stderr) on:
- a syntax error in TREE/Config.in or any file it sources;
- any kconfiglib warning, undefined symbols included (KCONFIG_WARN_UNDEF):
  a misspelled `depends on` or `select` is an undefined symbol;
- TREE/configs/*_defconfig setting a symbol of the tree or of the stub to a
  value it does not keep once loaded: an option dropped by an unmet
  dependency (BR2_PACKAGE_TRIAD without BR2_INIT_NONE, say).
Symbols of the defconfig that belong to Buildroot proper and are not in the
stub cannot be checked here and are ignored.

Why Python: kconfiglib is the Kconfig implementation that can be asked
what it parsed; Buildroot's own `conf` accepts a broken tree silently
(../../shared/LAB-NOTES.md).
"""
import glob
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    if len(sys.argv) != 2:
        print("usage: kconfig_check.py BR2_EXTERNAL_TREE", file=sys.stderr)
        return 2
    tree = os.path.abspath(sys.argv[1])
    try:
        import kconfiglib
    except ImportError:
        print("kconfig_check.py: kconfiglib is not installed (bash .ci/setup installs it)", file=sys.stderr)
        return 1

    os.environ["BR2_EXTERNAL_TRIAD_PATH"] = tree
    os.environ["KCONFIG_WARN_UNDEF"] = "y"
    # Buildroot's symbols carry no CONFIG_ prefix.
    os.environ["CONFIG_"] = ""
    problems = []
    try:
        kconf = kconfiglib.Kconfig(os.path.join(HERE, "kconfig", "stub.Config.in"), warn_to_stderr=False)
    except kconfiglib.KconfigError as e:
        print(f"kconfig_check.py: {e}", file=sys.stderr)
        return 1
    problems += [f"kconfig: {w}" for w in kconf.warnings]

    for defconfig in sorted(glob.glob(os.path.join(tree, "configs", "*_defconfig"))):
        problems += check_defconfig(kconf, kconfiglib, tree, defconfig)

    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"kconfig_check.py: {tree}: Kconfig files and defconfigs consistent with the stub")
    return 1 if problems else 0


def check_defconfig(kconf, kconfiglib, tree, path):
    """Symbols the tree or the stub defines keep the defconfig's values."""
    name = os.path.relpath(path, tree)
    wanted = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            m = re.match(r"^(BR2_\w+)=(.*)$", line) or re.match(r"^# (BR2_\w+) is not set$", line)
            if m:
                wanted[m.group(1)] = m.group(2).strip('"') if m.lastindex == 2 else "n"
    kconf.warnings.clear()
    kconf.load_config(path, replace=True)
    out = []
    for sym, want in wanted.items():
        s = kconf.syms.get(sym)
        if s is None or not s.nodes:
            continue  # Buildroot proper: not in the stub
        got = s.str_value if s.orig_type != kconfiglib.BOOL or s.str_value != "n" else "n"
        if got != want:
            deps = kconfiglib.expr_str(s.direct_dep)
            out.append(f"{name}: {sym}={want} is not kept (it becomes {got or 'n'}); it depends on {deps}")
    return out


if __name__ == "__main__":
    sys.exit(main())
