"""The sandbox every process that runs learner code runs in, built with bubblewrap (``bwrap``).

Inside: the system's ``/usr`` (and ``/lib*``, ``/bin``), the Python installation, the virtual
environment and minibn's own package folder, all read-only; a private, size-capped ``/tmp``; a
working folder holding nothing but what the caller puts there; its own PID, network (no
interface up), IPC and UTS namespaces; an environment built from scratch (``clean_env``), so no
grading secret, no instructor path, nothing of the grader's environment reaches learner code.
Not inside: the course folder, ``solutions/``, the gradebook, other submissions, the secret
file, the repository's other folders, the host's ``/proc``.

Limits (``Limits``): address space, CPU seconds, processes, size of any file written, no core
files; the grader adds wall-clock limits and output caps on its side. The process limit is per
sandbox where the machine lets the grader create pids cgroups (``pids_cgroup_parent``): each
sandbox joins a cgroup of its own whose ``pids.max`` counts only its tasks. RLIMIT_NPROC, set as
well, counts every task of the grading user and does not bind root at all.

``probe()`` tells whether a sandbox can be built here and raises ``SandboxUnavailable`` saying
why and how to install bubblewrap when it cannot; ``python -I .../minibn/grading/sandbox.py
kernel LIMITS_JSON CONNECTION_FILE`` (this file as a script) is the Jupyter kernel command
nbgrader's autograde uses (``write_kernelspec``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

KERNEL_NAME = "minibn-sandbox"
INSTALL_HINT = (
    "Grading runs learner code inside a bubblewrap sandbox. Install it: `make sandbox-deps` (as root "
    "on Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap; Arch: pacman -S "
    "bubblewrap). It needs Linux namespaces: as root they always work; as another user, unprivileged "
    "user namespaces must be enabled (sysctl kernel.unprivileged_userns_clone=1 on Debian, "
    "user.max_user_namespaces > 0; Ubuntu 24.04 also needs an AppArmor profile for bwrap). "
    "For trusted self-study only, `--unsafe-no-sandbox` grades without it."
)
UNSAFE_WARNING = "UNSAFE: graded without a sandbox (--unsafe-no-sandbox); learner code ran with the grader's rights"
# Variables copied from the grader's environment into the sandbox: nothing that could be secret.
_PASSED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MINIBN_FAST", "MINIBN_STATIC",
           "PYTHONHASHSEED", "TZ")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "localtime",
        "hosts", "mime.types", "fonts")


class SandboxUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 8 * 2**30
    cpu_seconds: int = 3600
    # Tasks (threads too) in one sandbox's pids cgroup. Without a cgroup only RLIMIT_NPROC is
    # left, which counts every task of the user, sandboxed or not (so it is set to what the user
    # already runs plus this margin), and which the kernel never applies to root.
    processes: int = 2048
    file_bytes: int = 256 * 2**20
    tmp_bytes: int = 512 * 2**20


def bwrap_path():
    return shutil.which("bwrap") or next((p for p in ("/usr/bin/bwrap", "/bin/bwrap") if os.path.exists(p)), None)


def _system_mounts():
    args = []
    for top in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / top
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for name in _ETC:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args


def _python_mounts():
    """The interpreter, its standard library, the virtual environment and minibn's package."""
    import minibn

    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sys.executable).parent,
             Path(minibn.__file__).resolve().parent}
    paths = {p.resolve() for p in paths if p.exists()}
    kept = sorted(p for p in paths if not any(q != p and q in p.parents for q in paths))
    args = []
    for p in kept:
        if str(p).startswith(("/usr/", "/bin/", "/lib")):
            continue  # already mounted with the system
        args += ["--ro-bind", str(p), str(p)]
    venv_python = Path(sys.executable)
    if venv_python.parent.resolve() != venv_python.parent:  # a venv reached through a symlink
        args += ["--ro-bind", str(venv_python.parent), str(venv_python.parent)]
    return args


def clean_env(extra=None, source=None):
    """A fresh environment for learner code: fixed safe values, a few thread and lesson-size
    variables from ``source``, then ``extra``. Never a ``*SECRET*`` variable."""
    source = os.environ if source is None else source
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp",
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TMPDIR": "/tmp", "MPLBACKEND": "Agg",
           "MPLCONFIGDIR": "/tmp/.matplotlib", "IPYTHONDIR": "/tmp/.ipython", "JUPYTER_CONFIG_DIR": "/tmp/.jupyter",
           "JUPYTER_DATA_DIR": "/tmp/.jupyter-data", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}
    env.update({k: source[k] for k in _PASSED if k in source})
    env.update(extra or {})
    for key in [k for k in env if "SECRET" in k.upper()]:
        del env[key]
    return env


def command(argv, *, workdir, env, limits=Limits(), ro_files=(), rw_dirs=()):
    """The ``bwrap`` command line running ``argv`` in a sandbox whose current folder is an empty,
    private ``workdir`` (a tmpfs at that path) holding read-only copies of ``ro_files``
    (``{path inside: path outside}``), plus ``rw_dirs`` shared read-write (a kernel's sockets)."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise SandboxUnavailable("bwrap (bubblewrap) is not installed. " + INSTALL_HINT)
    # The interpreter, venv and package are bound after the private /tmp, so that a checkout
    # under /tmp (a CI clone, say) is not hidden by it.
    args = [bwrap, "--unshare-all", "--die-with-parent", "--cap-drop", "ALL",
            *_system_mounts(),
            "--proc", "/proc", "--dev", "/dev",
            "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
            *_python_mounts(),
            "--size", str(limits.tmp_bytes), "--tmpfs", str(workdir)]
    for inside, outside in dict(ro_files).items():
        args += ["--ro-bind", str(outside), str(inside)]
    for path in rw_dirs:
        args += ["--bind", str(path), str(path)]
    args += ["--chdir", str(workdir), "--clearenv"]
    for key, value in sorted(env.items()):
        args += ["--setenv", key, value]
    return args + ["--", *argv]


def preexec(limits=Limits()):
    """For ``subprocess``'s ``preexec_fn``: rlimits, a pids cgroup of its own where the machine
    allows one, and SIGINT ignored by bwrap itself (it would die of a Jupyter interrupt and take
    the kernel with it; the sandboxed program sets its own)."""
    cgroups = pids_cgroup_parent()

    def apply():
        import resource

        def cap(which, value):
            resource.setrlimit(which, (value, value))

        cap(resource.RLIMIT_AS, limits.memory_bytes)
        cap(resource.RLIMIT_CPU, limits.cpu_seconds)
        cap(resource.RLIMIT_FSIZE, limits.file_bytes)
        cap(resource.RLIMIT_CORE, 0)
        cap(resource.RLIMIT_NPROC, _tasks_of_user() + limits.processes)
        if cgroups is not None:
            _join_own_cgroup(cgroups, limits.processes)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return apply


_CGROUP_PREFIX = "minibn-sandbox-"
_cgroup_parent = {}


def _own_cgroup(hierarchy):
    """This process's path in the cgroup hierarchy whose controllers field is ``hierarchy``
    ("pids" for cgroup v1's, "" for v2's unified one)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (hierarchy in controllers.split(",")) if hierarchy else controllers == "":
            return path
    return None


def pids_cgroup_parent():
    """The folder where each sandbox can get a pids cgroup of its own (cgroup v1's ``pids``
    hierarchy, or v2's with the pids controller delegated to the grader), or None: then only
    RLIMIT_NPROC limits processes. Found once, by creating and removing a probe cgroup."""
    if "parent" not in _cgroup_parent:
        _cgroup_parent["parent"] = None
        for mount, hierarchy in ((Path("/sys/fs/cgroup/pids"), "pids"), (Path("/sys/fs/cgroup"), "")):
            own = _own_cgroup(hierarchy)
            if own is None or not mount.is_dir():
                continue
            folder = mount / own.lstrip("/")
            probe = folder / f"{_CGROUP_PREFIX}probe-{os.getpid()}"
            try:
                probe.mkdir(exist_ok=True)
                usable = (probe / "pids.max").exists() and os.access(probe / "pids.max", os.W_OK)
                probe.rmdir()
            except OSError:
                continue
            if usable:
                _cgroup_parent["parent"] = folder
                break
    return _cgroup_parent["parent"]


def _join_own_cgroup(parent, processes):
    """In the child, before exec: a new cgroup named after this process, capped, joined."""
    group = parent / f"{_CGROUP_PREFIX}{os.getpid()}"
    for _ in range(3):  # a concurrent sweep may remove the empty cgroup between mkdir and join
        try:
            group.mkdir(exist_ok=True)
            (group / "pids.max").write_text(str(processes))
            (group / "cgroup.procs").write_text(str(os.getpid()))
            return
        except FileNotFoundError:
            continue


def sweep_cgroups():
    """Remove the pids cgroups of sandboxes that have ended (only an empty cgroup can be removed,
    so a running sandbox's stays)."""
    parent = pids_cgroup_parent()
    if parent is None:
        return
    for group in parent.glob(f"{_CGROUP_PREFIX}*"):
        try:
            group.rmdir()
        except OSError:
            pass


def _tasks_of_user():
    uid, count = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return count


_probed = {}


def probe():
    """Build a trivial sandbox once; raise ``SandboxUnavailable`` with bwrap's reason if it fails."""
    if "ok" in _probed:
        return
    argv = [sys.executable, "-I", "-c", "import numpy, minibn, os; assert not os.path.exists('/etc/shadow')"]
    try:
        cmd = command(argv, workdir="/tmp/probe", env=clean_env())
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                              preexec_fn=preexec())
    except (OSError, subprocess.SubprocessError) as err:
        raise SandboxUnavailable(f"bwrap could not be started ({err}). {INSTALL_HINT}") from err
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SandboxUnavailable(f"bwrap cannot build the sandbox here: {' / '.join(why) or proc.returncode}. "
                                 + INSTALL_HINT)
    _probed["ok"] = True


# ---------------------------------------------------------------- nbgrader's kernel

def write_kernelspec(jupyter_path, *, limits=Limits(), env_extra=None):
    """A kernelspec ``minibn-sandbox`` under ``jupyter_path/kernels``: an IPython kernel in the
    sandbox. Point ``JUPYTER_PATH`` at ``jupyter_path`` and set ``Execute.kernel_name``."""
    spec = Path(jupyter_path) / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "limits.json").write_text(json.dumps({**limits.__dict__, "env": env_extra or {}}))
    (spec / "kernel.json").write_text(json.dumps({
        # This file run as a script, not as ``-m minibn.grading.sandbox``: it needs only the
        # standard library, and importing the package (NumPy with it) cost 0.2 s per notebook.
        "argv": [sys.executable, "-I", str(Path(__file__).resolve()), "kernel", str(spec / "limits.json"),
                 "{connection_file}"],
        "display_name": "minibn (sandboxed grading)", "language": "python"}))
    return spec


def _kernel_main(limits_path, connection_file):
    """Run an IPython kernel for the notebook in the current folder (nbgrader's autograde folder
    of one student): that folder's files read-only in a private working folder, the kernel's
    connection file and socket folder shared, nothing else of the course."""
    settings = json.loads(Path(limits_path).read_text())
    env_extra = settings.pop("env")
    limits = Limits(**settings)
    here = Path.cwd()
    files = {here / p.name: p for p in sorted(here.iterdir()) if p.is_file()}
    connection = Path(connection_file).resolve()
    info = json.loads(connection.read_text())
    if info.get("transport") != "ipc" or not os.path.isabs(info.get("ip", "")):
        raise SystemExit("the sandboxed kernel needs KernelManager.transport = 'ipc' and an absolute "
                         "KernelManager.ip (its sockets' folder): the sandbox has no network")
    sockets = Path(info["ip"]).parent
    files[connection] = connection
    argv = [sys.executable, "-I", "-c",
            "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from ipykernel import kernelapp; sys.argv = ['ipykernel', '-f', sys.argv[1]]; "
            "kernelapp.launch_new_instance()", str(connection)]
    cmd = command(argv, workdir=here, env=clean_env(env_extra), limits=limits, ro_files=files, rw_dirs=[sockets])
    preexec(limits)()
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "kernel":
        _kernel_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -I minibn/grading/sandbox.py kernel LIMITS_JSON CONNECTION_FILE")
