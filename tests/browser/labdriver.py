"""Drive JupyterLab in headless Debian Chromium: start a server, open a notebook, Run All, check it.

What this relies on, and the races it works around, are in docs/browser-tests.md. In short: one
``jupyter lab`` on loopback with every Jupyter directory in a temp dir; one browser tab and one lab
*workspace* per notebook (a shared workspace reopens the previous tab and toolbar clicks land on the
wrong panel); "Run All" only once the status bar says Idle (the toolbar indicator turns idle before
the kernel connection is usable).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).resolve().parent / "fixture"
SHOTS = REPO / "build" / "screenshots"
START_PAGE = "START.ipynb"  # what `make lab` opens


def lesson_dirs():
    """Every lesson in solutions/: a folder holding a notebook of its own name."""
    root = REPO / "solutions"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / f"{p.name}.ipynb").is_file())


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage"]
STATUS_IDLE = "() => /\\|\\s*Idle/.test(document.querySelector('#jp-main-statusbar')?.innerText || '')"
# Every code cell has run ("[n]:"), none is queued or running ("[*]:").
ALL_CELLS_RAN = """() => {
  const prompts = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt')];
  return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.innerText));
}"""
ANY_CELL_QUEUED = """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
  .some(p => /\\[(\\*|\\d+)\\]/.test(p.innerText))"""

# User settings for the test server: no news toast over screenshots, and every cell kept in the
# DOM (JupyterLab's windowed notebook may detach cells scrolled out of view).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """``jupyter lab`` serving ``root`` on loopback, started as ``make lab`` starts it (with a file)."""

    def __init__(self, root, home, open_file=None, env=None):
        self.root, self.home = Path(root), Path(home)
        self.port, self.token = free_port(), os.urandom(12).hex()
        self.log_path = self.home / "server.log"
        for sub in ("config", "data", "runtime", "workspaces", "mpl", "ipython"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        settings = self.home / "settings"
        for rel, value in LAB_SETTINGS.items():
            path = settings / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value))
        self.env = {**os.environ,
                    "JUPYTER_CONFIG_DIR": str(self.home / "config"),
                    "JUPYTER_DATA_DIR": str(self.home / "data"),
                    "JUPYTER_RUNTIME_DIR": str(self.home / "runtime"),
                    "JUPYTERLAB_SETTINGS_DIR": str(settings),
                    "JUPYTERLAB_WORKSPACES_DIR": str(self.home / "workspaces"),
                    "MPLCONFIGDIR": str(self.home / "mpl"),
                    "IPYTHONDIR": str(self.home / "ipython"),
                    "OMP_NUM_THREADS": "1",
                    **(env or {})}
        # A None value removes a variable inherited from the test run (a plain `make lab` session).
        self.env = {k: v for k, v in self.env.items() if v is not None}
        self.env.pop("MINIBN_STATIC", None)  # in a browser the explorers must be live widgets
        lab = Path(sys.executable).with_name("jupyter-lab")
        self.cmd = [str(lab), *( [open_file] if open_file else []), "--no-browser",
                    f"--port={self.port}", "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0",
                    f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
                    f"--LabApp.workspaces_dir={self.home / 'workspaces'}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            self.cmd.append("--allow-root")  # CI runs as root; lab refuses to start otherwise
        self.proc = None

    def url(self, path=""):
        sep = "&" if "?" in path else "?"
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}{sep}token={self.token}"

    def start(self, timeout=120):
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, cwd=self.root, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                self.api("api/status")
                return self
            except OSError:
                time.sleep(0.25)
        raise RuntimeError(f"jupyter lab not up after {timeout} s:\n{self.log_tail()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM also shuts its kernels down
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._log.close()

    def log_tail(self, n=60):
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def api(self, path, method="GET"):
        req = urllib.request.Request(self.url(path), method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self, notebook_path):
        """End the kernel of every session on ``notebook_path``: a closed tab leaves it running."""
        for s in self.api("api/sessions"):
            if s.get("path") == notebook_path:
                self.api(f"api/sessions/{s['id']}", method="DELETE")

    def browser_open_url(self):
        """The URL ``jupyter lab <file>`` would open in the learner's browser (its redirect file)."""
        pages = sorted((self.home / "runtime").glob("jpserver-*-open.html"))
        if not pages:
            return None
        match = re.search(r'href="([^"]+)"', pages[-1].read_text())
        return match and match.group(1).replace("&amp;", "&")


def find_chromium():
    path = os.environ.get("MINIBN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if os.path.exists(path) else None


class NotebookPage:
    """One notebook open in its own tab and workspace."""

    def __init__(self, context, server, path, shots):
        self.server, self.path, self.shots = server, path, Path(shots)
        self.page = context.new_page()
        self.page_errors = []
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        workspace = re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-")
        self.page.goto(server.url(f"lab/workspaces/{workspace}/tree/{path}"))
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
        self.page.wait_for_function(STATUS_IDLE, timeout=120_000)

    def shot(self, name):
        self.shots.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(self.shots / f"{name}.png"))

    def menu(self, top, item):
        self.page.click(f".lm-MenuBar-itemLabel:text-is('{top}')")
        self.page.click(f".lm-Menu-itemLabel:text-is('{item}')")

    def run_all(self, timeout_s):
        # Retry once if nothing got queued: the documented race where Run All is swallowed.
        for attempt in range(2):
            self.menu("Run", "Run All Cells")
            try:
                self.page.wait_for_function(ANY_CELL_QUEUED, timeout=15_000)
                break
            except Exception:
                if attempt:
                    raise AssertionError(f"{self.path}: Run All Cells executed nothing")
        try:
            self.page.wait_for_function(ALL_CELLS_RAN, timeout=timeout_s * 1000, polling=500)
            self.page.wait_for_function(STATUS_IDLE, timeout=timeout_s * 1000, polling=500)
        except Exception as e:
            prompts = self.page.eval_on_selector_all(
                ".jp-CodeCell .jp-InputArea-prompt", "els => els.map(p => p.innerText.trim())")
            stuck = [i for i, p in enumerate(prompts) if not re.search(r"\[\d+\]", p)]
            raise AssertionError(f"{self.path}: Run All not finished after {timeout_s} s; code cells "
                                 f"not yet run (0-based): {stuck} of {len(prompts)}") from e

    def error_outputs(self):
        """Text of every stderr/error output: a learner should see none in a solution notebook."""
        return self.page.eval_on_selector_all(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
            "els => els.map(e => e.innerText.slice(0, 1500))")

    def widget_failures(self):
        """Widgets that did not render: the manager's error text, or a widget's plain-text repr."""
        texts = self.page.eval_on_selector_all(
            ".jp-OutputArea-output", "els => els.map(e => e.innerText.slice(0, 300))")
        bad = re.compile(r"Error displaying widget|Loading widget|^(interactive|HBox|VBox|IntProgress|"
                         r"FloatProgress)\(children=|^\w+\(value=")
        return [t for t in texts if bad.search(t.strip())]

    def explorers(self):
        return self.page.locator(".jp-OutputArea-output .widget-interact")

    def figure_of(self, explorer):
        return explorer.evaluate(
            "el => [...el.querySelectorAll('.widget-output img')].map(i => i.src).join('|')")

    def nudge(self, explorer):
        """Change the explorer's first control a learner would reach for; return what was done."""
        slider = explorer.locator(".widget-slider .noUi-handle")
        if slider.count():
            handle = slider.first
            readout = explorer.locator(".widget-slider .widget-readout").first
            before = readout.inner_text() if readout.count() else None
            handle.focus()
            self.page.keyboard.press("ArrowRight")
            if readout.count() and readout.inner_text() == before:  # at its maximum
                self.page.keyboard.press("ArrowLeft")
            return "slider"
        select = explorer.locator(".widget-dropdown select")
        if select.count():
            n = select.first.locator("option").count()
            current = select.first.evaluate("s => s.selectedIndex")
            select.first.select_option(index=(current + 1) % n)
            return "dropdown"
        toggles = explorer.locator(".widget-toggle-button:not(.mod-active)")
        if toggles.count():
            toggles.first.click()
            return "toggle buttons"
        radios = explorer.locator(".widget-radio-box input:not(:checked)")
        if radios.count():
            radios.first.check()
            return "radio buttons"
        checkbox = explorer.locator(".widget-checkbox input")
        if checkbox.count():
            checkbox.first.click()
            return "checkbox"
        raise AssertionError(f"{self.path}: an explorer has no slider, dropdown, toggle, radio or checkbox")

    def validate(self, timeout_s):
        """Click the nbgrader Validate button; return the dialog's text (then close it)."""
        self.page.click(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-NotebookPanel-toolbar .validate-button")
        dialog = self.page.locator(".jp-Dialog-content")
        dialog.wait_for(timeout=timeout_s * 1000)
        text = dialog.inner_text()
        return text

    def cells(self):
        """Every cell of the open notebook as the learner sees it: kind, rendered text, position."""
        return self.page.eval_on_selector_all(
            ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell",
            """els => els.map(el => {
                const box = el.getBoundingClientRect();
                const shown = el.querySelector('.jp-MarkdownOutput') || el.querySelector('.jp-InputArea');
                return {markdown: el.classList.contains('jp-MarkdownCell'),
                        text: shown ? shown.innerText : '',
                        top: box.top + window.scrollY, height: box.height};
            })""")

    def close_dialog(self):
        self.page.keyboard.press("Escape")
        self.page.locator(".jp-Dialog-content").wait_for(state="detached", timeout=10_000)

    def close(self):
        self.page.close()
        self.server.shutdown_kernels(self.path)
