"""Several hosts on one PostgreSQL server: a host cut off, a host whose clock is wrong.

Each "host" is a network namespace running ``gunicorn -w 2`` of
``tests/procs/hostapp.py`` with the scheduler on; it reaches a PostgreSQL
cluster made for the test over its own veth link (10.213.x.0/24, addresses
that exist only on the links the test creates). Cutting a host off is
``ip link set <veth> down`` on the server's side of its link; a wrong clock
is libfaketime preloaded into that host's gunicorn. One more test runs a
single process under libfaketime, its clock ahead and then stepped, on the
suite's own PostgreSQL server.

The tests need root (namespaces), Debian's PostgreSQL cluster tools and, for
the clock, libfaketime (``apt-get install faketime libfaketime``). Where one
is missing they skip with the reason; under ``CI=true`` they fail. The test
process itself never runs a scheduler: it creates the tables, enqueues and
reads rows.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import on_postgresql, wait_for
from tests.procs import hostapp

pytestmark = [pytest.mark.slow, pytest.mark.postgresql]

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).parent / "gunicorn")
APP = "tests.procs.hostapp:create_app()"
#: gunicorn under libfaketime (see that module for why not plain gunicorn)
SKEWED_GUNICORN = (sys.executable, "-m", "tests.procs.skewed_gunicorn", "--timeout", "0")
HOSTS = 3
LEASE = 4
#: Short intervals: a lost lease is noticed within seconds.
CONFIG = {"LEASE_SECONDS": LEASE, "SWEEP_INTERVAL": 1, "POLL_INTERVAL": 0.2,
          "CONCURRENCY": 4, "BATCH_SIZE": 8}
STARTED = re.compile(r"durable jobs scheduler started \(pid (\d+), worker (\S+)\)")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")  # as in conftest.py
TOOLS = ("ip", "pg_createcluster", "pg_ctlcluster", "pg_dropcluster")


def unavailable(reason: str) -> t.NoReturn:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the multi-host tests must run)")
    pytest.skip(reason)


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):"
                           f" {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def libfaketime() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    return found[0] if found else None


# -- the network and the server -------------------------------------------------------


@dataclasses.dataclass
class Host:
    name: str
    netns: str
    link: str  # the server's end of the veth pair
    server_address: str  # the server's address on this link
    address: str  # the host's address on this link


class Network:
    """A PostgreSQL cluster and ``HOSTS`` namespaces linked to it; undone by :meth:`close`."""

    def __init__(self) -> None:
        self.undo = contextlib.ExitStack()
        tag = f"{os.getpid() % 100000:05d}"
        self.cluster = f"fdj_multihost_{tag}"
        self.version = self._pg_version()
        self.port = 0
        self.hosts: list[Host] = []
        try:
            self._links(tag)
            self._server()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _pg_version() -> str:
        installed = Path("/usr/lib/postgresql").glob("*/bin/postgres")
        versions = sorted(
            (path.parent.parent.name for path in installed),
            key=lambda v: (v != "15", -int(v) if v.isdigit() else 0),
        )
        if not versions:
            unavailable("no PostgreSQL server binaries under /usr/lib/postgresql")
        return versions[0]

    def _free_subnets(self) -> int:
        """A third octet ``n`` such that 10.213.n .. n+HOSTS-1 are unused here."""
        used = set()
        for line in run("ip", "-4", "-o", "addr", "show").splitlines():
            match = re.search(r"inet (10\.213\.(\d+))\.", line)
            if match:
                used.add(int(match.group(2)))
        starts = [n for n in range(0, 256 - HOSTS, HOSTS)
                  if not used & set(range(n, n + HOSTS))]
        return random.choice(starts)

    def _links(self, tag: str) -> None:
        base = self._free_subnets()
        for i in range(HOSTS):
            octet = base + i
            host = Host(name=f"host{i + 1}", netns=f"fdj{tag}-{i + 1}", link=f"fdj{tag}s{i + 1}",
                        server_address=f"10.213.{octet}.1", address=f"10.213.{octet}.2")
            inner = f"fdj{tag}h{i + 1}"
            run("ip", "netns", "add", host.netns)
            self.undo.callback(run, "ip", "netns", "delete", host.netns)
            run("ip", "link", "add", host.link, "type", "veth", "peer", "name", inner)
            # deleting the server's end deletes the pair (the namespace takes the other)
            self.undo.callback(lambda link=host.link: subprocess.run(
                ["ip", "link", "delete", link], capture_output=True, check=False))
            run("ip", "link", "set", inner, "netns", host.netns)
            run("ip", "addr", "add", f"{host.server_address}/24", "dev", host.link)
            run("ip", "link", "set", host.link, "up")
            inside = ("ip", "netns", "exec", host.netns, "ip")
            run(*inside, "addr", "add", f"{host.address}/24", "dev", inner)
            run(*inside, "link", "set", inner, "up")
            run(*inside, "link", "set", "lo", "up")
            self.hosts.append(host)

    def _server(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        listen = ",".join(["127.0.0.1", *(h.server_address for h in self.hosts)])
        run("pg_createcluster", self.version, self.cluster, "--port", str(self.port),
            "--start-conf=manual", "-o", f"listen_addresses={listen}",
            "-o", "max_connections=300", "-o", "fsync=off", "-o", "synchronous_commit=off",
            "--", "--auth=trust", "--no-sync")
        self.undo.callback(run, "pg_dropcluster", "--stop", self.version, self.cluster)
        hba = Path(f"/etc/postgresql/{self.version}/{self.cluster}/pg_hba.conf")
        with hba.open("a") as conf:
            for host in self.hosts:
                subnet = ipaddress.ip_interface(f"{host.address}/24").network
                conf.write(f"host all all {subnet} trust\n")
        run("pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.cluster, "start")

    def url(self, database: str, host: Host | None = None) -> str:
        address = "127.0.0.1" if host is None else host.server_address
        return f"postgresql+psycopg://postgres@{address}:{self.port}/{database}"

    def cut(self, host: Host) -> None:
        run("ip", "link", "set", host.link, "down")

    def restore(self, host: Host) -> None:
        run("ip", "link", "set", host.link, "up")

    def close(self) -> None:
        self.undo.close()


@pytest.fixture(scope="module")
def network() -> t.Iterator[Network]:
    if sys.platform != "linux" or os.geteuid() != 0:
        unavailable("network namespaces need root on Linux")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        unavailable(f"missing {', '.join(missing)} (iproute2, postgresql-common)")
    if not Path(GUNICORN).exists():
        unavailable(f"gunicorn is not installed at {GUNICORN}")
    probe = f"fdjprobe{os.getpid()}"
    try:
        run("ip", "netns", "add", probe)
    except RuntimeError as exc:
        unavailable(f"cannot make a network namespace: {exc}")
    run("ip", "netns", "delete", probe)
    net = Network()
    try:
        yield net
    finally:
        net.close()


# -- the hosts' processes ---------------------------------------------------------------


class Gunicorn:
    """``gunicorn -w 2`` of the host app inside a host's namespace."""

    def __init__(self, host: Host, command: list[str], log_path: Path, env: dict[str, str]
                 ) -> None:
        self.host = host
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, *command, "-w", "2", "-b", "127.0.0.1:8000",
             "--graceful-timeout", "10", APP],
            cwd=log_path.parent, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> dict[int, str]:
        """pid -> worker id of every process that started a scheduler."""
        return {int(pid): worker for pid, worker in STARTED.findall(self.output())}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.close()


class World:
    """One test's database on the cluster, its hosts' processes, and its rows."""

    def __init__(self, net: Network, tmp: Path) -> None:
        self.net = net
        self.tmp = tmp
        self.database = f"fdj_mh_{os.getpid()}_{random.randrange(1 << 30):x}"
        self.servers: dict[str, Gunicorn] = {}
        admin = sa.create_engine(net.url("postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{self.database}"')
        admin.dispose()
        self.app = hostapp.create_app(
            {"SQLALCHEMY_DATABASE_URI": net.url(self.database), "DURABLE_JOBS_SCHEDULER": False}
        )
        self._ctx = self.app.app_context()
        self._ctx.push()
        hostapp.db.create_all()
        self.table = hostapp.db.metadata.tables["durable_jobs"]
        self.engine = hostapp.db.engine

    def close(self) -> None:
        try:
            for server in self.servers.values():
                server.kill()
        finally:
            hostapp.jobs.stop()
            hostapp.db.session.remove()
            for engine in hostapp.db.engines.values():
                engine.dispose()
            self._ctx.pop()

    def start(self, host: Host, command: tuple[str, ...] = (GUNICORN,), **env: str
              ) -> Gunicorn:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("FLASK_", "HOSTAPP_", "GUNICORN_", "FAKETIME", "LD_PRELOAD"))}
        base.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")])),
            PYTHONUNBUFFERED="1",
            HOSTAPP_DATABASE_URL=self.net.url(self.database, host),
            HOSTAPP_HOST=host.name,
            HOSTAPP_LOG="1",
            **{f"HOSTAPP_DURABLE_JOBS_{k}": json.dumps(v) for k, v in CONFIG.items()},
            **env,
        )
        server = Gunicorn(host, list(command), self.tmp / f"{host.name}.log", base)
        self.servers[host.name] = server
        return server

    def wait_started(self) -> None:
        wait_for("every host's two workers to start their schedulers",
                 lambda: all(len(s.workers()) == 2 for s in self.servers.values()), 60,
                 interval=0.2, details=self.details)

    def stop_all(self) -> None:
        """Stop every host as at a deploy (finish, write, release) and wait for it."""
        for server in self.servers.values():
            server.stop()
        for server in self.servers.values():
            try:
                server.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{server.host.name} did not stop\n{self.details()}") from None

    def details(self) -> str:
        parts = [f"by status: {self.by_status()}"]
        for name, server in self.servers.items():
            parts.append(f"--- {name} (rc {server.proc.poll()}):\n{server.output()[-3000:]}")
        return "\n".join(parts)

    # rows

    def enqueue(self, count: int, **options: t.Any) -> list[int]:
        payload = options.pop("payload", {})
        return hostapp.jobs.enqueue_many(hostapp.JOB, [payload] * count, **options)

    def query(self, sql: str, **params: t.Any) -> list[t.Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))

    def rows(self) -> dict[int, t.Any]:
        with self.engine.connect() as conn:
            return {row.id: row for row in conn.execute(sa.select(self.table))}

    def by_status(self) -> dict[str, int]:
        return {r.status: r.n for r in self.query(
            "SELECT status, count(*) AS n FROM durable_jobs GROUP BY status")}

    def starts(self) -> dict[int, list[t.Any]]:
        """job id -> its runs' start rows, in attempt order."""
        out: dict[int, list[t.Any]] = collections.defaultdict(list)
        for row in self.query("SELECT * FROM host_runs WHERE event = 'start'"
                              " ORDER BY job_id, attempt"):
            out[row.job_id].append(row)
        return out


@pytest.fixture
def world(network: Network, tmp_path: Path) -> t.Iterator[World]:
    w = World(network, tmp_path)
    try:
        yield w
    finally:
        w.close()


# -- (a) a host cut off for longer than the lease ----------------------------------------


def test_a_host_cut_off_loses_its_jobs_to_the_others_and_cannot_finish_them(
    world: World,
) -> None:
    net = world.net
    cut_host = net.hosts[0]
    for host in net.hosts:
        world.start(host)
    world.wait_started()
    total = 600
    ids = world.enqueue(total, payload={"sleep": 0.15})
    cut_workers = set(world.servers[cut_host.name].workers().values())

    def cut_host_busy() -> bool:
        done = world.query("SELECT count(*) AS n FROM host_runs WHERE event = 'end'")[0].n
        running = world.query(
            "SELECT count(*) AS n FROM durable_jobs WHERE status = 'running'"
            " AND worker_id = ANY(:workers)", workers=list(cut_workers))[0].n
        return done >= 100 and running > 0

    wait_for("the cut host to be running jobs mid-drain", cut_host_busy, 60,
             interval=0.05, details=world.details)
    net.cut(cut_host)
    cut_at = time.monotonic()
    # a statement already at the server when the link went down still commits
    time.sleep(0.5)
    in_flight = {r.id: r for r in world.query(
        "SELECT id, attempts, lease_expires_at FROM durable_jobs WHERE status = 'running'"
        " AND worker_id = ANY(:workers)", workers=list(cut_workers))}
    assert in_flight, "the cut host held no job at the cut"

    # The others finish everything, the cut host's jobs after its leases lapse.
    wait_for("every job to succeed while the host is cut off",
             lambda: world.by_status() == {"succeeded": total}, 60,
             interval=0.2, details=world.details)
    assert time.monotonic() - cut_at > LEASE
    net.restore(cut_host)
    time.sleep(2)  # its blocked statements and handlers go through now
    world.stop_all()

    rows = world.rows()
    starts = world.starts()
    assert {r.status for r in rows.values()} == {"succeeded"}, "a job was lost"
    assert set(starts) == set(ids), "a job never ran"
    twice = {job_id for job_id, runs in starts.items() if len(runs) > 1}
    assert twice <= set(in_flight), (
        f"jobs run twice that the cut host did not hold at the cut: {twice - set(in_flight)}"
    )
    for job_id, runs in starts.items():
        row = rows[job_id]
        # the outcome written is the last attempt's: no late completion overwrote it
        assert row.result["attempt"] == row.attempts, (job_id, row.result, row.attempts)
        assert [r.attempt for r in runs] == sorted({r.attempt for r in runs}), runs
        assert runs[-1].host == row.result["host"], (job_id, runs, row.result)
        assert all(r.host == cut_host.name for r in runs[:-1]), (job_id, runs)
    for job_id, held in in_flight.items():
        row = rows[job_id]
        # taken over by another host, and only once the lease had expired
        assert row.result["host"] != cut_host.name, (job_id, row.result)
        assert row.attempts == held.attempts + 1, (job_id, row.attempts, held.attempts)
        last = starts[job_id][-1]
        assert last.db_at >= held.lease_expires_at, (job_id, last.db_at, held.lease_expires_at)
    late = [
        r for r in world.query(
            "SELECT job_id, attempt FROM host_runs WHERE event = 'end' AND host = :host",
            host=cut_host.name)
        if r.job_id in in_flight
    ]
    assert late, "no handler of the cut host finished a taken-over job: nothing was refused"
    for r in late:
        assert rows[r.job_id].attempts > r.attempt
        assert rows[r.job_id].result["host"] != cut_host.name


# -- (b) a host whose clock runs 5 minutes ahead -------------------------------------------


def faketime_env(preload: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKETIME", "LD_PRELOAD"))}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        LD_PRELOAD=preload,
        # see tests/procs/skewed_gunicorn.py for why the monotonic clock stays real
        FAKETIME_DONT_FAKE_MONOTONIC="1",
        **extra,
    )
    return env


@on_postgresql
def test_a_process_whose_clock_is_ahead_or_stepped_writes_the_database_time(
    database_url: str, tmp_path: Path
) -> None:
    """``delay=60`` means 60 s on the database's clock, also right after the
    process's own clock was stepped (no namespaces needed: one process)."""
    preload = libfaketime()
    if preload is None:
        unavailable("libfaketime is not installed (apt-get install faketime libfaketime)")
    stamp = tmp_path / "faketime"
    stamp.write_text("+5m\n")
    done = subprocess.run(
        [sys.executable, "-m", "tests.procs.clock_probe", database_url, str(stamp)],
        env=faketime_env(preload, FAKETIME_TIMESTAMP_FILE=str(stamp), FAKETIME_NO_CACHE="1"),
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert 295 < seen["before"]["clock_ahead"] < 305, seen
    assert 595 < seen["after"]["clock_ahead"] < 605, seen
    for phase in ("before", "after"):
        assert 58 < seen[phase]["run_at_ahead"] <= 60.5, seen
    assert "this host's clock is 300.000 s ahead of the database's" in done.stderr
    assert "this host's clock is 600.000 s ahead of the database's" in done.stderr


def test_a_host_whose_clock_runs_ahead_sweeps_no_live_job_and_runs_none_early(
    world: World,
) -> None:
    preload = libfaketime()
    if preload is None:
        unavailable("libfaketime is not installed (apt-get install faketime libfaketime)")
    net = world.net
    fast = net.hosts[2]
    for host in net.hosts:
        if host is fast:
            world.start(host, SKEWED_GUNICORN, LD_PRELOAD=preload, FAKETIME="+5m",
                        FAKETIME_DONT_FAKE_MONOTONIC="1")
        else:
            world.start(host)
    world.wait_started()

    live = world.enqueue(120, payload={"sleep": 1})  # outlive several sweeps of every host
    delayed = world.enqueue(8, payload={"sleep": 0.1}, delay=6)
    (later,) = world.enqueue(1, delay=60)
    lease_ahead: list[float] = []

    def all_but_later_done() -> bool:
        # how far ahead of the database's clock any running job's lease ends
        (ahead,) = world.query("SELECT max(EXTRACT(EPOCH FROM lease_expires_at"
                               " - clock_timestamp())) AS s FROM durable_jobs"
                               " WHERE status = 'running'")
        if ahead.s is not None:
            lease_ahead.append(float(ahead.s))
        return world.by_status().get("succeeded", 0) == len(live) + len(delayed)

    wait_for("every due job to succeed", all_but_later_done, 60, interval=0.2,
             details=world.details)
    time.sleep(2)  # two more sweeps of every host
    world.stop_all()

    rows = world.rows()
    starts = world.starts()
    skews = collections.defaultdict(list)
    for runs in starts.values():
        for r in runs:
            skews[r.host].append((r.local_at - r.db_at).total_seconds())
    assert skews[fast.name], f"the host whose clock runs ahead ran no job: {dict(skews)}"
    assert all(290 < s < 310 for s in skews[fast.name]), "libfaketime did not take"
    assert all(abs(s) < 5 for host, ss in skews.items() if host != fast.name for s in ss)

    # no job swept from under a live process, none run twice
    assert {job_id: len(runs) for job_id, runs in starts.items() if len(runs) > 1} == {}
    for job_id in [*live, *delayed]:
        row = rows[job_id]
        assert (row.status, row.attempts, row.last_error) == ("succeeded", 1, None), job_id
    # leases written by every host end LEASE seconds after the database's now
    assert lease_ahead and max(lease_ahead) <= LEASE + 1, max(lease_ahead, default=None)
    # due times judged by the database's clock: nothing started before its run_at
    (now,) = world.query("SELECT clock_timestamp() AS at")
    for job_id, runs in starts.items():
        assert runs[0].db_at >= rows[job_id].run_at, (job_id, runs[0], rows[job_id].run_at)
        assert rows[job_id].started_at <= runs[0].db_at, (job_id, rows[job_id].started_at)
        assert rows[job_id].finished_at <= now.at, (job_id, rows[job_id].finished_at)
    assert rows[later].status == "pending" and later not in starts
