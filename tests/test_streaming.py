"""Hadoop Streaming on the fog, and loading FILE.py:NAME by its definitions only.

First the pure parts (keys, the sort against `LC_ALL=C sort` itself, the sort's spilled runs,
inputs, the loader's rule); then whole jobs on one real local fog of two nodes: the classic
word-count scripts against the shell pipeline, three reducers, map-only, a combiner, `-file`,
a failing mapper, a large key group, and the CLI with Hadoop's own options.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fogwheel.client import Client
from fogwheel.localfog import LocalFog
from fogwheel.mapreduce import JobFailed, Streaming, run_streaming, streamtask
from fogwheel.mapreduce.loader import Refused, load
from fogwheel.mapreduce.streaming import hadoop_settings, input_files
from fogwheel.mapreduce.streamtask import key_of, order, sorted_lines

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "examples" / "streaming"
MAPPER, REDUCER = SCRIPTS / "mapper.py", SCRIPTS / "reducer.py"
WORDS = [f"w{i}" for i in range(500)] + ["The", "the", "a", "Zebra", "zebra", "naïve", "_x", "B"]


def write_text(path: Path, lines: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(lines):
            f.write(" ".join(rng.choices(WORDS, k=rng.randint(0, 12))) + "\n")
    return path


def shell(command: str, pipefail: bool = True) -> bytes:
    """What bash prints for `command`, in the C locale (the sort Hadoop users compare with)."""
    env = {**os.environ, "LC_ALL": "C"}
    options = ["-o", "pipefail"] if pipefail else []
    return subprocess.run(
        ["bash", *options, "-c", command], capture_output=True, check=True, env=env
    ).stdout


def pipeline(inputs: list[Path], reducer: str = f"python3 {REDUCER}") -> bytes:
    cat = " ".join(map(str, inputs))
    return shell(f"cat {cat} | python3 {MAPPER} | sort | {reducer}")


def concatenated(paths: list[Path]) -> bytes:
    return b"".join(p.read_bytes() for p in paths)


# -- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "key"),
    [
        (b"word\t1\n", b"word"),
        (b"a b\tc\td\n", b"a b"),  # the first tab ends the key
        (b"no tab at all\n", b"no tab at all"),  # the whole line is the key
        (b"\tvalue\n", b""),
        (b"key\t\n", b"key"),
    ],
)
def test_a_key_is_what_precedes_the_first_tab(line: bytes, key: bytes) -> None:
    assert key_of(line) == key


lines_st = st.lists(
    st.builds(
        lambda k, v, tab: k + (b"\t" + v if tab else b"") + b"\n",
        st.binary(max_size=4).map(lambda b: bytes(c % 64 + 32 for c in b)),  # no tab, no \n
        st.binary(max_size=4).map(lambda b: bytes(c % 95 + 32 for c in b)),
        st.booleans(),
    ),
    max_size=60,
)


@settings(max_examples=40, deadline=None)
@given(lines_st)
def test_the_sort_is_lc_all_c_sort_for_keys_without_bytes_below_tab(lines: list[bytes]) -> None:
    got = sorted(lines, key=order)
    want = subprocess.run(
        ["sort"], input=b"".join(lines), capture_output=True, env={"LC_ALL": "C"}, check=True
    ).stdout
    assert b"".join(got) == want


@settings(max_examples=30, deadline=None)
@given(
    lines_st,
    st.integers(min_value=1, max_value=9),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=2, max_value=4),
)
def test_a_sort_spilled_in_runs_equals_a_sort_in_memory_and_keeps_keys_together(
    tmp_path_factory: pytest.TempPathFactory,
    lines: list[bytes],
    run_lines: int,
    run_bytes: int,
    fan_in: int,
) -> None:
    work = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(streamtask, "RUN_LINES", run_lines)
        mp.setattr(streamtask, "RUN_BYTES", run_bytes)
        mp.setattr(streamtask, "FAN_IN", fan_in)
        got = list(sorted_lines(iter(lines), work))
    assert got == sorted(lines, key=order)
    keys = [key_of(line) for line in got]
    assert keys == sorted(keys)  # every key's lines are one group
    assert not list(work.glob("run-*"))  # the runs are gone


def test_inputs_are_files_directories_globs_and_comma_lists(tmp_path: Path) -> None:
    for name in ["a.txt", "b.txt", "_SUCCESS", ".hidden", "c.log"]:
        (tmp_path / name).write_text(name)
    (tmp_path / "sub").mkdir()
    a, b, c = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.log"
    assert input_files([a]) == [a]
    assert input_files([tmp_path]) == [a, b, c]  # not _SUCCESS, .hidden or sub/
    assert input_files([str(tmp_path / "*.txt")]) == [a, b]
    assert input_files([f"{c},{a}"]) == [c, a]
    with pytest.raises(FileNotFoundError, match=r"no input .*nothing\.txt: give a file"):
        input_files([tmp_path / "nothing.txt"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mapper": "python3 'mapper.py"}, "the -mapper .* is not a command line"),
        ({"mapper": "  "}, "the -mapper is empty"),
        ({"reduce_tasks": 101}, "-numReduceTasks must be between 0 and 100"),
        ({"files": ("x/split",)}, "'split' is a name the task itself uses"),
        ({"files": ("a/m.py", "b/m.py")}, "two -file arguments are both named 'm.py'"),
        ({"files": ("my file.txt",)}, "may hold only letters"),
    ],
)
def test_a_streaming_job_says_what_is_wrong_with_it(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Streaming(**{"mapper": "cat", **kwargs})


@pytest.mark.parametrize(
    ("defines", "fields", "notes"),
    [
        (["mapreduce.job.reduces=3"], {"reduce_tasks": 3}, 0),
        (["mapred.reduce.tasks=0", "mapred.job.name=wc"], {"reduce_tasks": 0, "name": "wc"}, 0),
        (["mapreduce.job.maps=10"], {}, 1),
    ],
)
def test_hadoops_d_settings_that_mean_something_here(
    defines: list[str], fields: dict, notes: int
) -> None:
    got, said = hadoop_settings(defines)
    assert got == fields and len(said) == notes


@pytest.mark.parametrize(
    ("define", "message"),
    [
        ("mapreduce.job.reduces", "write -D KEY=VALUE"),
        ("mapreduce.job.reduces=two", "is a whole number"),
        ("stream.num.map.output.key.fields=2", "not a setting fogwheel takes"),
    ],
)
def test_a_d_setting_fogwheel_does_not_take_is_refused_not_ignored(
    define: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        hadoop_settings([define])


# -- the loader ---------------------------------------------------------------------------------


def job_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "myjob.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_the_loader_defines_the_job_and_never_runs_the_main_block(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = job_file(
        tmp_path,
        f"""
        '''A job that is also a streaming mapper.'''
        import re
        import sys
        from dataclasses import dataclass
        from functools import lru_cache
        try:
            import not_a_module_anywhere
        except ImportError:
            not_a_module_anywhere = None
        from fogwheel.mapreduce import MapReduce

        WORD = re.compile(r"\\w+")
        SMALL: frozenset[str] = frozenset({{"a", "the"}})
        key = lambda w: w.lower()[:1]

        @lru_cache
        def mapper(line):
            return [(key(w), 1) for w in WORD.findall(line) if w.lower() not in SMALL]

        @dataclass
        class Totals:
            n: int = 0

        job = MapReduce(mapper, lambda k, vs: sum(vs), name="letters")

        if __name__ == "__main__":
            open({str(marker)!r}, "w").write("ran")
            for line in sys.stdin:
                print(line)
        """,
    )
    job = load(path, "job")
    assert job.name == "letters" and job.mapper("The cat") == [("c", 1)]
    assert not marker.exists()


@pytest.mark.parametrize(
    ("statement", "what"),
    [
        ("main()", "line 3: a call of main()"),
        ("for line in sys.stdin:\n    print(line)", "line 3: a for loop"),
        ("while True:\n    pass", "a while loop"),
        ("with open('x') as f:\n    pass", "a with block"),
        ("data = sys.stdin.read()", "an assignment that calls code"),
        ("lines = [l for l in sys.stdin]", "an assignment that calls code"),
        ("if len(sys.argv) > 1:\n    pass", "an if block"),
        ("class C:\n    for i in range(3):\n        pass", "a for loop in the body of class C"),
        ("del sys", "a Delete statement"),
    ],
)
def test_the_loader_refuses_top_level_work_before_running_anything(
    tmp_path: Path, statement: str, what: str
) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "myjob.py"
    # `job = …` would make the marker: nothing runs when a statement before it is refused
    path.write_text(f"import sys\nMARK = {str(marker)!r}\n{statement}\njob = open(MARK, 'w')\n")
    with pytest.raises(Refused, match=what) as e:
        load(path, "job")
    assert 'move it under `if __name__ == "__main__":` or into a function' in str(e.value)
    assert not marker.exists()


def test_the_loader_says_when_the_name_is_only_in_the_main_block(tmp_path: Path) -> None:
    path = job_file(tmp_path, 'if __name__ == "__main__":\n    job = 1\n')
    with pytest.raises(KeyError):
        load(path, "job")


def test_the_cli_refuses_a_streaming_mapper_as_a_job_and_never_reads_stdin(
    tmp_path: Path,
) -> None:
    """The issue's case: `mapreduce run mapper.py:job` used to import the file, and sat
    waiting on stdin. Stdin stays open here, so a read would hang until the timeout."""
    (tmp_path / "in.txt").write_text("a b\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fogwheel", "mapreduce", "run", f"{MAPPER}:job", "in.txt",
         "--local", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=tmp_path,
    )  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert f"{MAPPER} line 5: a for loop would run on this machine" in stderr
    assert "Traceback" not in stderr


# -- on a fog -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fog() -> LocalFog:
    with LocalFog(2) as fog:
        yield fog


@pytest.fixture(scope="module")
def client(fog: LocalFog) -> Client:
    with Client(fog.url, fog.api_key) as client:
        yield client


@pytest.fixture(scope="module")
def book(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("book")
    return [write_text(d / "one.txt", 4000, seed=1), write_text(d / "two.txt", 3000, seed=2)]


WORD_COUNT = Streaming("mapper.py", "reducer.py", files=(MAPPER, REDUCER))


@pytest.mark.parametrize(
    "job",
    [WORD_COUNT, Streaming("python3 mapper.py", "python3 reducer.py", files=(MAPPER, REDUCER))],
    ids=["shipped-scripts-run-by-name", "python3-and-the-script"],
)
def test_the_classic_word_count_equals_the_shell_pipeline_byte_for_byte(
    client: Client, book: list[Path], tmp_path: Path, job: Streaming
) -> None:
    result = run_streaming(client, job, book, tmp_path / "out", split_mb=0.05)
    assert result.splits >= 4 and result.partitions == 1
    assert [p.name for p in result.paths] == ["part-00000"]
    assert (tmp_path / "out" / "_SUCCESS").exists()
    assert concatenated(result.paths) == pipeline(book)


def test_three_reducers_split_the_keys_and_each_part_is_sorted(
    client: Client, book: list[Path], tmp_path: Path
) -> None:
    job = Streaming("mapper.py", "reducer.py", reduce_tasks=3, files=(MAPPER, REDUCER))
    result = run_streaming(client, job, book, tmp_path / "out", split_mb=0.05)
    assert [p.name for p in result.paths] == ["part-00000", "part-00001", "part-00002"]
    parts = [p.read_bytes().splitlines(keepends=True) for p in result.paths]
    assert all(part for part in parts)
    for part in parts:
        assert part == sorted(part, key=order)
    keys = [key_of(line) for part in parts for line in part]
    assert len(keys) == len(set(keys))  # a key is in one part only
    assert sorted(line for part in parts for line in part) == sorted(
        pipeline(book).splitlines(keepends=True)
    )


@pytest.mark.parametrize("how", ["numReduceTasks 0", "reducer NONE"])
def test_map_only_writes_each_map_tasks_output_as_the_mapper_wrote_it(
    client: Client, book: list[Path], tmp_path: Path, how: str
) -> None:
    if how == "reducer NONE":
        job = Streaming("mapper.py", "NONE", files=(MAPPER,))
    else:
        job = Streaming("mapper.py", "reducer.py", reduce_tasks=0, files=(MAPPER, REDUCER))
    result = run_streaming(client, job, book, tmp_path / "out", split_mb=0.05)
    assert result.reduce_job is None and result.partitions == 0
    assert len(result.paths) == result.splits >= 4
    cat = " ".join(map(str, book))
    assert concatenated(result.paths) == shell(f"cat {cat} | python3 {MAPPER}")


def test_no_reducer_is_the_identity_the_sorted_map_output(
    client: Client, book: list[Path], tmp_path: Path
) -> None:
    job = Streaming("mapper.py", files=(MAPPER,))
    result = run_streaming(client, job, book, tmp_path / "out", split_mb=0.05)
    cat = " ".join(map(str, book))
    assert concatenated(result.paths) == shell(f"cat {cat} | python3 {MAPPER} | sort")


def test_a_reducer_that_stops_reading_early_is_judged_by_its_exit_status(
    client: Client, book: list[Path], tmp_path: Path
) -> None:
    job = Streaming("mapper.py", "head -n 3", files=(MAPPER,))
    result = run_streaming(client, job, book, tmp_path / "out", split_mb=0.05)
    cat = " ".join(map(str, book))
    # (the shell's own sort is killed by SIGPIPE here: only the last command's status counts)
    want = shell(f"cat {cat} | python3 {MAPPER} | sort | head -n 3", pipefail=False)
    assert concatenated(result.paths) == want and len(want.splitlines()) == 3


def test_a_combiner_folds_each_map_tasks_output_before_the_shuffle(
    client: Client, book: list[Path], tmp_path: Path
) -> None:
    # The reducer is `cat`: what reaches it is what the combiners left, one line a word a map
    # task, whose counts add up to the word's count.
    job = Streaming("mapper.py", "cat", combiner="reducer.py", files=(MAPPER, REDUCER))
    result = run_streaming(client, job, book, tmp_path / "out", split_mb=0.05)
    lines = concatenated(result.paths).splitlines()
    totals: Counter[bytes] = Counter()
    for line in lines:
        word, count = line.split(b"\t")
        totals[word] += int(count)
    words = b" ".join(p.read_bytes() for p in book).split()
    assert totals == Counter(words)
    assert len(totals) < len(lines) <= len(totals) * result.splits  # a line a word a map task
    # and the word count with that combiner is still the pipeline's
    job = Streaming("mapper.py", "reducer.py", combiner="reducer.py", files=(MAPPER, REDUCER))
    result = run_streaming(client, job, book, tmp_path / "out2", split_mb=0.05)
    assert concatenated(result.paths) == pipeline(book)


def test_a_shipped_file_is_in_every_tasks_working_directory(
    client: Client, book: list[Path], tmp_path: Path
) -> None:
    (tmp_path / "stopwords.txt").write_text("the\nThe\na\n")
    script = tmp_path / "stop_mapper.py"
    script.write_text(
        "import sys\n"
        "stop = set(open('stopwords.txt').read().split())\n"
        "for line in sys.stdin:\n"
        "    for w in line.split():\n"
        "        if w not in stop:\n"
        "            print(f'{w}\\t1')\n"
    )
    files = (script, tmp_path / "stopwords.txt", REDUCER)
    job = Streaming("python3 stop_mapper.py", "python3 reducer.py", reduce_tasks=2, files=files)
    result = run_streaming(client, job, book, tmp_path / "out", split_mb=0.05)
    got = {line.split(b"\t")[0] for line in concatenated(result.paths).splitlines()}
    assert got == set(b" ".join(p.read_bytes() for p in book).split()) - {b"the", b"The", b"a"}


def test_a_failing_mapper_fails_the_job_with_its_exit_status_and_stderr(
    client: Client, book: list[Path], tmp_path: Path
) -> None:
    script = tmp_path / "bad_mapper.py"
    script.write_text(
        "import sys\nsys.stdin.readline()\nsys.exit('bad record at line 2: expected a tab')\n"
    )
    job = Streaming("python3 bad_mapper.py", "cat", files=(script,))
    with pytest.raises(JobFailed) as e:
        run_streaming(client, job, book, tmp_path / "out", split_mb=0.05)
    message = str(e.value)
    assert "map task" in message
    assert "the mapper `python3 bad_mapper.py` exited with status 1" in message
    assert "bad record at line 2: expected a tab" in message
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_a_missing_program_says_it_could_not_start(
    client: Client, book: list[Path], tmp_path: Path
) -> None:
    job = Streaming("no-such-mapper-program", "cat")
    with pytest.raises(JobFailed, match="the mapper `no-such-mapper-program` could not start"):
        run_streaming(client, job, book[:1], tmp_path / "out")


def test_an_empty_input_still_writes_an_empty_part_and_success(
    client: Client, tmp_path: Path
) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    job = Streaming("mapper.py", "reducer.py", reduce_tasks=2, files=(MAPPER, REDUCER))
    result = run_streaming(client, job, [tmp_path / "empty.txt"], tmp_path / "out")
    assert [p.read_bytes() for p in result.paths] == [b"", b""]
    assert (tmp_path / "out" / "_SUCCESS").exists()


def test_a_key_group_larger_than_a_sort_run_is_reduced_whole(
    client: Client, tmp_path: Path
) -> None:
    # More lines of one key than a node sorts in memory (RUN_LINES): the map task spills runs
    # and merges them, the reducer reads one group of them all.
    n = streamtask.RUN_LINES + 50_000
    text = tmp_path / "pairs.txt"
    with open(text, "w") as f:
        for i in range(n):
            f.write("same\t1\n" if i % 10 else f"other{i % 7}\t1\n")
    job = Streaming("cat", "python3 reducer.py", files=(REDUCER,))
    result = run_streaming(client, job, [text], tmp_path / "out", split_mb=64)
    assert result.splits == 1
    counts = dict(line.split(b"\t") for line in concatenated(result.paths).splitlines())
    assert int(counts[b"same"]) == n - n // 10 - (1 if n % 10 else 0)
    assert sum(map(int, counts.values())) == n


# -- the command line ---------------------------------------------------------------------------


def fogwheel_cli(fog: LocalFog, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FOGWHEEL_COORDINATOR": fog.url, "FOGWHEEL_API_KEY": fog.api_key}
    return subprocess.run(
        [sys.executable, "-m", "fogwheel", "mapreduce", "streaming", *args],
        capture_output=True, text=True, timeout=180, cwd=cwd, env=env,
    )  # fmt: skip


def test_the_cli_takes_hadoops_command_line(
    fog: LocalFog, book: list[Path], tmp_path: Path
) -> None:
    for script in (MAPPER, REDUCER):
        shutil.copy(script, tmp_path)
    res = fogwheel_cli(
        fog, tmp_path,
        "-input", str(book[0]), "-input", str(book[1]), "-output", "counts",
        "-mapper", "mapper.py", "-reducer", "reducer.py", "-file", "mapper.py",
        "-file", "reducer.py", "-D", "mapreduce.job.reduces=3", "-numReduceTasks", "1",
        "--split-mb", "0.05",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "wrote counts/ (1 part file)" in res.stdout  # -numReduceTasks wins over -D
    assert (tmp_path / "counts" / "part-00000").read_bytes() == pipeline(book)
    res = fogwheel_cli(
        fog, tmp_path, "--memory", "128", "--wall", "120", "-D", "mapred.reduce.tasks=2",
        "-D", "mapreduce.job.name=wc-by-cli",
        "-input", str(book[0]), "-output", "counts2", "-mapper", "python3 mapper.py",
        "-reducer", "python3 reducer.py", "-file", "mapper.py", "-file", "reducer.py",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "wc-by-cli:" in res.stdout and "wrote counts2/ (2 part files)" in res.stdout
    with Client(fog.url, fog.api_key) as client:
        names = {j["name"] for j in client.jobs(limit=5)}
    assert {"wc-by-cli: map", "wc-by-cli: reduce"} <= names
    # the two-dash spelling, and an -output that is there already
    res = fogwheel_cli(
        fog, tmp_path, "--input", str(book[0]), "--output", "counts", "--mapper", "cat"
    )
    assert res.returncode == 1
    assert "output directory counts already exists: remove it or give another -output" in (
        res.stderr
    )


def test_the_cli_shows_a_failing_mappers_stderr_and_no_traceback(
    fog: LocalFog, book: list[Path], tmp_path: Path
) -> None:
    (tmp_path / "bad.py").write_text("import sys\nprint('oops: no such column', file=sys.stderr)\n"
                                     "sys.exit(3)\n")  # fmt: skip
    res = fogwheel_cli(
        fog, tmp_path, "-input", str(book[0]), "-output", "out", "-mapper", "python3 bad.py",
        "-file", "bad.py",
    )  # fmt: skip
    assert res.returncode == 1
    assert "error: map task" in res.stderr and "exited with status 3" in res.stderr
    assert "oops: no such column" in res.stderr and "Traceback" not in res.stderr
