"""Option layering: command line > environment > configuration file > defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from netatopd.config import OPTIONS, ConfigError, read_config_file, resolve


def write(tmp_path: Path, text: str, name: str = "netatopd.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_with_no_file(tmp_path: Path) -> None:
    options = resolve(["--config", write(tmp_path, "")], environ={})
    for option in OPTIONS:
        dest = option.flag[2:].replace("-", "_")
        expected = int(str(option.default), 8) if dest == "control_mode" else option.default
        assert getattr(options, dest) == expected
        assert options.sources[dest] == "default"


def test_precedence_command_line_environment_file(tmp_path: Path) -> None:
    config = write(
        tmp_path, 'run-dir = "/from/file"\ngc-interval-s = 3\nmax-flows = 7000\nno-history = true\n'
    )
    env = {"NETATOPD_GC_INTERVAL_S": "2.5", "NETATOPD_MAX_FLOWS": "8000"}
    options = resolve(["--config", config, "--max-flows", "9000"], environ=env)
    assert (options.run_dir, options.sources["run_dir"]) == ("/from/file", f"file {config}")
    assert (options.gc_interval_s, options.sources["gc_interval_s"]) == (
        2.5,
        "environment NETATOPD_GC_INTERVAL_S",
    )
    assert (options.max_flows, options.sources["max_flows"]) == (9000, "command line")
    assert options.no_history is True
    assert options.control_mode == 0o600


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = write(tmp_path, 'interface = "lo"\n')
    assert resolve([], environ={"NETATOPD_CONFIG": config}).interface == "lo"


@pytest.mark.parametrize(
    "text,message",
    [
        ("colour = 1\n", "unknown key 'colour'"),
        ('max-flows = "many"\n', "'many' is not a whole number"),
        ("max-flows = 2.5\n", "2.5 is not a whole number"),
        ("run-dir = 5\n", "5 is not text"),
        ("no-history = 3\n", "3 is not true or false"),
        ("max-flows = [\n", "is not valid TOML"),
    ],
)
def test_bad_files_are_refused_clearly(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_config_file(write(tmp_path, text))


def test_bad_values_from_any_source(tmp_path: Path) -> None:
    config = write(tmp_path, "")
    with pytest.raises(ConfigError, match="must be at least 1"):
        resolve(["--config", config], environ={"NETATOPD_MAX_FLOWS": "0"})
    with pytest.raises(ConfigError, match="must be one of auto, kernel, proc"):
        resolve(["--config", write(tmp_path, 'ownership = "magic"\n', "magic.toml")], environ={})
    with pytest.raises(ConfigError, match="not an octal mode"):
        resolve(["--config", config, "--control-mode", "rw"], environ={})
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        resolve(["--config", str(tmp_path / "missing.toml")], environ={})


def test_daemon_reports_a_config_error_in_one_sentence(tmp_path: Path) -> None:
    config = write(tmp_path, "colour = 1\n")
    done = subprocess.run(
        [sys.executable, "-m", "netatopd.daemon", "--config", config, "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown key 'colour'" in done.stderr and "Traceback" not in done.stderr


def test_check_prints_every_option_with_its_source(tmp_path: Path) -> None:
    config = write(tmp_path, f'run-dir = "{tmp_path / "run"}"\nno-atop-socket = true\n')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "netatopd.daemon",
            "--config",
            config,
            "--check",
            "--db",
            str(tmp_path / "h.db"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    for option in OPTIONS:
        assert f"  {option.flag[2:]} " in done.stdout
    assert f"run-dir                {tmp_path / 'run'}" in done.stdout
    assert f"(file {config})" in done.stdout and "(command line)" in done.stdout
    assert "libpcap loads" in done.stdout
    assert not (tmp_path / "run").exists()  # a check captures nothing and creates nothing


def _check(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    config = write(tmp_path, f'run-dir = "{tmp_path / "run"}"\nno-atop-socket = true\n')
    return subprocess.run(
        [sys.executable, "-m", "netatopd.daemon", "--config", config, "--check", *options],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_abbreviated_option_is_refused_by_name(tmp_path: Path) -> None:
    """Issue 15 item 9: '--capt kernel' was taken for --capture-timeout-ms (argparse's
    abbreviations) and failed on 'kernel' as a number; now it is named as unknown."""
    done = _check(tmp_path, "--capt", "kernel")
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert error == "netatopd: error: unrecognized arguments: --capt kernel", done.stderr
    assert "Traceback" not in done.stderr
    done = _check(tmp_path, "--capture-time", "5")
    assert done.returncode == 2
    assert "unrecognized arguments: --capture-time 5" in done.stderr, done.stderr


def test_the_whole_option_capture_kernel_is_the_capture_option(tmp_path: Path) -> None:
    done = _check(tmp_path, "--capture", "kernel")
    assert "capture                kernel" in done.stdout, done.stdout + done.stderr
    assert "invalid int value" not in done.stderr
    assert not (tmp_path / "run").exists()
