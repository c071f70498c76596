#!/usr/bin/env python3
"""kernel_merge.py LINUX_SRC [FRAGMENT]: merges linux.fragment onto
LINUX_SRC's x86_64_defconfig with kconfiglib, as Buildroot's kernel build
does, and fails on every line of the fragment the merged configuration
does not keep (a `select` forcing a module to y, an option hidden by an
unmet dependency, a symbol that does not exist in that kernel).

Not run by the tests: it needs a Linux source tree (Debian: apt-get
download linux-source-6.1, then unpack its tarball; Kconfig files,
Makefiles and scripts/ are enough). buildroot/README.md says when it was
last run and what it gave.
"""
import io
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    src = os.path.abspath(sys.argv[1])
    frag = os.path.abspath(sys.argv[2] if len(sys.argv) == 3 else os.path.join(HERE, "..", "board", "triad", "x86_64", "linux.fragment"))
    import kconfiglib

    cc = subprocess.check_output(["gcc", "--version"], text=True).splitlines()[0]
    version = subprocess.check_output(["make", "-s", "-C", src, "kernelversion"], text=True).strip()
    os.environ.update(srctree=src, ARCH="x86", SRCARCH="x86", KERNELVERSION=version, CC="gcc", LD="ld",
                      HOSTCC="gcc", HOSTCXX="g++", CC_VERSION_TEXT=cc, RUSTC="rustc", BINDGEN="bindgen", PAHOLE="pahole")

    class Kconfig(kconfiglib.Kconfig):
        # kconfiglib 14.1 predates the bare `modules` attribute Linux 6.1
        # uses (kernel/module/Kconfig); it knows the older `option modules`.
        def _open(self, filename, mode):
            f = super()._open(filename, mode)
            if mode == "r" and filename.endswith("kernel/module/Kconfig"):
                return io.StringIO(re.sub(r"(?m)^(\s+)modules$", r"\1option modules", f.read()))
            return f

    kconf = Kconfig(os.path.join(src, "Kconfig"), warn=False)
    kconf.load_config(os.path.join(src, "arch/x86/configs/x86_64_defconfig"))
    kconf.load_config(frag, replace=False)
    bad = 0
    for line in open(frag):
        m = re.match(r"^CONFIG_(\w+)=(.*)$", line.strip()) or re.match(r"^# CONFIG_(\w+) is not set$", line.strip())
        if not m:
            continue
        name, want = m.group(1), (m.group(2).strip('"') if m.lastindex == 2 else "n")
        sym = kconf.syms.get(name)
        if sym is None or not sym.nodes:
            print(f"CONFIG_{name}: not a symbol of Linux {version}", file=sys.stderr)
            bad += 1
            continue
        textual = sym.orig_type in (kconfiglib.STRING, kconfiglib.INT, kconfiglib.HEX)
        got = sym.str_value if textual else (sym.str_value or "n")
        if got != want:
            print(f"CONFIG_{name}={want} is not kept: the merged config has {got}"
                  f" (selected by: {kconfiglib.expr_str(sym.rev_dep)[:160]})", file=sys.stderr)
            bad += 1
    print(f"kernel_merge.py: Linux {version} x86_64_defconfig + {os.path.basename(frag)}: {bad} line(s) not kept")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
