"""Render a local page in headless Chromium and report what a reader's browser would see.

Speaks the Chrome DevTools protocol over --remote-debugging-pipe (NUL-separated JSON on file
descriptors 3 and 4): no port, no websocket library, no browser download. Written by hand
because the libraries that drive Chromium (playwright, pyppeteer) download a browser build of
their own, which this machine cannot fetch.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import signal
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--mute-audio", "--remote-debugging-pipe"]
# every image decoded: [{src, ok, width, height}] (decode() rejects an image that cannot be shown)
IMAGES_SCRIPT = """Promise.all([...document.images].map(img => img.decode().then(
    () => ({src: img.src.slice(0, 40), ok: img.naturalWidth > 0, width: img.naturalWidth, height: img.naturalHeight}),
    () => ({src: img.src.slice(0, 40), ok: false, width: 0, height: 0}))))"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    """What rendering a page showed: console errors and uncaught exceptions, requests to
    anything but the page itself and data: URIs, every image's decode result, PNG screenshots."""

    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    screenshots: dict[str, Path] = field(default_factory=dict)
    pdf_pages: int = 0
    page_height: int = 0


class DevTools:
    """A Chromium process and one page session, driven over the pipe."""

    def __init__(self, binary: str, profile: Path, timeout: float = 60.0):
        self.timeout = timeout
        self.events: list[dict] = []
        self._next_id = 0
        self._buffer = b""
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()

        def wire():  # in the child: the browser reads commands on fd 3 and writes replies on fd 4
            read_end, write_end = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        preexec_fn=wire, close_fds=False, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._out = os.fdopen(to_browser_w, "wb", buffering=0)
        self._in = from_browser_r
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._in, selectors.EVENT_READ)
        self.session = None

    def close(self) -> None:
        self._out.close()
        self._selector.close()
        os.close(self._in)
        # Chromium's helper processes share its session and can still write to the profile after the
        # browser process exits: end the whole group, so the profile folder can be removed.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(10)
                break
            except subprocess.TimeoutExpired:
                continue

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self._selector.select(left):
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit code {self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, **params) -> dict:
        """Send a command (to the page session once attached) and return its result; events that
        arrive meanwhile are kept in self.events."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        self._out.write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, event: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for seen in self.events:
            if seen["method"] == event:
                return seen
        while True:
            message = self._read_message(deadline)
            if "method" in message:
                self.events.append(message)
                if message["method"] == event:
                    return message

    def open_page(self) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")


def screenshot(tools: DevTools, path: Path, full_page: bool) -> Path:
    params = {"format": "png"}
    if full_page:
        size = tools.call("Page.getLayoutMetrics")["cssContentSize"]
        params.update(captureBeyondViewport=True,
                      clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
    path.write_bytes(base64.b64decode(tools.call("Page.captureScreenshot", **params)["data"]))
    return path


def check_page(page: Path, out_dir: Path, width: int = 1366, height: int = 900, timeout: float = 60.0) -> PageCheck:
    """Load `page` (a local HTML file) at a laptop's screen size and collect a PageCheck;
    screenshots: 'screen' (the first screen), 'full' (the whole page), 'print' (first screen
    with print styles); pdf_pages: pages of the page printed to A4."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium binary on PATH")
    out_dir.mkdir(parents=True, exist_ok=True)
    url = Path(page).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-", ignore_cleanup_errors=True) as profile:
        tools = DevTools(binary, Path(profile), timeout)
        try:
            tools.open_page()
            tools.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                       mobile=False)
            tools.call("Page.navigate", url=url)
            tools.wait_for("Page.loadEventFired")
            result = PageCheck()
            result.images = tools.call("Runtime.evaluate", expression=IMAGES_SCRIPT, awaitPromise=True,
                                       returnByValue=True)["result"]["value"]
            result.page_height = int(tools.call("Page.getLayoutMetrics")["cssContentSize"]["height"])
            result.screenshots["screen"] = screenshot(tools, out_dir / "report_screen.png", full_page=False)
            result.screenshots["full"] = screenshot(tools, out_dir / "report_full.png", full_page=True)
            tools.call("Emulation.setEmulatedMedia", media="print")
            result.screenshots["print"] = screenshot(tools, out_dir / "report_print.png", full_page=False)
            pdf = base64.b64decode(tools.call("Page.printToPDF", preferCSSPageSize=True)["data"])
            (out_dir / "report.pdf").write_bytes(pdf)
            result.pdf_pages = pdf.count(b"/Type /Page") - pdf.count(b"/Type /Pages")
            collect_problems(tools.events, url, result)
            return result
        finally:
            tools.close()


def collect_problems(events: list[dict], url: str, result: PageCheck) -> None:
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
            result.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            result.console_errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            result.console_errors.append(params["entry"].get("text", ""))
        elif method == "Network.requestWillBeSent":
            requested = params["request"]["url"]
            if requested != url and not requested.startswith("data:"):
                result.requests.append(requested)
