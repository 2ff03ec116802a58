"""The repository stands alone: no file points outside it, and every path it names exists.

Scans what a clone holds (``git ls-files --cached --others --exclude-standard``: tracked files and untracked ones that
are not ignored), skipping binary files and files under resources/ larger than 1 MB, for

(a) paths outside the repository: developer folders (a ``shared`` folder beside the checkout, absolute paths under the
    developers' work folder) and absolute paths into a home directory (``/home/<user>``, ``/Users/<user>``, or
    root's), in any text file;
(b) repository paths that do not exist: a path written from one of the top-level folders below (``docs/...``,
    ``scripts/...``, ...) in Markdown, YAML, Snakemake files, the Makefile, or a Python comment or string.
    Placeholders and patterns (paths holding ``<``, ``{``, ``*`` or ``...``) are not checked, and outputs such as
    ``results/...`` are outside these folders;
(c) Markdown links ``[text](target)`` whose relative target does not exist.
"""
from __future__ import annotations

import io
import re
import subprocess
import tokenize
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
#: top-level folders whose paths must exist when a file names them
TOP_FOLDERS = ("docs", "bench", "scripts", "configs", "profiles", "envs", "schemas", "rules", "tests")
LARGE_RESOURCE = 1_000_000  # bytes: larger files under resources/ are data, not text to read

# (a) The patterns are spelled so that this file does not match them itself.
OUTSIDE = [
    (re.compile(r"\.\.(?:/\.\.)*/shared\b"), "the developers' private shared folder"),
    (re.compile(r"(?<![\w.~-])/wor[k]/"), "an absolute path under the developers' work folder"),
    (re.compile(r"(?<![\w.~$-])/(?:hom[e]|User[s])/[\w.-]+"), "an absolute path into a home directory"),
    (re.compile(r"(?<![\w.~$-])/roo[t]/"), "an absolute path into root's home directory"),
]
# (b) A path from a top-level folder, optionally reached through ../ (relative to the file's own folder).
PATH = re.compile(r"(?<![\w./~$@:-])((?:\.\./)*)((?:%s)/[^\s`'\"()\[\],;|=]*)" % "|".join(TOP_FOLDERS))
PLACEHOLDER = re.compile(r"[<>{}*?$]|\.\.\.|…")
# (c) Markdown links and images: [text](target "title")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def repository_files(root: Path = ROOT) -> list[str]:
    """Tracked files and untracked files that git does not ignore, as paths relative to ``root``."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         check=True, capture_output=True).stdout
    return sorted({p for p in out.decode().split("\0") if p and (root / p).is_file()})


def known_paths(files: list[str]) -> set[str]:
    """Every listed file and every folder above one (POSIX, relative, no trailing slash)."""
    known = set()
    for f in files:
        p = PurePosixPath(f)
        known.add(str(p))
        known.update(str(parent) for parent in p.parents if str(parent) != ".")
    return known


def read_text(root: Path, rel: str) -> str | None:
    """The file's text, or None for a binary file or a large file under resources/."""
    path = root / rel
    if rel.startswith("resources/") and path.stat().st_size > LARGE_RESOURCE:
        return None
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def kind_of(rel: str) -> str | None:
    """Which files get check (b): markdown, yaml, snakemake, make, python; None for the others."""
    name = PurePosixPath(rel).name
    suffix = PurePosixPath(rel).suffix
    if suffix == ".md":
        return "markdown"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix == ".smk" or name == "Snakefile":
        return "snakemake"
    if name == "Makefile" or suffix == ".mk":
        return "make"
    if suffix == ".py":
        return "python"
    return None


def python_text_spans(text: str):
    """(line, text) of each comment and string literal of a Python file; the whole file if it does not tokenize."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        yield from enumerate(text.splitlines(), 1)
        return
    kinds = {tokenize.COMMENT, tokenize.STRING} | {getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    for tok in tokens:
        if tok.type in kinds:
            yield tok.start[0], tok.string


def spans(text: str, kind: str | None):
    """(first line, text) pieces to search for repository paths."""
    if kind == "python":
        yield from python_text_spans(text)
    elif kind is not None:
        yield from enumerate(text.splitlines(), 1)


def clean_path(raw: str) -> str:
    """A path as written, without an anchor, a ``::test`` or ``:line`` suffix and trailing punctuation."""
    path = raw.split("#", 1)[0].split("::", 1)[0]
    path = re.sub(r":\d+(?::\d+)?$", "", path)
    return path.rstrip(".,:;!?'\"`)").rstrip("/")


def resolves(target: str, base: PurePosixPath, known: set[str]) -> bool:
    """Whether ``target`` (relative to the folder ``base``; '' = the repository root) names a file or folder here."""
    parts: list[str] = []
    for part in (base / target).parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return False  # above the repository root
            parts.pop()
        else:
            parts.append(part)
    return not parts or "/".join(parts) in known


def check_text(rel: str, text: str, known: set[str]) -> list[str]:
    """The problems of one file (``rel`` relative to the repository root), as 'file:line: message'."""
    problems = []
    base = PurePosixPath(rel).parent
    for lineno, line in enumerate(text.splitlines(), 1):
        for pattern, what in OUTSIDE:
            for m in pattern.finditer(line):
                problems.append(f"{rel}:{lineno}: {what}: {m.group(0)!r}")
    kind = kind_of(rel)
    reported = set()  # (line, path): a missing path is reported once, also when it is a link's target
    for first, piece in spans(text, kind):
        for m in PATH.finditer(piece):
            lineno = first + piece.count("\n", 0, m.start())
            ups, path = m.group(1), clean_path(m.group(2))
            if not path or PLACEHOLDER.search(path):
                continue
            ok = resolves(ups + path, base, known) if ups else path in known
            if not ok:
                reported.add((lineno, ups + path))
                problems.append(f"{rel}:{lineno}: names {ups + path!r}, which is not in the repository")
    if kind == "markdown":
        for lineno, line in enumerate(text.splitlines(), 1):
            for m in LINK.finditer(line):
                target = m.group(1)
                if SCHEME.match(target) or target.startswith(("#", "//")):
                    continue
                path = target.split("#", 1)[0].split("?", 1)[0]
                if not path or PLACEHOLDER.search(path):
                    continue
                ok = resolves(path.lstrip("/"), PurePosixPath("") if path.startswith("/") else base, known)
                if not ok and (lineno, path.rstrip("/")) not in reported:
                    problems.append(f"{rel}:{lineno}: link target {target!r} does not exist")
    return problems


def check_repository(root: Path = ROOT, files: list[str] | None = None) -> list[str]:
    """Every problem of the repository at ``root`` (or of ``files`` in it, which must also be listed by git)."""
    listed = repository_files(root)
    known = known_paths(listed)
    problems = []
    for rel in files if files is not None else listed:
        text = read_text(root, rel)
        if text is not None:
            problems += check_text(rel, text, known)
    return problems


def test_no_file_points_outside_the_repository():
    problems = check_repository()
    assert not problems, "references outside the repository or to missing paths:\n" + "\n".join(problems)


def j(*parts: str) -> str:
    """A path from its parts: the planted references below are spelled this way so that this file does not hold them."""
    return "/".join(parts)


def test_the_checker_catches_planted_bad_references(tmp_path):
    """A small repository with good and bad references: every bad one is reported once, no good one."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "run.py").write_text("x = 1\n")
    guide, run = j("docs", "guide.md"), j("scripts", "run.py")
    (tmp_path / "README.md").write_text(
        f"# Readme\n"
        f"Good: {guide}, `{run}`, [guide]({guide}#guide), `{j('docs', '<name>.md')}`, `{j('rules', '*.smk')}`,\n"
        f"{j('results', 'logs', 'x.log')}, `{j('scripts', '...')}`, [web](https://example.org/{j('docs', 'x.md')}).\n"
        f"Bad: see {j('..', 'shared', 'notes.md')} and {j('', 'work', 'main', 'data')}\n"
        f"and {j('', 'home', 'alice', 'weights')}, the missing {j('docs', 'missing.md')}, "
        f"and a [link]({j('docs', 'gone.md')}).\n")
    (tmp_path / "scripts" / "tool.py").write_text(
        f"import os  # as {j('configs', 'absent.yaml')} says\n"
        f"P = {j('bench', 'nope.py')!r}\n"
        f"n = 1 / 2  # {guide}\n")
    problems = check_repository(tmp_path)
    text = "\n".join(problems)
    assert len(problems) == 7, text
    for where in ("README.md:4:", "README.md:5:", j("scripts", "tool.py:1:"), j("scripts", "tool.py:2:")):
        assert where in text
    for missing in ("missing.md", "gone.md", "absent.yaml", "nope.py", "shared", "alice"):
        assert missing in text
    assert "guide.md" not in text and "run.py" not in text and "README.md:2:" not in text
