#!/usr/bin/env python3
"""Generate ``realm_web/_unicode_tables.py``: fixed Unicode range tables for the tokenizer.

The pure-Python tokenizer (``realm_web/tokenizer.py``) must split text exactly like the
Hugging Face ``tokenizers`` library, whose regexes run on Oniguruma and whose other
character tests are Rust ``char`` methods.  Python's ``re`` has no ``\\p{...}`` and the
stdlib ``unicodedata`` version differs between interpreters (CPython 3.11: Unicode 14.0,
Pyodide 3.14: 16.0), so we ship one fixed table that every interpreter uses.

Sources
-------
* General categories: ``unicodedata2`` (``pip install unicodedata2==16.0.0``).  Unicode 16.0
  is what the Oniguruma (6.9.10) inside ``tokenizers`` 0.23 uses: it matches ``\\p{L}`` on
  letters added in 16.0 but not on those added in 17.0.  ``--verify`` checks every general
  category against the real engine, code point by code point.
* White_Space: the fixed list from PropList.txt (unchanged since Unicode 6.3).
* Derived properties that ``unicodedata`` does not expose (Alphabetic, Lowercase, Uppercase,
  Oniguruma's ``\\w``, the Rust ``regex`` crate's ``\\w``, Rust ``char::is_numeric`` and
  ``char::to_lowercase`` (the Rust toolchain's newer Unicode version), and the older
  punctuation / combining-mark tables of the crates tokenizers uses) are read from the
  ``tokenizers`` engines themselves when that package is installed: each is the exact set
  of code points the engine accepts.  Without ``tokenizers`` they fall back to
  category-based approximations (and the script says so).

Usage::

    python tools/gen_unicode_tables.py            # writes realm_web/_unicode_tables.py
    python tools/gen_unicode_tables.py --verify   # also compares categories with Oniguruma
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "realm_web" / "_unicode_tables.py"
EXPECTED_UNICODE = "16.0.0"

CATEGORIES = [
    "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No",
    "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So",
    "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co", "Cn",
]

WHITE_SPACE = [
    (0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
    (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
    (0x3000, 0x3000),
]

ALL_CPS = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]


def to_ranges(cps: Iterable[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for c in sorted(cps):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return [(a, b) for a, b in out]


def fmt(ranges: list[tuple[int, int]]) -> str:
    return ",".join(f"{a:X}" if a == b else f"{a:X}-{b:X}" for a, b in ranges)


def load_unicodedata() -> Any:
    try:
        import unicodedata2 as ud  # type: ignore[import-not-found]
    except ImportError:
        import unicodedata as ud
        print(f"warning: unicodedata2 not installed; using stdlib unicodedata "
              f"{ud.unidata_version}", file=sys.stderr)
    if ud.unidata_version != EXPECTED_UNICODE:
        print(f"warning: Unicode {ud.unidata_version}, expected {EXPECTED_UNICODE} "
              f"(pip install unicodedata2=={EXPECTED_UNICODE})", file=sys.stderr)
    return ud


# --- sets read from the tokenizers engines --------------------------------------------

def _onig_set(pattern: str) -> set[int]:
    """Code points matched by the Oniguruma class ``pattern`` inside tokenizers."""
    from tokenizers import Regex, pre_tokenizers

    text = "".join(chr(c) for c in ALL_CPS)
    split = pre_tokenizers.Split(Regex("(?:" + pattern + ")"), "removed")
    kept: set[int] = set()
    for _, (a, b) in split.pre_tokenize_str(text):
        kept.update(range(a, b))
    return {ALL_CPS[i] for i in range(len(ALL_CPS)) if i not in kept}


def _rust_word() -> set[int]:
    """Code points the Rust ``regex`` crate's ``\\w`` matches (via the Whitespace pre-tokenizer)."""
    from tokenizers import pre_tokenizers

    text = "".join("a" + chr(c) + " " for c in ALL_CPS)
    ends = {a: b for _, (a, b) in pre_tokenizers.Whitespace().pre_tokenize_str(text)}
    return {c for i, c in enumerate(ALL_CPS) if ends.get(3 * i) == 3 * i + 2}


def _rust_numeric() -> set[int]:
    """Code points for which Rust ``char::is_numeric`` holds (via the Digits pre-tokenizer)."""
    from tokenizers import pre_tokenizers

    text = "".join("a" + chr(c) for c in ALL_CPS)
    out: set[int] = set()
    for _, (a, b) in pre_tokenizers.Digits(individual_digits=False).pre_tokenize_str(text):
        if a % 2 == 1:
            out.update(ALL_CPS[i // 2] for i in range(a, b))
    return out


def _rust_punct() -> set[int]:
    """Code points the Punctuation pre-tokenizer isolates (ASCII punct | is_punctuation)."""
    from tokenizers import pre_tokenizers

    text = "".join("a" + chr(c) for c in ALL_CPS)
    out: set[int] = set()
    for _, (a, b) in pre_tokenizers.Punctuation("isolated").pre_tokenize_str(text):
        if a % 2 == 1 and b == a + 1:
            out.add(ALL_CPS[a // 2])
    return out


def _rust_marks() -> set[int]:
    """Code points removed by the StripAccents normalizer (its is_combining_mark)."""
    from tokenizers import normalizers

    cps = ALL_CPS[1:]  # U+0000 is the separator
    out = normalizers.StripAccents().normalize_str("\x00".join("a" + chr(c) for c in cps))
    pieces = out.split("\x00")
    assert len(pieces) == len(cps)
    return {c for c, piece in zip(cps, pieces) if piece == "a"}


def _rust_lowercase() -> dict[int, str]:
    """Rust ``char::to_lowercase`` for every code point that changes (Lowercase normalizer)."""
    from tokenizers import normalizers

    cps = ALL_CPS[1:]  # U+0000 is the separator
    pieces = normalizers.Lowercase().normalize_str("\x00".join(chr(c) for c in cps)).split("\x00")
    assert len(pieces) == len(cps)
    return {c: low for c, low in zip(cps, pieces) if low != chr(c)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verify", action="store_true", help="compare categories with Oniguruma")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    ud = load_unicodedata()
    cat_of = {c: ud.category(chr(c)) for c in range(0x110000)}
    cats: dict[str, set[int]] = {k: set() for k in CATEGORIES}
    for c, k in cat_of.items():
        cats[k].add(c)

    def union(*names: str) -> set[int]:
        s: set[int] = set()
        for n in names:
            s |= cats[n]
        return s

    derived: dict[str, set[int]] = {}
    source = "category approximations (tokenizers not installed)"
    getters: dict[str, Callable[[], set[int]]] = {}
    try:
        import tokenizers

        source = f"tokenizers {tokenizers.__version__} engines"
        getters = {
            "Alphabetic": lambda: _onig_set("[[:alpha:]]"),
            "Lowercase": lambda: _onig_set("[[:lower:]]"),
            "Uppercase": lambda: _onig_set("[[:upper:]]"),
            "OnigWord": lambda: _onig_set(r"\w"),
            "RustWord": _rust_word,
            "RustNumeric": _rust_numeric,
            "RustPunct": _rust_punct,
            "RustMark": _rust_marks,
        }
    except ImportError:
        print("warning: tokenizers not installed; derived properties approximated",
              file=sys.stderr)
        alpha = union("Lu", "Ll", "Lt", "Lm", "Lo", "Nl")
        getters = {
            "Alphabetic": lambda: alpha,
            "Lowercase": lambda: union("Ll"),
            "Uppercase": lambda: union("Lu"),
            "OnigWord": lambda: alpha | union("Mn", "Mc", "Me", "Nd", "Pc"),
            "RustWord": lambda: alpha | union("Mn", "Mc", "Me", "Nd", "Pc") | {0x200C, 0x200D},
            "RustNumeric": lambda: union("Nd", "Nl", "No"),
            "RustPunct": lambda: union("Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po") | {
                c for c in range(0x21, 0x7F) if not chr(c).isalnum()},
            "RustMark": lambda: union("Mn", "Mc", "Me"),
        }
    for name, get in getters.items():
        derived[name] = get()
    lower: dict[int, str]
    try:
        lower = _rust_lowercase()
    except ImportError:
        lower = {c: chr(c).lower() for c in ALL_CPS if chr(c).lower() != chr(c)}

    if args.verify:
        bad = 0
        for k in CATEGORIES:
            if k == "Cs":
                continue
            got = _onig_set(r"\p{" + k + "}")
            want = cats[k] - set(range(0xD800, 0xE000))
            if got != want:
                bad += 1
                print(f"MISMATCH \\p{{{k}}}: onig-only {to_ranges(got - want)[:8]} "
                      f"table-only {to_ranges(want - got)[:8]}", file=sys.stderr)
        ws = _onig_set(r"\s")
        if ws != {c for a, b in WHITE_SPACE for c in range(a, b + 1)}:
            bad += 1
            print("MISMATCH \\s", file=sys.stderr)
        print("verify:", "OK" if not bad else f"{bad} mismatches", file=sys.stderr)

    lines = [
        '"""Unicode range tables for realm_web.tokenizer (GENERATED, do not edit).',
        "",
        "Generated by tools/gen_unicode_tables.py.",
        f"General categories: Unicode {ud.unidata_version} (unicodedata2), the version of the",
        "Oniguruma inside Hugging Face tokenizers.  Derived sets (Alphabetic, Lowercase,",
        f"Uppercase, OnigWord, RustWord, RustNumeric, RustPunct, RustMark) and LOWERCASE were",
        f"read from: {source}.",
        "Each value is a comma-separated list of hex code points or ranges 'LO-HI'.",
        '"""',
        "",
        f'UNICODE_VERSION = "{ud.unidata_version}"',
        "",
        "CATEGORIES: dict[str, str] = {",
    ]
    for k in CATEGORIES:
        lines.append(f'    "{k}": "{fmt(to_ranges(cats[k]))}",')
    lines.append("}")
    lines.append("")
    lines.append(f'WHITE_SPACE = "{fmt(WHITE_SPACE)}"')
    lines.append("")
    lines.append("DERIVED: dict[str, str] = {")
    for name, s in derived.items():
        lines.append(f'    "{name}": "{fmt(to_ranges(s))}",')
    lines.append("}")
    lines.append("")
    lines.append("# Rust char::to_lowercase where it changes the char: 'CP:CP CP..' entries")
    lines.append('LOWERCASE = "' + ",".join(
        f"{c:X}:" + " ".join(f"{ord(x):X}" for x in low) for c, low in sorted(lower.items()))
        + '"')
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
