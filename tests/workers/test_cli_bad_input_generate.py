"""`catalogan generate` with bad input: one `Error:` line naming the option (or the --sku-file row) and the
rule, exit 2, no traceback, and nothing written: no job row, no tenant row on a fresh database, no --out
folder. Nothing here generates: each bad input fails before a model is loaded or a job is submitted."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from db import migrate
from db.cli_support import ExitCode
from db.engine import make_engine, make_session_factory
from db.storage import open_store
from db.tables import Job, Tenant
from scheduler.cli.root import cli
from tests.pipeline import make_model_version, tiny_checkpoint

CATEGORIES = ("sneaker", "dress")


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A migrated SQLite database holding one registered tiny model, `fcg@1` (sneaker, dress), and no tenant;
    the working folder is `tmp_path`, where the tests name a relative --out."""
    url = f"sqlite:///{tmp_path / 'cat.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    store_url = (tmp_path / "store").as_uri()
    make_model_version(
        make_session_factory(engine),
        checkpoint=tiny_checkpoint(),
        store=open_store(store_url),
        categories=CATEGORIES,
        name="fcg",
    )
    engine.dispose()
    for name in [name for name in os.environ if name.startswith("CATALOGAN_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CATALOGAN_DATABASE_URL", url)
    monkeypatch.setenv("CATALOGAN_STORAGE_URL", store_url)
    monkeypatch.setenv("CATALOGAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def _generate(*args: str) -> Result:
    # --no-worker and a short --timeout: a bad input that slipped through ends the run at once, not after 1 h.
    return CliRunner().invoke(
        cli, ["generate", "--model", "fcg@1", "--no-worker", "--timeout", "5", *args], prog_name="catalogan"
    )


def _generate_starting_a_worker() -> Result:
    # A one-image job that would start `catalogan worker` (no --no-worker): for the worker-settings checks.
    return CliRunner().invoke(
        cli,
        ["generate", "--model", "fcg@1", "--category", "sneaker=1", "--seed", "41", "--out", "o41"],
        prog_name="catalogan",
    )


def _rows(folder: Path, table: type[Job] | type[Tenant]) -> int:
    engine = make_engine(f"sqlite:///{folder / 'cat.db'}")
    with make_session_factory(engine)() as session:
        count = int(session.scalar(select(func.count()).select_from(table)) or 0)
    engine.dispose()
    return count


def _refused(result: Result, folder: Path) -> str:
    """The one `Error:` line of a refused run (exit 2, no traceback), after checking nothing was written."""
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert _rows(folder, Job) == 0 and _rows(folder, Tenant) == 0
    return errors[0]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda folder: (folder / "out").symlink_to("/nonexistent"), "leads nowhere"),
        (lambda folder: (folder / "out").symlink_to(folder / "cat.db"), "is a file"),
        (lambda folder: (folder / "out").write_text("a file"), "is a file"),  # click.Path's own check
    ],
    ids=["dangling-link", "link-to-a-file", "a-file"],
)
def test_an_out_that_cannot_be_a_folder_is_refused_before_a_job_is_submitted(
    stack: Path, make: Callable[[Path], object], reason: str
) -> None:
    """Given --out naming a dangling symbolic link, a link to a file, or a file / When generate runs / Then
    one line names --out and why, exit 2, no job or tenant row, and the path is as it was."""
    make(stack)
    before = os.readlink(stack / "out") if (stack / "out").is_symlink() else None
    line = _refused(_generate("--category", "sneaker=1", "--out", "out"), stack)
    assert "'--out'" in line and reason in line, line
    assert (os.readlink(stack / "out") if (stack / "out").is_symlink() else None) == before


def test_an_out_below_a_dangling_link_is_refused(stack: Path) -> None:
    """Given --out `dangling/sub` below a dangling link / When generate runs / Then --out is refused (its
    `mkdir` would fail only after the job was submitted)."""
    (stack / "dangling").symlink_to("/nonexistent")
    line = _refused(_generate("--category", "sneaker=1", "--out", "dangling/sub"), stack)
    assert "'--out'" in line and "leads nowhere" in line, line


def test_output_folder_problem_takes_a_link_to_a_folder_and_a_new_path(tmp_path: Path) -> None:
    """A symbolic link to a folder and a path below a writable folder can be output folders; nothing is made."""
    from db.cli_support import output_folder_problem

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert output_folder_problem(tmp_path / "link") is None
    assert output_folder_problem(tmp_path / "new" / "deeper") is None
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "inf"])
def test_timeout_must_be_a_positive_finite_number(stack: Path, timeout: str) -> None:
    """Given --timeout -1, 0, nan or inf / When generate runs / Then --timeout is refused (exit 2) and no job
    row or --out folder is left (it submitted the job and gave up at once, or never gave up)."""
    line = _refused(_generate("--category", "sneaker=1", "--out", "out", "--timeout", timeout), stack)
    assert "'--timeout'" in line, line
    assert not (stack / "out").exists()


def test_an_unknown_category_on_a_fresh_database_leaves_no_tenant(stack: Path) -> None:
    """Given a fresh database and a category the model does not have / When generate runs / Then the line names
    the --category as typed and lists the model's categories, and no tenant row was committed."""
    line = _refused(_generate("--category", "sneaker=1", "--category", "nosuchcat=2", "--out", "o"), stack)
    assert line == (
        "Error: --category nosuchcat=2: category: 'nosuchcat' is not a category of model fcg@1 "
        "(one of: sneaker, dress)"
    ), line
    assert not (stack / "o").exists()


def test_an_unknown_category_in_a_sku_file_names_its_row(stack: Path) -> None:
    """Given a SKU file whose third line names an unknown category / When generate runs / Then the line names
    `--sku-file row 3` (the file's line, comments counted) and no tenant row was committed."""
    (stack / "skus.csv").write_text("# sku,category\nS1,sneaker\nS2,hat,2\n")
    line = _refused(_generate("--sku-file", "skus.csv", "--out", "o"), stack)
    assert line.startswith("Error: --sku-file row 3: category: 'hat' is not a category of model fcg@1"), line
    assert "(one of: sneaker, dress)" in line


@pytest.mark.parametrize("count", ["²", "٣", "x", "-1", "1.5", ""])
def test_a_category_count_must_be_ascii_digits(stack: Path, count: str) -> None:
    """Given --category sneaker=² (or another count that is no whole number) / When generate runs / Then one
    line names the --category as typed and the rule, not `int()`'s message."""
    line = _refused(_generate("--category", f"sneaker={count}", "--out", "o"), stack)
    assert line == (
        f"Error: --category 'sneaker={count}': the count must be a whole number 1..10000000, e.g. sneaker=16"
    ), line
    assert not (stack / "o").exists()


def test_a_sku_file_count_must_be_ascii_digits(stack: Path) -> None:
    """Given a SKU file whose third line has the count `²` / When generate runs / Then the line names
    `--sku-file row 3`, the count and the rule."""
    (stack / "skus.csv").write_text("S1,sneaker,1\n\nS2,dress,²\n", encoding="utf-8")
    line = _refused(_generate("--sku-file", "skus.csv", "--out", "o"), stack)
    assert line == "Error: --sku-file row 3: count '²': the count must be a whole number 1..10000000", line


def test_a_sku_file_that_is_not_utf8_is_named_with_its_row(stack: Path) -> None:
    """Given a SKU file with a byte that is not UTF-8 on its second line / When generate runs / Then one line
    names --sku-file, says it must be UTF-8 text and where the bad byte is."""
    (stack / "skus.csv").write_bytes(b"S1,sneaker,1\nS\x802,dress\n")
    line = _refused(_generate("--sku-file", "skus.csv", "--out", "o"), stack)
    assert line == (
        "Error: --sku-file 'skus.csv': must be UTF-8 text (CSV): byte 0x80 at offset 14 (row 2) is not UTF-8"
    ), line


def test_a_sku_file_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    """A spreadsheet's UTF-8 export starts with a BOM: it is not part of the first SKU."""
    from workers.generate_command import parse_items

    (tmp_path / "skus.csv").write_bytes("S1,sneaker,2\n".encode("utf-8-sig"))
    assert parse_items((), tmp_path / "skus.csv") == [
        {"sku": "S1", "category": "sneaker", "count": 2, "client_item_id": "S1"}
    ]


def test_generate_help_still_loads() -> None:
    """The --timeout type is a click type (the command's --help lists it)."""
    result = CliRunner().invoke(cli, ["generate", "--help"], prog_name="catalogan")
    assert result.exit_code == 0 and "--timeout" in result.output


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["--seed", "-1"], "Error: --seed -1: "),
        (["--chunk-size", "0"], "Error: --chunk-size 0: "),
        (["--truncation", "2"], "Error: --truncation 2: "),
        (["--model", "fashion-cgan@x"], "Error: --model 'fashion-cgan@x': must be 'name' or 'name@version'"),
        (["--model", ""], "Error: --model '': must be 'name' or 'name@version'"),
    ],
    ids=["seed", "chunk-size", "truncation", "model-version", "empty-model"],
)
def test_a_bad_option_is_named_as_typed_not_as_the_apis_field(
    stack: Path, args: list[str], start: str
) -> None:
    """Given --seed -1, --chunk-size 0, --truncation 2, --model fashion-cgan@x or --model '' / When generate
    runs / Then the one line names the option and its value as typed (it said `seed: ...`, and `--model ''`
    quietly ran the default model), exit 2, and nothing was written."""
    line = _refused(_generate("--category", "sneaker=1", *args, "--out", "o"), stack)
    assert line.startswith(start), line
    assert not (stack / "o").exists()


@pytest.mark.parametrize(
    ("row", "sku"),
    [('"A1",sneaker', "A1"), ('"A,1",sneaker,2', "A,1"), ('"A 1", sneaker # note', "A 1")],
    ids=["quoted", "quoted-comma", "spaces-and-comment"],
)
def test_a_sku_file_is_read_as_csv(tmp_path: Path, row: str, sku: str) -> None:
    """Given a SKU file whose row quotes its SKU, as a spreadsheet writes it / When its items are read / Then
    the SKU is the value inside the quotes (a split at every comma kept the quotes, and cut `"A,1"` in two)."""
    from workers.generate_command import parse_items

    (tmp_path / "skus.csv").write_text(f"# sku,category,count\n{row}\n")
    (item,) = parse_items((), tmp_path / "skus.csv")
    assert (item["sku"], item["category"], item["client_item_id"]) == (sku, "sneaker", sku)


def test_a_sku_row_that_is_not_csv_is_named_with_its_row(stack: Path) -> None:
    """Given a SKU file whose second row has text after a closing quote / When generate runs / Then one line
    names `--sku-file row 2` and says it is not a CSV record, exit 2, nothing written."""
    (stack / "skus.csv").write_text('S1,sneaker\n"S2"x,dress\n')
    line = _refused(_generate("--sku-file", "skus.csv", "--out", "o"), stack)
    assert line.startswith("Error: --sku-file row 2: not a CSV record"), line


def test_a_quoted_sku_with_a_comma_reaches_the_job_without_its_quotes(stack: Path) -> None:
    """Given a SKU file row `"A,1",sneaker` / When generate runs (no worker, a 1 s timeout) / Then the job's
    item is SKU `A,1`: the job was submitted, and only the wait ran out."""
    from db.tables import JobItem

    (stack / "skus.csv").write_text('"A,1",sneaker\n')
    result = _generate("--sku-file", "skus.csv", "--seed", "1", "--out", "o", "--timeout", "1")
    assert result.exit_code == ExitCode.CONFLICT, result.output
    engine = make_engine(f"sqlite:///{stack / 'cat.db'}")
    with make_session_factory(engine)() as session:
        assert list(session.scalars(select(JobItem.sku))) == ["A,1"]
    engine.dispose()


def test_a_timeout_says_the_job_goes_on_and_how_to_resume_it(stack: Path) -> None:
    """Given no worker and --timeout 1 / When generate gives up / Then exit 4 (unchanged) and the one line says
    the job goes on when the same command runs again."""
    result = _generate("--category", "sneaker=1", "--seed", "1", "--out", "o", "--timeout", "1")
    assert result.exit_code == ExitCode.CONFLICT, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert "did not finish within 1 s" in line and "goes on when the same command runs again" in line, line


def test_a_bad_worker_setting_is_refused_before_anything_is_submitted(
    stack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given CATALOGAN_WORKER_CONCURRENCY=abc / When generate runs and would start a worker / Then one line
    names the variable, exit 6 (it was `a [...] process exited with 6`, exit 4, after the job was submitted
    and --out made), and no job row, tenant row or --out folder was made."""
    monkeypatch.setenv("CATALOGAN_WORKER_CONCURRENCY", "abc")
    result = _generate_starting_a_worker()
    assert result.exit_code == ExitCode.CONFIG, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: CATALOGAN_WORKER_CONCURRENCY: "), line
    assert _rows(stack, Job) == 0 and _rows(stack, Tenant) == 0
    assert not (stack / "o41").exists()


def test_ctrl_c_while_waiting_is_one_line_naming_the_job_and_exit_130(
    stack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a job submitted and being waited for / When Ctrl-C arrives / Then one line says the job goes on
    when the same command runs again and the exit code is 130 (it was click's `Aborted!`, exit 1: a bug)."""
    import workers.generate_command

    def interrupt(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(workers.generate_command, "_wait", interrupt)
    result = _generate("--category", "sneaker=1", "--seed", "1", "--out", "o")
    assert result.exit_code == ExitCode.INTERRUPTED == 130, result.output
    engine = make_engine(f"sqlite:///{stack / 'cat.db'}")
    with make_session_factory(engine)() as session:
        (job_id,) = session.scalars(select(Job.id))
    engine.dispose()
    assert result.output.strip().splitlines() == [
        f"interrupted: job {job_id} goes on when the same command runs again"
    ]


def test_ctrl_c_in_any_command_is_one_line_and_exit_130(stack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a command interrupted before it has anything to say about its work / When Ctrl-C arrives / Then the
    shared wrapper prints `interrupted` and exits 130, not click's `Aborted!` and 1."""
    import workers.generate_command

    def interrupt(_request: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(workers.generate_command, "run_generate", interrupt)
    result = _generate("--category", "sneaker=1", "--out", "o")
    assert (result.exit_code, result.output.strip()) == (ExitCode.INTERRUPTED, "interrupted"), result.output


def test_a_worker_that_refuses_a_setting_passes_its_exit_code_6_through(
    stack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a setting only the started worker refuses (the up-front check bypassed) / When generate runs /
    Then it exits 6, not 4, and its one line points at the worker's log in the data folder (it said
    `see catalogan-data/logs/` whatever the data folder)."""
    import workers.generate_command

    monkeypatch.setattr(workers.generate_command, "check_worker_settings", lambda: None)
    monkeypatch.setenv("CATALOGAN_WORKER_CONCURRENCY", "abc")
    result = _generate_starting_a_worker()
    assert result.exit_code == ExitCode.CONFIG, result.output
    (line,) = result.output.strip().splitlines()
    assert (
        line
        == f"Error: `catalogan worker` refused a setting (exit 6): see {stack / 'data' / 'logs' / 'worker.log'}"
    )
    assert "CATALOGAN_WORKER_CONCURRENCY" in (stack / "data" / "logs" / "worker.log").read_text()
