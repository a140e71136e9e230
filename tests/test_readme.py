"""The README and docs/*.md run as written.

Every fenced `python` block of README.md and docs/*.md runs in a fresh
Python process on the TensorFlow backend and must exit with status 0. The
blocks of one page run in order, in one temporary directory of their own
(as a reader following the page: a block may load a file an earlier block
of the same page saved). A block that cannot run offline is preceded by

    <!-- readme-test: skip (needs internet: why) -->

and is skipped with that reason, which must not be empty. Every relative
link of those pages must name an existing file (and an existing heading,
for `#anchor`s into Markdown), and the figures the README quotes from the
code (parameter counts, default run directories) must be the code's.
"""

import collections
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = [README, *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]

FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
SKIP = re.compile(r"^<!--\s*readme-test:\s*skip\s*\((.*)\)\s*-->\s*$")
MARKER = re.compile(r"^\s*<!--.*readme-test")
PYTHON = ("python", "py", "python3")

Block = collections.namedtuple("Block", "page line code skip")


def _relative(path):
    return os.path.relpath(path, ROOT)


def parse_blocks(text, page="README.md"):
    """The fenced code blocks of Markdown `text`: `(page, line, code, skip,
    language)` tuples, `skip` the reason of a skip marker right before the
    fence (blank lines between allowed) or `None`."""
    blocks = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent, fence, language = match.groups()
        start = index
        body = []
        index += 1
        while index < len(lines) and not (
            lines[index].strip().startswith(fence)
            and not lines[index].strip().strip(fence[0])
        ):
            line = lines[index]
            body.append(line[len(indent):] if line.startswith(indent)
                        else line)
            index += 1
        index += 1
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        skip = None
        if before >= 0:
            marker = SKIP.match(lines[before].strip())
            if marker:
                skip = marker.group(1).strip()
        blocks.append((page, start + 1, "\n".join(body) + "\n", skip,
                       language.lower()))
    return blocks


def python_blocks():
    blocks = []
    for path in PAGES:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for page, line, code, skip, language in parse_blocks(
            text, _relative(path)
        ):
            if language in PYTHON:
                blocks.append(Block(page, line, code, skip))
    return blocks


BLOCKS = python_blocks()


def test_parse_blocks_finds_fences_markers_and_languages():
    text = (
        "Intro\n\n```bash\nls\n```\n\n"
        "<!-- readme-test: skip (needs internet: weights) -->\n\n"
        "```python\nimport os\n```\n"
        "  ```python\n  x = 1\n  ```\n"
        "````python\n```\nnested\n````\n"
    )
    blocks = parse_blocks(text)
    assert [(b[1], b[4]) for b in blocks] == [
        (3, "bash"), (9, "python"), (12, "python"), (15, "python")
    ]
    assert blocks[1][2:4] == ("import os\n", "needs internet: weights")
    assert blocks[2][2:4] == ("x = 1\n", None)
    assert blocks[3][2] == "```\nnested\n"


def test_the_pages_hold_python_blocks():
    pages = {block.page for block in BLOCKS}
    assert "README.md" in pages
    assert len(BLOCKS) >= 5


def test_skip_markers_give_a_reason_and_precede_a_python_block():
    """A skip marker names why the block cannot run; one that is not right
    before a `python` block (a typo, a moved block) fails."""
    for path in PAGES:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        page = _relative(path)
        skipped = {block[1] for block in parse_blocks(text, page)
                   if block[3] is not None and block[4] in PYTHON}
        markers = [
            number for number, line in enumerate(text.splitlines(), 1)
            if MARKER.search(line)
        ]
        for number in markers:
            line = text.splitlines()[number - 1].strip()
            match = SKIP.match(line)
            assert match and match.group(1).strip(), (
                f"{page}:{number}: a readme-test marker must read "
                f"'<!-- readme-test: skip (REASON) -->'. Received: {line}"
            )
        assert len(skipped) == len(markers), (
            f"{page}: a readme-test marker at lines {markers} is not right "
            f"before a python block (skipped blocks: {sorted(skipped)})"
        )


_workdirs = {}


def _workdir(page, tmp_path_factory):
    if page not in _workdirs:
        name = re.sub(r"\W", "_", page)
        _workdirs[page] = tmp_path_factory.mktemp(name)
    return _workdirs[page]


@pytest.mark.tensorflow_only
@pytest.mark.parametrize(
    "block", BLOCKS, ids=[f"{b.page}:{b.line}" for b in BLOCKS]
)
def test_python_block_runs(block, tmp_path_factory):
    if block.skip is not None:
        pytest.skip(f"{block.page}:{block.line}: {block.skip}")
    cwd = _workdir(block.page, tmp_path_factory)
    env = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "PYTHONPATH": os.pathsep.join(
            [ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
        "MPLBACKEND": "Agg",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # Keep the user's ~/tensorflow_datasets and Keras config out of it.
        "HOME": str(cwd),
    }
    process = subprocess.run(
        [sys.executable, "-"], input=block.code, cwd=cwd, env=env,
        capture_output=True, text=True, timeout=900,
    )
    if process.returncode != 0:
        pytest.fail(
            f"{block.page}:{block.line} exited with {process.returncode}:\n"
            f"{block.code}\n--- stderr ---\n{process.stderr[-4000:]}"
        )


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?"
                  r"(?:\s+\"[^\"]*\")?\s*\)")


def _prose(text):
    """`text` without its fenced code blocks (links there are code)."""
    kept, fence = [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(2)
        elif fence is not None and line.strip().startswith(fence) and not (
            line.strip().strip(fence[0])
        ):
            fence = None
        elif fence is None:
            kept.append(line)
    return "\n".join(kept)


def slug(heading):
    """GitHub's anchor of a heading: lower case, markup and punctuation
    but `-` and `_` dropped, spaces to `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(text):
    seen = collections.Counter()
    result = set()
    for line in _prose(text).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            name = f"{base}-{seen[base]}" if seen[base] else base
            seen[base] += 1
            result.add(name)
    return result


def broken_links(path, root=ROOT):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    broken = []
    for target in LINK.findall(_prose(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # https:, mailto:, ...
        file_part, _, anchor = target.partition("#")
        full = (os.path.normpath(os.path.join(os.path.dirname(path),
                                              file_part))
                if file_part else path)
        if not os.path.exists(full):
            broken.append(
                f"{target} (no file {os.path.relpath(full, root)})"
            )
            continue
        if anchor and full.endswith(".md"):
            with open(full, encoding="utf-8") as f:
                if anchor not in anchors(f.read()):
                    broken.append(f"{target} (no heading #{anchor} in "
                                  f"{os.path.relpath(full, root)})")
    return broken


def test_link_check_catches_missing_files_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("# Results\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n\n## The layers\n\n"
        "[ok](docs/results.md) [ok](#the-layers) [ok](docs/results.md#results)"
        " ![ok](docs/results.md) [web](https://example.com/x.md)\n"
        "[bad](results.md) [bad](#no-such) [bad](docs/results.md#nope)\n"
        "```\n[code](not-a-link.md)\n```\n"
    )
    assert broken_links(str(page), root=str(tmp_path)) == [
        "results.md (no file results.md)",
        "#no-such (no heading #no-such in README.md)",
        "docs/results.md#nope (no heading #nope in docs/results.md)",
    ]
    assert slug("`keras-seqnorm train` and `compare`") == (
        "keras-seqnorm-train-and-compare"
    )


@pytest.mark.parametrize("path", PAGES, ids=[_relative(p) for p in PAGES])
def test_relative_links_point_at_existing_files(path):
    assert broken_links(path) == []


def _models_table():
    """The README's models table: `{name: (input shape, classes,
    trainable parameters)}`."""
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    header = next(i for i, line in enumerate(lines)
                  if line.startswith("| `get_model` name"))
    columns = [c.strip() for c in lines[header].strip("|").split("|")]
    rows = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(columns, (c.strip() for c in
                                   line.strip("|").split("|"))))
        name = cells["`get_model` name"].strip("`")
        shape = tuple(int(n) for n in cells["Default input"].split("x"))
        rows[name] = (shape, int(cells["Default classes"]),
                      int(cells["Trainable parameters"].replace(",", "")))
    return rows


# The rows built by the test: the quick ones, and WRN-28-10 for the
# CIFAR-100 figure. ResNet-34/50/56/110 take 3-4 s each to build (hundreds of
# layers); their rows come from the same `summary()` and were checked when
# written.
BUILT_ROWS = ("wrn28_10", "wrn16_4", "resnet20", "resnet18", "simplenet",
              "simplecnn")


@pytest.mark.tensorflow_only
def test_models_table_gives_the_built_models_parameters():
    """The README's models table lists every model, and its rows are what
    `get_model(name)` builds by default: input shape, classes, trainable
    parameters."""
    import keras

    from keras_seqnorm.models import MODELS
    from keras_seqnorm.models import get_model

    table = _models_table()
    assert sorted(table) == sorted(MODELS)
    for name in BUILT_ROWS:
        shape, classes, parameters = table[name]
        model = get_model(name)
        trainable = sum(int(keras.ops.size(w))
                        for w in model.trainable_weights)
        assert (model.input_shape[1:], model.output_shape[-1], trainable) == (
            shape, classes, parameters), name
        if name == "wrn28_10":
            # The README's CIFAR-100 figure: the classifier alone changes.
            features = model.get_layer("predictions").input.shape[-1]
            cifar100 = parameters + (features + 1) * (100 - classes)
            with open(README, encoding="utf-8") as f:
                assert f"{cifar100:,} with `num_classes=100`" in f.read()
        keras.backend.clear_session()


def _help_defaults(command, capsys):
    from keras_seqnorm import cli

    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    text = re.sub(r"(\w)- (\w)", r"\1-\2", text)  # argparse's wrapping
    return re.findall(r"(?i)default: (runs/[\w/-]+)", text)


@pytest.mark.parametrize(
    "command", ["train", "compare", "landscape", "tune", "reproduce"]
)
def test_readme_gives_each_commands_default_run_dir(command, capsys):
    """The default run directories `--help` gives are the README's."""
    defaults = _help_defaults(command, capsys)
    assert defaults, f"keras-seqnorm {command} --help gives no default"
    with open(README, encoding="utf-8") as f:
        readme = " ".join(f.read().split())
    for default in defaults:
        assert f"`{default}" in readme, (command, default)
