"""The README's commands as written: every `radlab` line in its shell blocks parses against the CLI
(verb, arguments, options), and every shipped file it names exists."""

import re
import shlex

import pytest
import typer

from radlab.cli import app

from .conftest import ROOT

PLACEHOLDER_FILES = {"experiments/my.yaml", "experiments/x.yaml"}  # the user's own experiment


def readme_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s#\s", line)[0].strip()
            for part in line.split(" | "):
                if re.match(r"(\.venv/bin/)?radlab\b", part):
                    commands.append(part)
    return commands


def test_the_readme_shows_the_commands_a_user_needs():
    verbs = {shlex.split(c)[1] for c in readme_commands()}
    assert {"run", "validate", "eval", "serve", "export", "sweep", "submit", "data", "ui"} <= verbs


@pytest.mark.parametrize("command", readme_commands())
def test_each_readme_command_parses_and_names_files_that_exist(command):
    # <id> stands for a value, [--follow] for an optional flag
    words = [re.sub(r"^<.*>$", "placeholder", w).strip("[]") for w in shlex.split(command)[1:]]
    verb, args, path = typer.main.get_command(app), list(words), ["radlab"]
    while hasattr(verb, "list_commands"):  # a group of verbs (typer carries its own click)
        name, args = args[0], args[1:]
        verb, path = verb.get_command(verb.context_class(verb), name), path + [name]
        assert verb is not None, f"{command}: no command {' '.join(path)}"
    verb.make_context(" ".join(path), args)  # a wrong option, a missing argument: a UsageError
    for word in words:
        if re.fullmatch(r"(experiments|serving)/[\w.-]+\.yaml", word) and word not in PLACEHOLDER_FILES:
            assert (ROOT / word).is_file(), f"{command}: {word} does not exist"
