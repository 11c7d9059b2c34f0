"""Source patches that let Verilator compile FINN's generated RTL.

Each patch works on the copies of FINN's sources in our simulation directory (never on site-packages), matches the
exact construct it fixes, and fails loudly when that construct is no longer there, so a FINN upgrade that changes
the file shows up as an error instead of a silently unpatched build.
"""

from __future__ import annotations

import re
from pathlib import Path

from trimflow import FlowError

# add_multi.sv declares its constant function `init_leaf_loads` (and the typedef it returns) inside the `genTree`
# generate block. IEEE 1800 allows that, Verilator 5 rejects it ("Constant function may not be declared under
# generate"). The function depends on the module parameter N only, so declaring it at module scope, before the
# generate block, is equivalent.
_ADD_MULTI_FUNC = re.compile(
    r"(?P<decl>[ \t]*typedef\s+int\s+unsigned\s+leaf_load_t\[2\*N-1\];\s*\n"
    r"[ \t]*function\s+leaf_load_t\s+init_leaf_loads\(\);.*?endfunction\s*:\s*init_leaf_loads[ \t]*\n)",
    re.S,
)
_ADD_MULTI_ANCHOR = "\tuwire [SUM_WIDTH-1:0]  sum0;\n"


def patch_add_multi(text: str) -> str:
    """Hoist add_multi's constant function out of its generate block."""
    m = _ADD_MULTI_FUNC.search(text)
    if m is None or _ADD_MULTI_ANCHOR not in text:
        raise FlowError("add_multi.sv from FINN no longer has the layout flow/sim/fixes.py patches; "
                        "update patch_add_multi for this finn-plus version")
    decl = m.group("decl")
    text = text[: m.start()] + text[m.end():]
    return text.replace(_ADD_MULTI_ANCHOR, decl + "\n" + _ADD_MULTI_ANCHOR, 1)


_INIT_FILE = re.compile(r'(parameter\s+INIT_FILE\s*=\s*")([^"]*)(")')


def relocate_init_file(text: str, new_name: str) -> tuple[str, Path | None]:
    """Point a memstream wrapper's INIT_FILE at `new_name` (relative to the simulation's working directory).

    FINN writes the absolute path of its code-generation directory, which would tie the simulator to that
    directory. Returns the patched text and the original file (None when the wrapper has no init file).
    """
    m = _INIT_FILE.search(text)
    if m is None or not m.group(2):
        return text, None
    return text[: m.start(2)] + new_name + text[m.end(2):], Path(m.group(2))


# Which patch applies to which FINN source, by file name.
SOURCE_PATCHES = {"add_multi.sv": patch_add_multi}


def apply_source_patches(path: Path) -> bool:
    """Patch a copied source file in place if a patch is registered for its name; True if it was patched."""
    patch = SOURCE_PATCHES.get(path.name)
    if patch is None:
        return False
    path.write_text(patch(path.read_text()))
    return True
