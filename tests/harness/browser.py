"""Headless Chromium for page tests: Debian's `chromium` driven by playwright-core from Node.

Playwright's own browser download is never used (CI cannot reach it): `chromium.launch`
gets `executablePath` = Debian's chromium (`apt-get install chromium`, done by
scripts/setup.sh; `CHROMIUM_BIN` overrides it). playwright-core comes from .tools/npm.

One Node process per `Browser` runs the driver below: it launches Chromium, opens one page
and then takes one JSON command per line on stdin and answers one JSON line on stdout, so a
test interleaves page steps with its own HTTP calls. Selectors are Playwright selectors
(CSS by default) and strict: a step on a selector that matches several elements fails.
When a step fails the error shows the page's URL, its visible text, its console messages
and page errors, and the path of a screenshot.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from . import paths

PLAYWRIGHT_CORE = paths.TOOLS / "npm" / "node_modules" / "playwright-core"

_DRIVER = r"""
"use strict";
const readline = require("node:readline");
const path = require("node:path");
const { chromium } = require(process.env.GATEHOUSE_PLAYWRIGHT_CORE);

const artifacts = process.env.GATEHOUSE_BROWSER_ARTIFACTS || "";
const log = [];
const requests = [];
let browser = null;
let page = null;
let failures = 0;

function remember(line) {
  log.push(line);
  if (log.length > 500) log.shift();
}

function reply(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function start() {
  browser = await chromium.launch({
    executablePath: process.env.GATEHOUSE_CHROMIUM,
    headless: true,
    // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
    timeout: 60000,
  });
  const context = await browser.newContext();
  page = await context.newPage();
  page.on("console", (m) => remember("console." + m.type() + ": " + m.text()));
  page.on("pageerror", (e) => remember("pageerror: " + e.message));
  page.on("requestfailed", (r) =>
    remember("requestfailed: " + r.method() + " " + r.url() + " " + ((r.failure() || {}).errorText || "")));
  page.on("request", (r) => requests.push({ method: r.method(), url: r.url(), headers: r.headers() }));
  page.on("dialog", (d) => d.dismiss().catch(() => {}));
}

async function diagnostics() {
  const out = { url: null, text: null, screenshot: null, log: log.slice(-50) };
  if (!page) return out;
  try {
    out.url = page.url();
    const text = await page.evaluate(() => (document.body ? document.body.innerText : ""));
    out.text = text.slice(0, 4000);
  } catch (_) {}
  if (artifacts) {
    failures += 1;
    const file = path.join(artifacts, "failure-" + failures + ".png");
    try {
      await page.screenshot({ path: file, fullPage: true, timeout: 5000 });
      out.screenshot = file;
    } catch (_) {}
  }
  return out;
}

const ops = {
  goto: async (a) => {
    await page.goto(a.url, { waitUntil: "load", timeout: a.timeout_ms });
    return page.url();
  },
  wait: async (a) => {
    await page.locator(a.selector).waitFor({ state: a.state, timeout: a.timeout_ms });
    return true;
  },
  fill: async (a) => {
    await page.locator(a.selector).fill(a.value, { timeout: a.timeout_ms });
    return true;
  },
  click: async (a) => {
    await page.locator(a.selector).click({ timeout: a.timeout_ms });
    return true;
  },
  text: async (a) => page.locator(a.selector).textContent({ timeout: a.timeout_ms }),
  attr: async (a) => page.locator(a.selector).getAttribute(a.name, { timeout: a.timeout_ms }),
  disabled: async (a) => page.locator(a.selector).isDisabled({ timeout: a.timeout_ms }),
  count: async (a) => page.locator(a.selector).count(),
  evaluate: async (a) => page.evaluate(a.expression),
  wait_function: async (a) => {
    await page.waitForFunction(a.expression, null, { timeout: a.timeout_ms, polling: 100 });
    return true;
  },
  viewport: async (a) => {
    await page.setViewportSize({ width: a.width, height: a.height });
    return true;
  },
  screenshot: async (a) => {
    await page.screenshot({ path: a.path, fullPage: true, timeout: a.timeout_ms });
    return a.path;
  },
  log: async () => log.slice(),
  requests: async () => requests.slice(),
  close: async () => {
    if (browser) await browser.close();
    browser = null;
    return true;
  },
};

async function handle(line) {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (e) {
    reply({ id: null, ok: false, error: "not a JSON command: " + line.slice(0, 200) });
    return;
  }
  const op = ops[msg.op];
  if (!op) {
    reply({ id: msg.id, ok: false, error: "unknown op " + msg.op });
    return;
  }
  try {
    reply({ id: msg.id, ok: true, value: (await op(msg.args || {})) ?? null });
  } catch (e) {
    reply({ id: msg.id, ok: false, error: String((e && e.message) || e), ...(await diagnostics()) });
  }
  if (msg.op === "close") process.exit(0);
}

start().then(
  () => {
    reply({ id: "ready", ok: true, value: browser.version() });
    let chain = Promise.resolve();
    const rl = readline.createInterface({ input: process.stdin });
    rl.on("line", (line) => {
      chain = chain.then(() => handle(line));
    });
    rl.on("close", () => {
      chain.then(async () => {
        if (browser) await browser.close().catch(() => {});
        process.exit(0);
      });
    });
  },
  (e) => {
    reply({ id: "ready", ok: false, error: String((e && e.message) || e) });
    process.exit(1);
  },
);
"""


class BrowserError(AssertionError):
    """A page step failed; the message carries what the page showed."""


def chromium_bin() -> Path | None:
    """Debian's chromium (or `CHROMIUM_BIN`)."""
    env = os.environ.get("CHROMIUM_BIN")
    if env:
        return Path(env)
    found = shutil.which("chromium")
    return Path(found) if found else None


def browser_missing_reason() -> str | None:
    """Why no browser can be started here, or None. Page tests fail (not skip) with it: CI installs all three."""
    chromium = chromium_bin()
    if chromium is None or not os.access(chromium, os.X_OK):
        where = f"CHROMIUM_BIN={chromium}" if os.environ.get("CHROMIUM_BIN") else "`chromium` on PATH"
        return (
            f"Debian's Chromium is missing ({where}): page tests drive it headless. "
            "Run scripts/setup.sh (as root it runs `apt-get install chromium`) or set CHROMIUM_BIN."
        )
    if not (PLAYWRIGHT_CORE / "package.json").exists():
        return f"playwright-core is missing ({PLAYWRIGHT_CORE}): run scripts/setup.sh (npm ci into .tools/npm)"
    if not paths.node22_bin().exists():
        return f"Node 22 is missing ({paths.node22_bin()}): run scripts/setup.sh"
    return None


class Browser:
    """One headless Chromium page. Timeouts are in seconds; `artifacts`: where failure screenshots go."""

    def __init__(self, artifacts: Path | None = None, timeout: float = 10.0) -> None:
        reason = browser_missing_reason()
        if reason:
            raise BrowserError(reason)
        self.timeout = timeout
        self.artifacts = artifacts or Path(tempfile.mkdtemp(prefix="gatehouse-browser-"))
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.log_path = self.artifacts / "driver.log"
        self._ids = itertools.count(1)
        self._lines: queue.Queue[str | None] = queue.Queue()
        env = {
            **os.environ,
            "GATEHOUSE_PLAYWRIGHT_CORE": str(PLAYWRIGHT_CORE),
            "GATEHOUSE_CHROMIUM": str(chromium_bin()),
            "GATEHOUSE_BROWSER_ARTIFACTS": str(self.artifacts),
        }
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [str(paths.node22_bin()), "-e", _DRIVER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                encoding="utf-8",
                bufsize=1,
                env=env,
            )
        threading.Thread(target=self._read_stdout, name="browser-stdout", daemon=True).start()
        try:
            self.version = self._answer("ready", 90)
        except BaseException:
            self._kill()
            raise

    # --- page steps ---------------------------------------------------------------------
    def goto(self, url: str, timeout: float | None = None) -> str:
        """Opens `url` (waits for `load`); returns the page's URL afterwards."""
        return self._call("goto", timeout, url=url)

    def wait_for(self, selector: str, state: str = "visible", timeout: float | None = None) -> None:
        """Waits until `selector` is `visible`, `hidden`, `attached` or `detached`."""
        self._call("wait", timeout, selector=selector, state=state)

    def fill(self, selector: str, value: str, timeout: float | None = None) -> None:
        self._call("fill", timeout, selector=selector, value=value)

    def click(self, selector: str, timeout: float | None = None) -> None:
        """Clicks once the element is visible, stable and enabled."""
        self._call("click", timeout, selector=selector)

    def text(self, selector: str, timeout: float | None = None) -> str:
        return self._call("text", timeout, selector=selector)

    def attribute(self, selector: str, name: str, timeout: float | None = None) -> str | None:
        return self._call("attr", timeout, selector=selector, name=name)

    def is_disabled(self, selector: str, timeout: float | None = None) -> bool:
        return self._call("disabled", timeout, selector=selector)

    def count(self, selector: str) -> int:
        return self._call("count", None, selector=selector)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serializable)."""
        return self._call("evaluate", None, expression=expression)

    def wait_until(self, expression: str, timeout: float | None = None) -> None:
        """Waits until a JavaScript expression in the page is truthy."""
        self._call("wait_function", timeout, expression=expression)

    def set_viewport(self, width: int, height: int) -> None:
        """Resizes the page's viewport (a desktop window, a phone)."""
        self._call("viewport", None, width=width, height=height)

    def screenshot(self, path: Path) -> Path:
        return Path(self._call("screenshot", None, path=str(path)))

    def console(self) -> list[str]:
        """The page's console messages, page errors and failed requests so far."""
        return self._call("log", None)

    def requests(self) -> list[dict[str, Any]]:
        """Every request the page made: method, URL and headers."""
        return self._call("requests", None)

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(BrowserError, OSError):
                self._call("close", 15)
        self._kill()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the driver -------------------------------------------------------------------------
    def _call(self, op: str, timeout: float | None, **args: Any) -> Any:
        seconds = self.timeout if timeout is None else timeout
        command_id = next(self._ids)
        line = json.dumps({"id": command_id, "op": op, "args": {**args, "timeout_ms": int(seconds * 1000)}})
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
        except OSError as exc:
            raise BrowserError(f"The browser driver is gone ({exc}).\n{self._driver_log()}") from None
        # The driver's own timeout fires first; this one only catches a hung driver.
        return self._answer(command_id, seconds + 30, what=_redact(f"{op} {json.dumps(args)}")[:300])

    def _answer(self, command_id: int | str, timeout: float, what: str = "starting Chromium") -> Any:
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise BrowserError(
                    f"The browser driver did not answer {what} in {timeout}s.\n{self._driver_log()}"
                ) from None
            if line is None:
                raise BrowserError(f"The browser driver exited while {what}.\n{self._driver_log()}")
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue  # not ours (a library printing to stdout)
            if not isinstance(msg, dict) or msg.get("id") != command_id:
                continue
            if msg.get("ok"):
                return msg.get("value")
            raise BrowserError(_failure(what, msg))

    def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _driver_log(self) -> str:
        try:
            tail = self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            tail = ""
        return f"--- browser driver log ({self.log_path}) ---\n{tail}" if tail.strip() else ""

    def _kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        for stream in (self._proc.stdin, self._proc.stdout):
            with contextlib.suppress(OSError):
                if stream:
                    stream.close()


_SECRETS = re.compile(r"(?<=token=)[^&\s\"]+|eyJ[\w-]+\.[\w-]+\.[\w-]*")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _redact(text: str) -> str:
    """Bearer tokens (JWTs, `#token=` links) and terminal colours out of what a failed step reports."""
    return _SECRETS.sub("[redacted]", _ANSI.sub("", text))


def _failure(what: str, msg: dict[str, Any]) -> str:
    parts = [f"Browser step failed: {what}", _redact(str(msg.get("error")))]
    if msg.get("url"):
        # A `#token=` link the page has not consumed yet must not land in a test report.
        parts.append(f"--- page URL ---\n{_redact(msg['url'])}")
    if msg.get("text") is not None:
        parts.append(f"--- page text ---\n{msg['text']}")
    if msg.get("log"):
        parts.append("--- page console ---\n" + _redact("\n".join(msg["log"])))
    if msg.get("screenshot"):
        parts.append(f"--- screenshot ---\n{msg['screenshot']}")
    return "\n".join(parts)
