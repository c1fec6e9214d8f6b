"""options_for: the parsed options a command hands to the library function or settings dataclass it calls;
command_error: the one-line error and the exit code (2 bad input, 1 a failure at run time)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from pipelines.cli.parsers import command_error, options_for


@dataclass
class _Settings:
    steps: int = 10
    guidance: float = 1.0


def _run(out_dir: str, *, steps: int = 1, log: bool = True, **extra: object) -> None:
    """A library function: positional out_dir, keyword options, a **kwargs that must not swallow the namespace."""


def test_takes_the_options_named_like_the_targets_parameters():
    ns = argparse.Namespace(steps=20, guidance=4.0, port=8000)
    assert options_for(_Settings, ns) == {"steps": 20, "guidance": 4.0}
    assert _Settings(**options_for(_Settings, ns)) == _Settings(steps=20, guidance=4.0)


def test_given_arguments_add_to_and_replace_the_options():
    ns = argparse.Namespace(out_dir="a", steps=3, no_log=True, verbose=True)
    got = options_for(_run, ns, log=not ns.no_log, steps=5)
    assert got == {"out_dir": "a", "steps": 5, "log": False}  # **extra does not take `verbose` or `no_log`


def test_an_option_the_namespace_lacks_keeps_the_targets_default():
    assert options_for(_Settings, argparse.Namespace(steps=7)) == {"steps": 7}
    with pytest.raises(TypeError):
        _run(**options_for(_run, argparse.Namespace(steps=7)))  # out_dir has no default and no option


def test_config_overrides_may_follow_the_options(capsys):
    # `ditscale data train-vae steps=3 --print-config out=x` ("unrecognized arguments: out=x" before), a
    # sub-command's parser included
    from pipelines.cli.data import main as data_main

    assert data_main(["train-vae", "steps=3", "--print-config", "out=xdir"]) == 0
    printed = capsys.readouterr().out
    assert "out: xdir" in printed.splitlines() and "steps: 3" in printed.splitlines()


def test_help_says_an_optional_section_is_absent_until_one_of_its_keys_is_set():
    from pipelines.cli.config_args import describe_keys
    from pipelines.encoders.train_vae import TrainVAEConfig

    lines = describe_keys(TrainVAEConfig)
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("source"))
    # it listed `source.kind = 'builtin'` as if a source were the default (it is None: the built-in shapes)
    assert lines[at].strip().startswith("source: SourceConfig | None = None  # none unless a source.* key is set")
    assert lines[at + 1].strip().startswith("source.kind:")


@pytest.mark.parametrize(
    "exc, code, line",
    [
        (ValueError("--steps 0: must be >= 1"), 2, "ditscale x: error: --steps 0: must be >= 1"),
        (FileNotFoundError(2, "No such file or directory", "ckpt"), 2, "No such file or directory: 'ckpt'"),
        (NotADirectoryError(20, "Not a directory", "afile/sub"), 2, "Not a directory: 'afile/sub'"),
        (PermissionError(13, "Permission denied", "/out"), 1, "ditscale x: error: /out: Permission denied"),
        (OSError(28, "No space left on device", "/out/a.parquet"), 1, "/out/a.parquet: No space left on device"),
        (OSError("AWS Error NETWORK_CONNECTION"), 1, "ditscale x: error: AWS Error NETWORK_CONNECTION"),
    ],
)
def test_command_errors_say_what_and_exit_2_for_bad_input_1_at_run_time(capsys, exc, code, line):
    assert command_error("x", exc) == code
    err = capsys.readouterr().err
    assert line in err and err.count("\n") == 1
