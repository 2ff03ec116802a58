"""Every Snakemake command that README.md and docs/*.md show, and every paper item's (target, config) pair in the
README's table of paper items, dry-runs (``snakemake -n``) from the repository root without the network, so that a
command gone stale (a target no rule makes, an option Snakemake no longer takes, a config that fails validation)
fails here rather than for a reader.

The commands are extracted from the documents, not copied: every line of a fenced code block that starts with
``snakemake`` or ``.venv/bin/snakemake`` (backslash continuations joined, ``#`` comments dropped), and every inline
code span that starts with ``snakemake ``. The dry run needs no weights and no data: the paper configs name hub
models, which the config checks and the memory requests take without a download (as in tests/test_paper_smoke.py).
What the offline dry run cannot take is listed below with the reason, and each entry must still occur in the
documents, so that the lists cannot outlive them.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

import pytest

from workflows.runs import ROOT, SNAKEMAKE, run

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: how a documented command may call Snakemake
PROGRAMS = ("snakemake", ".venv/bin/snakemake")
DRY_RUN_FLAGS = ("-n", "--dry-run", "--dryrun")
#: options that the dry run leaves out of a documented command (it dry-runs the rest), and why
LEFT_OUT = {
    "--use-conda": "Snakemake asks `conda info` even in a dry run, and this machine has the venv, not conda; "
                   "tests/test_envs.py checks that the conda envs cover the scripts' imports",
}
#: documented commands that are not dry-run at all, by an option they carry, and why
NOT_RUN = {
    "--unlock": "removes the checkout's locks instead of planning jobs (with -n too), which would unlock a Snakemake "
                "running in this checkout; the docs show the same command without it beside it, and that is dry-run",
    "--report": "writes the Snakemake report of a finished run (over the docs' results/report.zip) instead of "
                "planning jobs; tests/test_config_matrix.py builds a report from a finished run",
}
#: placeholders a documented command may hold, and what the dry run puts in their place
PLACEHOLDERS = {"<config>": "configs/revelio.yaml"}
#: the network stays off in every dry run (the hub client refuses to connect)
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
DRY_RUN_TIMEOUT_S = 300


@dataclass(frozen=True)
class Documented:
    """One Snakemake command as a document shows it: where (``file:line``) and its line (continuations joined)."""

    where: str
    line: str

    @property
    def words(self) -> tuple[str, ...]:
        return words_of(self.line, self.where)


def fenced_blocks(text: str) -> list[tuple[int, list[str]]]:
    """The fenced code blocks of a Markdown text (fences may be indented, as in a list item): for each, the
    1-based line number of its first line after the opening fence, and its lines."""
    blocks, start = [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            if start is None:
                start = i + 1
            else:
                blocks.append((start + 1, lines[start:i]))
                start = None
    if start is not None:
        raise ValueError(f"a fenced code block opened at line {start} is never closed")
    return blocks


def joined_lines(first: int, lines: list[str]) -> list[tuple[int, str]]:
    """``lines`` (numbered from ``first``) with each line ending in a backslash joined to the next, stripped: a
    (line number of the first, text) pair per logical line."""
    out, pending, at = [], "", first
    for number, line in enumerate(lines, first):
        if not pending:
            at = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((at, (pending + line).strip()))
        pending = ""
    return out


def words_of(command: str, where: str) -> tuple[str, ...]:
    """The words of one shell command line (shell quoting, ``#`` comments dropped); a line that chains several
    commands (``&&``, ``||``, ``;``, ``|``) is refused, naming it."""
    words = tuple(shlex.split(command, comments=True))
    chained = [w for w in words if w in ("&&", "||", ";", "|")]
    if chained:
        raise ValueError(f"{where}: {command!r} chains commands with {chained[0]!r}; give one command per line")
    return words


def block_commands(text: str, name: str) -> list[Documented]:
    """The Snakemake commands of the fenced code blocks of the Markdown ``text`` of the document ``name``: each
    logical line whose first word is one of ``PROGRAMS``."""
    return [Documented(f"{name}:{at}", line)
            for first, lines in fenced_blocks(text)
            for at, line in joined_lines(first, lines)
            if line.split(" ", 1)[0] in PROGRAMS]


def inline_commands(text: str, name: str) -> list[Documented]:
    """The Snakemake commands of the inline code spans outside the fenced blocks of the Markdown ``text`` of the
    document ``name``: each span that starts with ``snakemake ``; a span broken over lines is read as one line."""
    lines = text.splitlines()
    for first, block in fenced_blocks(text):
        lines[first - 2:first + len(block)] = [""] * (len(block) + 2)  # the block and its two fences
    text = "\n".join(lines)
    found = []
    for span in re.finditer(r"(?<!`)`(snakemake [^`]+)`(?!`)", text):
        where = f"{name}:{text.count(chr(10), 0, span.start()) + 1}"
        found.append(Documented(where, " ".join(span[1].split())))
    return found


def documented_commands() -> list[Documented]:
    """Every Snakemake command of README.md and docs/*.md, in document order (blocks, then inline spans)."""
    return [c for path in DOCUMENTS
            for c in block_commands(path.read_text(), path.relative_to(ROOT).as_posix())
            + inline_commands(path.read_text(), path.relative_to(ROOT).as_posix())]


def dry_run_words(doc: Documented) -> tuple[str, ...]:
    """The command that dry-runs the documented one: its ``PLACEHOLDERS`` filled in, then Snakemake from this venv
    with ``-n`` first and the documented dry run flags and ``LEFT_OUT`` options removed. A placeholder (``<...>``)
    not in ``PLACEHOLDERS`` is refused, naming it."""
    line = doc.line
    for placeholder, value in PLACEHOLDERS.items():
        line = line.replace(placeholder, value)
    words = words_of(line, doc.where)
    unknown = re.search(r"<[^<>]+>", " ".join(words))
    if unknown:
        raise ValueError(f"{doc.where}: placeholder {unknown[0]!r} in {doc.line!r} is not in PLACEHOLDERS")
    return (*SNAKEMAKE, "-n", *(w for w in words[1:] if w not in DRY_RUN_FLAGS and w not in LEFT_OUT))


def not_run_reason(words: tuple[str, ...]) -> str | None:
    """Why the documented command ``words`` is not dry-run (``NOT_RUN``), or None when it is."""
    return next((why for option, why in NOT_RUN.items() if option in words), None)


def dry_runs() -> tuple[dict[tuple[str, ...], list[str]], list[str]]:
    """{dry-run command: where the documents show it}, one entry per distinct command in document order, and the
    error of each documented command that cannot be made a dry run (a chained line, an unknown placeholder): these
    fail a test of their own rather than the collection of this file."""
    runs: dict[tuple[str, ...], list[str]] = {}
    problems = []
    for doc in documented_commands():
        try:
            if not_run_reason(doc.words) is None:
                runs.setdefault(dry_run_words(doc), []).append(doc.where)
        except ValueError as error:
            problems.append(str(error))
    return runs, problems


def paper_item_table() -> dict[str, list[str]]:
    """{config: its targets} from the README's table of paper items: every table row whose second cell is a
    ``figures/....png`` target and whose third is a ``.yaml`` config, each as one code span."""
    pairs: dict[str, list[str]] = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 4 and re.fullmatch(r"`[^`]*/figures/[^`]+\.png`", cells[2]) and \
                re.fullmatch(r"`[^`]+\.yaml`", cells[3]):
            pairs.setdefault(cells[3].strip("`"), []).append(cells[2].strip("`"))
    return pairs


def assert_dry_run(words: tuple[str, ...], where: str) -> None:
    """Run ``words`` from the repository root with the network off; fail naming ``where`` and the end of its
    output when it exits non-zero."""
    proc = run(list(words), env=OFFLINE, timeout=DRY_RUN_TIMEOUT_S, check=False)
    assert proc.returncode == 0, (f"the command documented at {where} fails its dry run (exit {proc.returncode}):\n"
                                  f"{shlex.join(words)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


DRY_RUNS, PROBLEMS = dry_runs()


@pytest.mark.parametrize("words", [pytest.param(w, id=f"{where[0]}: {' '.join(w[len(SNAKEMAKE):])}")
                                   for w, where in DRY_RUNS.items()])
def test_documented_command_dry_runs(words):
    assert_dry_run(words, ", ".join(DRY_RUNS[words]))


def test_every_documented_command_can_be_dry_run():
    """The documents show Snakemake commands, and each one is dry-run or listed in NOT_RUN."""
    assert DRY_RUNS and not PROBLEMS, "\n".join(PROBLEMS) or "no Snakemake command found in the documents"


@pytest.mark.parametrize("config", sorted(paper_item_table()))
def test_paper_items_dry_run_with_their_config(config):
    """All of a config's targets in the README's table in one dry run, the config standing alone, as the README's
    commands for the paper items run it."""
    targets = paper_item_table()[config]
    assert_dry_run((*SNAKEMAKE, "-n", "--configfile", config, "--replace-workflow-config", *targets),
                   f"README.md, paper items of {config}")


def test_the_paper_item_table_has_every_item_once():
    """The table's rows, as this file reads them, are the catalog's items, each once: no row escapes the dry runs."""
    from difflens.report.catalog import ITEMS

    targets = [t for ts in paper_item_table().values() for t in ts]
    keys = [re.search(r"figures/(\w+/\w+)\.png$", t)[1] for t in targets]
    assert sorted(keys) == sorted(ITEMS), sorted(set(keys) ^ set(ITEMS))


def test_every_exception_is_still_documented():
    """Each option of LEFT_OUT and NOT_RUN and each placeholder occurs in a documented command: an entry the
    documents no longer need is deleted here, so that the lists say what the dry runs leave out, no more."""
    docs = documented_commands()
    words = {w for doc in docs for w in doc.line.split()}
    stale = [option for option in (*LEFT_OUT, *NOT_RUN) if option not in words]
    stale += [p for p in PLACEHOLDERS if not any(p in doc.line for doc in docs)]
    assert not stale, f"no documented command holds {stale}: delete them from this test's lists"


def test_the_extraction_finds_block_inline_and_continued_commands():
    """A stand-in document: a command with a comment in a bash block, one continued over two lines, a chained line
    that starts with make, a bare command in an indented untagged block and a span broken over lines are each found
    at their line; the span in the block's comment is not read as an inline command."""
    text = ("Run `snakemake --cores 2\nresults/x.txt` or:\n\n```bash\nsnakemake -n all   # dry\n"
            "  .venv/bin/snakemake --profile p \\\n    --until a b\nmake demo && snakemake\n```\n\n"
            "  ```\n  snakemake   # or `snakemake --cores 1`\n  ```\n")
    got = [(d.where, d.words) for d in block_commands(text, "doc.md") + inline_commands(text, "doc.md")]
    assert got == [("doc.md:5", ("snakemake", "-n", "all")),
                   ("doc.md:6", (".venv/bin/snakemake", "--profile", "p", "--until", "a", "b")),
                   ("doc.md:12", ("snakemake",)),
                   ("doc.md:1", ("snakemake", "--cores", "2", "results/x.txt"))]
    assert dry_run_words(Documented("doc.md:5", "snakemake -n all --use-conda   # dry")) == (*SNAKEMAKE, "-n", "all")
    filled = dry_run_words(Documented("doc.md:7", "snakemake --configfile <config> -n"))
    assert filled == (*SNAKEMAKE, "-n", "--configfile", PLACEHOLDERS["<config>"])
    with pytest.raises(ValueError, match=r"doc.md:9: .*'&&'"):
        words_of("snakemake -n && make demo", "doc.md:9")
    with pytest.raises(ValueError, match="doc.md:3: placeholder '<figure file>'"):
        dry_run_words(Documented("doc.md:3", "snakemake --cores 2 <figure file>"))


def test_paper_config_commands_on_a_workstation_cap_the_gpu_jobs():
    """A documented command that runs a paper config outside SLURM gives the local profile and --resources gpu=<n>,
    so that --cores cannot start more GPU jobs than there are GPUs (each takes its own: difflens.devices)."""
    local = [doc for doc in documented_commands() if any(w.startswith("configs/") for w in doc.words)
             and "profiles/slurm" not in doc.words and not_run_reason(doc.words) is None]
    assert local, "no documented command runs a paper config on a workstation"
    for doc in local:
        words = doc.words
        assert "--profile" in words and words[words.index("--profile") + 1] == "profiles/local", doc.where
        assert "--resources" in words and re.fullmatch(r"gpu=\d+", words[words.index("--resources") + 1]), doc.where
